"""The layering of the package, read from its source (module-level imports).

* kernels import no engine, loop, estimator or CLI;
* engines import no loop, estimator or CLI;
* nothing imports the estimator or the CLI except the package's ``__init__``
  and ``__main__``, and only the estimator imports its base class's module;
* the EM loop (and everything it imports) imports no Zarr module;
* the federated package imports no loop, estimator or CLI, and nothing but the
  package's ``__init__`` and the CLI imports it (a Federation reaches the
  estimator through the engine factory's ``__distmix_engine__`` hook); the
  Flower app it ships (``flower_app``) is not a module of the package;
* no import sits inside a function body, but for a short allow-list, each entry
  with its reason.

Importing ``distmix.a.b`` runs ``distmix/a/__init__.py`` too, so a package's
``__init__`` counts as imported by whoever imports one of its modules; the
top-level ``distmix/__init__.py`` (the public API, which imports everything) is
the one exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import distmix

PACKAGE = Path(distmix.__file__).parent

#: function-level imports that stay, and why
ALLOWED_FUNCTION_IMPORTS = {
    ("distmix.engines.dask", "psutil"): "the worker probe is sent by value (cloudpickle) "
    "to workers that may lack distmix: it must import what it uses when it runs there",
    ("distmix.engines.dask", "distmix.tasks"): "the same probe loads what every block "
    "task loads, on the worker, to measure the worker's memory",
    ("distmix.cli", "distmix.examples"): "the examples may be missing from an editable "
    "install made before they existed; `distmix demo` says so instead of failing",
    ("distmix.cluster", "dask_jobqueue"): "optional package, needed only by the slurm/pbs configs",
    ("distmix.privacy", "opendp.prelude"): "optional package (distmix[privacy]), needed only "
    "by private fits; a missing one is named with the extra to install",
    ("distmix.plot", "matplotlib.patches"): "optional package (distmix[plot]), needed only "
    "when a plot is drawn; a missing one is named with the extra to install",
    ("distmix.plot", "matplotlib.pyplot"): "the same; pyplot only where the caller gave no axes",
    ("distmix.plot", "matplotlib.figure"): "the same; a Figure without pyplot for the CLI",
}

KERNELS = {
    "distmix.estep",
    "distmix.mstep",
    "distmix.suffstats",
    "distmix.params",
    "distmix.results",
    "distmix.tasks",
    "distmix.init_kernels",
    "distmix.nonfinite",
    "distmix.fingerprint",
    "distmix.reduce",
    "distmix.stepwise",
    "distmix.kernels",
    "distmix.fused",
    "distmix.privacy",
}
LOOP = {"distmix.em", "distmix.init", "distmix.online", "distmix.private_em"}
LEAVES = {"distmix.estimator", "distmix.cli"}
#: the estimator layer's base class (scikit-learn's BaseMixture): only the estimator imports it
ESTIMATOR_BASE = "distmix.mixture"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
        if not {"examples", "cluster_configs", "flower_app"} & set(path.parts)
    }


def imported(node: ast.Import | ast.ImportFrom, here: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative (none are used, but be exact)
        base = ".".join(here.split(".")[: -node.level] + ([base] if base else []))
    # ``from distmix.engines import dask`` imports the submodule distmix.engines.dask
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def module_level_imports(tree: ast.Module, here: str) -> set[str]:
    """Every module the module imports when it is imported (not inside functions)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.update(imported(node, here))
            elif isinstance(node, ast.If) and not _type_checking(node):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try,)):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def function_level_imports(tree: ast.Module, here: str) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    out += [(name, sub.lineno) for name in imported(sub, here)[:1]]
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """distmix module → the modules (distmix's and others') it imports at module level,
    with the packages whose ``__init__`` those imports run."""
    trees = sources()
    edges: dict[str, set[str]] = {}
    for name, tree in trees.items():
        targets = set()
        for target in module_level_imports(tree, name):
            parts = target.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ (distmix's own excepted)
            targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
            if parts[0] != "distmix":
                targets.add(parts[0])
        edges[name] = {t for t in targets if t in trees or not t.startswith("distmix")}
    return edges


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        for target in graph.get(name, ()):
            if target not in seen and target != "distmix":
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_is_read(graph):
    """The reader finds the modules and their imports (a check of the check)."""
    assert {"distmix.em", "distmix.tasks", "distmix.engines.dask", "distmix.cli"} <= set(graph)
    assert "distmix.engines.base" in graph["distmix.em"]
    assert "zarr" in closure(graph, "distmix.sources.dataset")
    assert "distmix.estimator" in graph["distmix"]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_import_no_engine_loop_estimator_or_cli(graph, kernel):
    assert kernel in graph, f"{kernel} is not a module of the package"
    reached = closure(graph, kernel)
    bad = sorted(m for m in reached if m.startswith("distmix.engines") or m in LOOP or m in LEAVES)
    assert not bad, f"{kernel} imports {bad}"


def test_engines_import_no_loop_estimator_or_cli(graph):
    engines = [m for m in graph if m.startswith("distmix.engines")]
    assert len(engines) >= 4
    for engine in engines:
        bad = sorted(m for m in closure(graph, engine) if m in LOOP or m in LEAVES)
        assert not bad, f"{engine} imports {bad}"


def test_only_the_package_imports_the_estimator_and_the_cli(graph):
    for module, targets in graph.items():
        if module in ("distmix", "distmix.__main__"):
            continue
        bad = sorted(targets & LEAVES)
        assert not bad or module in LEAVES and bad == [], f"{module} imports {bad}"


def test_the_federation_imports_no_loop_estimator_or_cli(graph):
    federated = [m for m in graph if m.startswith("distmix.federated")]
    assert {"distmix.federated.site", "distmix.federated.engine"} <= set(federated)
    for module in federated:
        bad = sorted(
            m for m in closure(graph, module) if m in LOOP or m in LEAVES or m == ESTIMATOR_BASE
        )
        assert not bad, f"{module} imports {bad}"
    importers = sorted(
        m
        for m, targets in graph.items()
        if not m.startswith("distmix.federated")
        and any(t.startswith("distmix.federated") for t in targets)
    )
    assert set(importers) <= {"distmix", "distmix.cli"}, importers


def test_only_the_estimator_imports_its_base(graph):
    importers = sorted(m for m, targets in graph.items() if ESTIMATOR_BASE in targets)
    assert importers == ["distmix.estimator"], importers
    assert not closure(graph, ESTIMATOR_BASE) & LEAVES


@pytest.mark.parametrize("loop", sorted(LOOP))
def test_the_loop_imports_no_zarr(graph, loop):
    reached = closure(graph, loop)
    assert reached, f"{loop} imports nothing?"
    zarr_side = sorted(
        m
        for m in reached
        if m == "zarr" or m in ("distmix.sources.zarr_arrays", "distmix.sources.zarr_write")
    )
    assert not zarr_side, f"{loop} imports {zarr_side}"


def test_no_function_level_imports_but_the_allowed_ones():
    found = []
    for module, tree in sources().items():
        for target, line in function_level_imports(tree, module):
            if (module, target) not in ALLOWED_FUNCTION_IMPORTS:
                found.append(f"{module}:{line} imports {target}")
    assert not found, "imports inside functions: " + "; ".join(found)


def test_every_allowed_function_level_import_still_exists():
    """An allow-list entry whose import is gone is removed, so the list stays short."""
    present = {
        (module, target)
        for module, tree in sources().items()
        for target, _ in function_level_imports(tree, module)
    }
    stale = sorted(set(ALLOWED_FUNCTION_IMPORTS) - present)
    assert not stale, f"allow-list entries without their import: {stale}"
