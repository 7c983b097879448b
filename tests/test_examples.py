"""Every script of ``examples/`` runs at its default size and reports success.

Each example is run as a user runs it — ``python examples/X.py`` with this
interpreter, ``bash examples/command_line.sh`` with this environment's
``distmix`` first on PATH — from a temporary working directory, and must exit
with status 0 and print the line that says its check held. ``distmix demo``
is ``examples/out_of_core.py`` (installed as ``distmix.examples``): a fast
test checks that it hands its flags to the example and keeps its dataset all
or nothing, a slow one runs the installed command end to end.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import zarr

import distmix.cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent
#: seconds for one example; each takes a few at its default size
TIMEOUT = 300

#: example → a line of its output that says its check held
SUCCESS = {
    "in_memory_vs_sklearn.py": r"^agree: the same iterations and the same parameters$",
    "out_of_core.py": r"^OK: the fit recovered the true mixture",
    "existing_scheduler.py": r"loaded back: the same labels for every row: True$",
    "streaming_growing_array.py": r"^OK: the second stream read only the 10,000 appended rows$",
    "checkpoint_resume.py": r"^OK: the interrupted and resumed fit equals the uninterrupted one$",
    "command_line.sh": r"^command-line workflow done; files in ",
    "model_selection.py": r"^OK: BIC picked the true mixture",
}


def run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``command`` in ``cwd``, this environment's bin directory first on PATH."""
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=TIMEOUT
    )


def assert_succeeded(result: subprocess.CompletedProcess, success: str) -> None:
    report = f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, report
    assert re.search(success, result.stdout, flags=re.MULTILINE), report


def test_every_example_is_run_here_and_listed_in_its_readme():
    scripts = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert scripts - {"__init__.py"} == set(SUCCESS)
    listing = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in SUCCESS:
        assert f"[`{name}`]({name})" in listing, f"examples/README.md does not list {name}"
    layout = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "| `examples/` |" in layout, "README.md's Layout table has no line for examples/"


def test_examples_ship_inside_the_package_as_distmix_examples():
    """``distmix demo`` imports ``distmix.examples.out_of_core``: the wheel must hold it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "distmix.examples" in setuptools["packages"]
    assert setuptools["package-dir"]["distmix.examples"] == "examples"
    assert (EXAMPLES / "__init__.py").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SUCCESS if n.endswith(".py")])
def test_python_example_runs_at_its_default_size(name, tmp_path):
    result = run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path)
    assert_succeeded(result, SUCCESS[name])


@pytest.mark.slow
def test_command_line_example_runs_from_another_directory(tmp_path):
    result = run(["bash", str(EXAMPLES / "command_line.sh"), "run"], cwd=tmp_path)
    assert_succeeded(result, SUCCESS["command_line.sh"])
    for line in ("mean log-likelihood", "BIC", "labels of 50,000 rows written", "component 2"):
        assert line in result.stdout
    for output in ("data.zarr", "fit-checkpoint.npz", "model.npz", "labels.zarr"):
        assert (tmp_path / "run" / output).exists(), output


def _load_out_of_core_example() -> types.ModuleType:
    """``examples/out_of_core.py`` from this checkout, whether or not distmix is installed
    from it (the tests may import distmix from the source tree, which has no examples/)."""
    spec = importlib.util.spec_from_file_location(
        "distmix.examples.out_of_core", EXAMPLES / "out_of_core.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_the_example_with_its_flags(tmp_path, monkeypatch, capsys):
    example = _load_out_of_core_example()
    package = types.ModuleType("distmix.examples")
    package.out_of_core = example  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "distmix.examples", package)
    monkeypatch.setitem(sys.modules, "distmix.examples.out_of_core", example)
    fits = []

    def fit_on_local_cluster(path, args):  # the example's own, without starting a cluster
        fits.append((path, args))
        return True

    monkeypatch.setattr(example, "fit_on_local_cluster", fit_on_local_cluster)
    path = tmp_path / "demo.zarr"
    flags = ["--rows", "1200", "--features", "3", "--components", "2", "--chunk-rows", "500"]
    flags += ["--workers", "3", "--seed", "7", "--tol", "0.0025", "--path", str(path)]

    assert distmix.cli.main(["demo", *flags]) == 0
    [(fitted, args)] = fits
    assert fitted == path
    assert (args.rows, args.features, args.components, args.chunk_rows) == (1200, 3, 2, 500)
    assert (args.workers, args.seed, args.tol) == (3, 7, 0.0025)
    array = zarr.open_array(str(path), mode="r")
    assert array.shape == (1200, 3) and array.chunks == (500, 3)
    assert "distmix_true_means" in array.attrs  # written last: the array is complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.zarr"]  # no staging left
    assert "OK: the fit recovered the true mixture" in capsys.readouterr().out

    # an existing array is refused, in one line, before anything is written
    assert distmix.cli.main(["demo", *flags]) == 2
    assert re.search(r"demo\.zarr already exists", capsys.readouterr().err)
    assert len(fits) == 1


@pytest.mark.slow
def test_installed_demo_command_runs_the_example(tmp_path):
    """The ``distmix`` command of this environment, from a directory that is not the
    checkout: it must find the example inside the installed package."""
    result = run([str(BIN / "distmix"), "demo", "--rows", "20000"], cwd=tmp_path)
    assert_succeeded(result, SUCCESS["out_of_core.py"])
    assert re.search(r"^recovery vs the true mixture: max \|Δmean\| ", result.stdout, re.M)
    assert "local Dask cluster: 2 worker processes" in result.stdout
