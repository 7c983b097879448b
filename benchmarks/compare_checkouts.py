"""Did a change make the EM iteration slower? Time two checkouts side by side.

What is measured
----------------
Each checkout's *own* ``benchmarks/bench_em_iteration.py`` (seconds per EM
iteration of the ``sklearn``, ``local`` and ``dask`` contenders over its
shapes) is run in a fresh subprocess of this interpreter (``sys.executable``)
with ``PYTHONPATH=<checkout>`` prepended, so that the checkout's ``distmix``
package is the one imported, not the installed one. The subprocess reports
where every ``distmix`` module it loaded came from; a module from outside the
checkout (an editable install's finder or a site-packages copy shadowing
``PYTHONPATH``) stops the comparison with an error. The rest of the
environment is passed through unchanged (``OPENBLAS_CORETYPE``,
``OPENBLAS_L2_SIZE`` and friends included, since they pick the BLAS kernels).

Runs go in ABBA order, ``old new | new old | old new | ...``, one pair per
round, so that a slow spell of the shared machine, or a drift over the
session, hits both checkouts alike; an even ``--rounds`` balances the order
exactly. Every repetition of every run is parsed from the script's output
("every repetition (s)" section, cross-checked against its table of medians);
the repetitions of all rounds of one checkout are pooled and their median is
that checkout's figure.

The verdict
-----------
``ratio = new median / old median`` per shape and contender. ``sklearn`` runs
the same code in both checkouts, so for each shape its ratio ``c`` shows how
far the machine alone moved the figures between the two checkouts' runs; its
noise is ``|c - 1|``. The *paired* ratio divides, repetition by repetition,
each contender's time by the control's in the same repetition of the same run
(timed moments apart), takes the median per checkout, and compares those: a
slow spell that hits a whole run cancels out of it. Every other contender
(``local``, ``dask``, and ``local+fp``/``dask+fp`` when ``-- --fingerprint`` is
passed) is judged against ``--target`` (default 1.05: new at most 5 % slower
than old):

``PASS``
    ``ratio <= target`` or ``paired <= target``.
``FAIL``
    ``paired > target`` and ``ratio > target + |c - 1|``: slower by both measures,
    and by more than the control moved.
``NOISE``
    between: reported, does not fail.

The exit status is 0 when nothing fails, 1 when any ratio FAILs, and 2 when
the comparison could not be made (a run failed or its contenders disagreed, the
wrong ``distmix`` was imported, the output was not recognised, the checkouts
timed different shapes). scikit-learn's own times spread widely on a busy
machine, which widens the allowance: read the load averages printed, and
rerun on a quiet machine before trusting a NOISE.

``--quick`` runs time about 0.02-0.4 s per iteration and the script prints
milliseconds, so their ratios are coarse (a step of 1 ms is several per
cent): use them to check that the comparison works, not to judge a change.

Usage
-----
::

    git -C /work/main worktree add /tmp/base 01ed036      # the commit before the change
    python benchmarks/compare_checkouts.py /tmp/base                  # 4 rounds: 8 runs of ~70 s
    python benchmarks/compare_checkouts.py /tmp/base --quick --rounds 1   # smoke run, ~1 min
    python benchmarks/compare_checkouts.py /tmp/base . --covariance-type diag -- --repeats 9

``NEW_DIR`` defaults to the checkout that holds this script. Arguments after
``--`` go to both checkouts' ``bench_em_iteration.py`` unchanged (``--repeats``,
``--seed``, ``--fingerprint``); ``--quick`` and ``--covariance-type`` are
passed on too. ``--log-dir DIR`` keeps every run's full output.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _machine import cpu_model, load_average, n_cores

BENCH_SCRIPT = Path("benchmarks") / "bench_em_iteration.py"
CONTROL = "sklearn"
DEFAULT_TARGET = 1.05
DEFAULT_ROUNDS = 4
#: what the subprocess prefixes its own lines with (the benchmark never prints it)
MARKER = "[compare_checkouts]"
#: the benchmark prints seconds to 3 decimals; medians of an even count add half a step
TABLE_ROUNDING_S = 0.0011
ENVIRONMENT_VARIABLES = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "PYTHONPATH",
)

# Run in the subprocess as `python -c BOOTSTRAP CHECKOUT SCRIPT ARGS...`: it imports distmix,
# runs the script as `python SCRIPT ARGS...` would (its folder first on sys.path, so it finds
# its own _machine.py), then lists where every distmix module came from, even when the script
# exits with an error.
BOOTSTRAP = f"""\
import os, runpy, sys
script = sys.argv[2]
sys.argv = sys.argv[2:]
sys.path[0] = os.path.dirname(os.path.abspath(script))
import distmix
print({MARKER!r}, "distmix", os.path.realpath(distmix.__file__), flush=True)
try:
    runpy.run_path(script, run_name="__main__")
finally:
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (name == "distmix" or name.startswith("distmix.")) and path:
            print({MARKER!r}, "module", name, os.path.realpath(path), flush=True)
"""


class ComparisonError(RuntimeError):
    """The comparison could not be made (exit status 2); the message says why and what to do."""


# -- parsing one run's output (pure) -----------------------------------------------------------
_REPETITIONS_HEADER = re.compile(r"^every repetition \(s\)")
_SHAPE_LINE = re.compile(r"^  (?P<shape>\d[\d,]* x \d+, K=\d+)\s*$")
_TIMES_LINE = re.compile(
    r"^    (?P<name>\S+)\s+(?P<times>\d+\.\d+(?:\s+\d+\.\d+)*)\s+spread\s+\d+\.\d+\s*$"
)
_TABLE_ROW = re.compile(
    r"^(?P<shape>\d[\d,]* x \d+, K=\d+)\s+\d+ x \d+"
    r"\s+(?P<sklearn>\d+\.\d+)\s+(?P<local>\d+\.\d+)\s+(?P<dask>\d+\.\d+)\s"
)
_RUNNING_LINE = re.compile(r"^running N=[\d,]+ D=\d+ K=\d+ (?P<covariance_type>\w+) \.\.\.")

#: per shape ("50,000 x 16, K=8"), per contender ("local"), seconds of every repetition
Timings = dict[str, dict[str, list[float]]]


def parse_repetitions(stdout: str, origin: str) -> Timings:
    """Every repetition's seconds per shape and contender, from ``bench_em_iteration.py``'s output.

    Parameters
    ----------
    stdout : str
        The script's standard output.
    origin : str
        Names the run in error messages.

    Returns
    -------
    dict
        ``{shape: {contender: [seconds, ...]}}`` in the order printed.

    Raises
    ------
    ComparisonError
        When the "every repetition" section or the table of medians is missing or
        malformed, or the two disagree (the columns would have been misread).
    """
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if _REPETITIONS_HEADER.match(line)), None)
    if start is None:
        raise ComparisonError(
            f"{origin}: no 'every repetition (s)' section in the output of {BENCH_SCRIPT}; "
            "its format is not the one this script reads (see parse_repetitions). "
            "Run it by hand to see what it prints."
        )
    timings: Timings = {}
    shape: str | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if match := _SHAPE_LINE.match(line):
            shape = match["shape"]
            timings[shape] = {}
        elif (match := _TIMES_LINE.match(line)) and shape is not None:
            timings[shape][match["name"]] = [float(x) for x in match["times"].split()]
        else:
            raise ComparisonError(
                f"{origin}: unrecognised line in the 'every repetition (s)' section of "
                f"{BENCH_SCRIPT}'s output: {line!r}; expected '  N x D, K=k' or "
                "'    contender  t1 t2 ...   spread s'."
            )
    if not timings or not all(timings.values()):
        raise ComparisonError(f"{origin}: the 'every repetition (s)' section lists no timings.")
    check_against_table(timings, lines, origin)
    return timings


def check_against_table(timings: Timings, lines: Sequence[str], origin: str) -> None:
    """Raise unless the medians of the parsed repetitions are the table's medians."""
    rows = {m["shape"]: m for line in lines if (m := _TABLE_ROW.match(line))}
    if set(rows) != set(timings):
        raise ComparisonError(
            f"{origin}: the table of medians lists shapes {sorted(rows)} but the repetitions "
            f"list {sorted(timings)}; the output format is not the one this script reads."
        )
    for shape, row in rows.items():
        for name in ("sklearn", "local", "dask"):
            printed = float(row[name])
            parsed = statistics.median(timings[shape].get(name, [float("nan")]))
            if not abs(parsed - printed) <= TABLE_ROUNDING_S:
                raise ComparisonError(
                    f"{origin}: {shape} {name}: the median of the repetitions read "
                    f"({parsed:.4f} s) is not the table's ({printed:.3f} s); the output "
                    "format is not the one this script reads."
                )


def parse_covariance_types(stdout: str) -> set[str]:
    """The covariance types named by the script's 'running N=... D=... K=... TYPE ...' lines."""
    return {
        m["covariance_type"] for line in stdout.splitlines() if (m := _RUNNING_LINE.match(line))
    }


def imported_distmix_files(stdout: str) -> dict[str, str]:
    """``{module name: file}`` of every distmix module the subprocess loaded (BOOTSTRAP's lines)."""
    files: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith(MARKER + " "):
            kind, _, rest = line[len(MARKER) + 1 :].partition(" ")
            if kind == "module":
                name, _, path = rest.partition(" ")
                files[name] = path
            elif kind == "distmix":
                files.setdefault("distmix", rest)
    return files


# -- statistics and verdict (pure) -------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """One row of the report: a contender on a shape, old against new."""

    shape: str
    contender: str
    old_median_s: float
    new_median_s: float
    control_ratio: float
    target: float
    #: medians of ``contender / control`` per repetition (old, new): paired, see :func:`paired`
    old_vs_control: float = float("nan")
    new_vs_control: float = float("nan")

    @property
    def paired_ratio(self) -> float:
        """``new / old`` of the contender's time as a multiple of the control's in the same
        round of the same run: a slow spell of the machine that hits both cancels."""
        return self.new_vs_control / self.old_vs_control

    @property
    def ratio(self) -> float:
        """``new / old`` (above 1: the new checkout is slower)."""
        return self.new_median_s / self.old_median_s

    @property
    def noise(self) -> float:
        """How far the control (same code in both) moved: ``|control ratio - 1|``."""
        return abs(self.control_ratio - 1.0)

    @property
    def limit(self) -> float:
        """The largest ratio that does not FAIL: the target plus the control's noise."""
        return self.target + self.noise

    @property
    def verdict(self) -> str:
        """PASS when either measure meets the target; FAIL when both exceed it (the
        unpaired one beyond the control's noise too); NOISE between."""
        if self.contender == CONTROL:
            return "control"
        paired = self.paired_ratio
        if self.ratio <= self.target or paired <= self.target:
            return "PASS"
        return "FAIL" if self.ratio > self.limit and paired > self.target else "NOISE"


def pool(runs: Sequence[Timings]) -> Timings:
    """Every repetition of several runs of one checkout, per shape and contender."""
    pooled: Timings = {}
    for timings in runs:
        for shape, contenders in timings.items():
            for name, times in contenders.items():
                pooled.setdefault(shape, {}).setdefault(name, []).extend(times)
    return pooled


def paired(timings: Timings) -> Timings:
    """Per shape and contender, the contender's time over the control's, repetition by
    repetition of one run (the benchmark times the contenders of a repetition one after
    the other, rotating their order): ratios a slow spell of the machine barely moves."""
    out: Timings = {}
    for shape, contenders in timings.items():
        control = contenders.get(CONTROL)
        if not control:
            continue  # compare() names the missing control
        for name, times in contenders.items():
            pairs = zip(times, control, strict=True)
            out.setdefault(shape, {})[name] = [t / c for t, c in pairs if c > 0]
    return out


def compare(
    old: Timings,
    new: Timings,
    target: float,
    old_paired: Timings | None = None,
    new_paired: Timings | None = None,
) -> list[Comparison]:
    """One Comparison per shape and contender timed by both checkouts (control first).

    Raises
    ------
    ComparisonError
        When the checkouts timed different shapes, a shape lacks the control, or a
        median is 0 (below the script's millisecond resolution).
    """
    if list(old) != list(new):
        raise ComparisonError(
            f"the checkouts timed different shapes (old {list(old)}, new {list(new)}): their "
            f"{BENCH_SCRIPT} differ in SHAPES, so there is nothing to compare; "
            "compare checkouts whose benchmark runs the same shapes."
        )
    rows = []
    for shape in old:
        if CONTROL not in old[shape] or CONTROL not in new[shape]:
            raise ComparisonError(f"{shape}: no {CONTROL!r} timings, the control, in both runs.")
        medians = {
            name: (statistics.median(old[shape][name]), statistics.median(new[shape][name]))
            for name in old[shape]
            if name in new[shape]
        }
        if any(value <= 0 for pair in medians.values() for value in pair):
            raise ComparisonError(
                f"{shape}: a median of 0 s (the script prints milliseconds); use larger shapes "
                "(drop --quick)."
            )
        control_ratio = medians[CONTROL][1] / medians[CONTROL][0]
        names = [CONTROL] + [name for name in medians if name != CONTROL]

        def vs_control(ratios: Timings | None, name: str, shape: str = shape) -> float:
            values = (ratios or {}).get(shape, {}).get(name) or []
            return statistics.median(values) if values else float("nan")

        rows += [
            Comparison(
                shape,
                name,
                *medians[name],
                control_ratio=control_ratio,
                target=target,
                old_vs_control=vs_control(old_paired, name),
                new_vs_control=vs_control(new_paired, name),
            )
            for name in names
        ]
    return rows


def abba_order(rounds: int) -> list[str]:
    """``old new | new old | old new ...``: which checkout runs when, ``2 * rounds`` runs."""
    order: list[str] = []
    for r in range(rounds):
        order += ["old", "new"] if r % 2 == 0 else ["new", "old"]
    return order


# -- running the checkouts (glue) --------------------------------------------------------------
@dataclass(frozen=True)
class Checkout:
    label: str
    root: Path

    @property
    def script(self) -> Path:
        return self.root / BENCH_SCRIPT


def find_checkout(label: str, directory: str | Path, flag: str) -> Checkout:
    root = Path(directory).resolve()
    checkout = Checkout(label, root)
    if not checkout.script.is_file() or not (root / "distmix" / "__init__.py").is_file():
        raise ComparisonError(
            f"{flag} {directory!r}: no {BENCH_SCRIPT} and distmix/__init__.py under {root}; "
            "give the root of a checkout of this repository, e.g. one made with "
            "`git -C /work/main worktree add /tmp/base 01ed036`."
        )
    return checkout


def describe_git(root: Path) -> str:
    """``<short hash> <subject>``, and whether tracked files differ from it (reads only)."""
    git = ["git", "--no-optional-locks", "-C", str(root)]  # no index refresh in a shared repo
    try:
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    if len(head) > 72:
        head = head[:71] + "…"
    return head + ("  + uncommitted changes" if changed else "")


def checkout_environment(checkout: Checkout) -> dict[str, str]:
    """This process's environment, unchanged but for the checkout first on PYTHONPATH."""
    env = dict(os.environ)
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(checkout.root) + (os.pathsep + inherited if inherited else "")
    return env


@dataclass
class Run:
    label: str
    wall_s: float
    load_before: str
    timings: Timings
    covariance_types: set[str]
    #: distmix modules the run loaded, all checked to lie inside the checkout
    n_distmix_modules: int


def run_benchmark(
    checkout: Checkout, bench_args: Sequence[str], origin: str, log_file: Path | None
) -> Run:
    """Run the checkout's benchmark once; check which distmix it imported; parse its timings."""
    load_before = load_average()
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, str(checkout.root), str(checkout.script), *bench_args],
        env=checkout_environment(checkout),
        cwd=checkout.root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    wall_s = time.perf_counter() - start
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(
            done.stdout + ("\n--- stderr ---\n" + done.stderr if done.stderr else "")
        )
    distmix_files = imported_distmix_files(done.stdout)
    if distmix_files:  # first: code from elsewhere may be why the run failed
        check_imports(checkout, distmix_files, origin)
    if done.returncode != 0:
        printed = [line for line in done.stdout.splitlines() if not line.startswith(MARKER)]
        tail = "\n".join(printed[-15:] + done.stderr.splitlines()[-15:])
        reason = (
            "its contenders disagree, so its timings are not of the same work"
            if "the contenders disagree" in done.stdout
            else "it failed"
        )
        raise ComparisonError(
            f"{origin}: {checkout.script} exited with status {done.returncode}: {reason}. "
            f"Last lines of its output and errors:\n{tail}"
        )
    check_imports(checkout, distmix_files, origin)
    timings = parse_repetitions(done.stdout, origin)
    covariance_types = parse_covariance_types(done.stdout)
    return Run(checkout.label, wall_s, load_before, timings, covariance_types, len(distmix_files))


def check_imports(checkout: Checkout, files: dict[str, str], origin: str) -> None:
    """Raise unless distmix and every distmix module the run loaded lie in the checkout."""
    if "distmix" not in files:
        raise ComparisonError(
            f"{origin}: the subprocess did not report where distmix came from; its output "
            f"lacks the {MARKER!r} lines."
        )
    outside = {
        name: path for name, path in files.items() if not Path(path).is_relative_to(checkout.root)
    }
    if outside:
        names = sorted(outside)
        listed = ", ".join(f"{name} from {outside[name]}" for name in names[:3])
        listed += f" and {len(names) - 3} more" if len(names) > 3 else ""
        raise ComparisonError(
            f"{origin}: imported the wrong distmix: {listed}, not from {checkout.root}. "
            "Something ahead of PYTHONPATH on sys.path (an editable install's import hook, a "
            "sitecustomize) supplies distmix; its timings would be of another checkout's code. "
            f"Check with: PYTHONPATH={checkout.root} {sys.executable} -c "
            "'import distmix; print(distmix.__file__)'"
        )


# -- report ------------------------------------------------------------------------------------
def print_environment(old: Checkout, new: Checkout) -> None:
    print(f"host: {cpu_model()}, {n_cores()} cores   python {platform.python_version()}")
    print(f"interpreter: {sys.executable}")
    print(f"load average (1, 5, 15 min) at the start: {load_average()}")
    for var in ENVIRONMENT_VARIABLES:
        print(f"{var}={os.environ.get(var, '<unset>')}   (passed on unchanged)")
    for checkout in (old, new):
        print(f"{checkout.label}: {checkout.root}   {describe_git(checkout.root)}")
    if old.root == new.root:
        print("note: old and new are the same checkout; the ratios measure the machine's noise.")
    print()


def print_table(rows: Sequence[Comparison]) -> None:
    header = (
        f"{'shape (N x D, K)':<20}{'contender':<11}{'old s/it':>10}{'new s/it':>10}"
        f"{'new/old':>9}{'change':>9}{'sklearn':>9}{'limit':>8}{'paired':>8}  verdict"
    )
    print(header)
    print("-" * len(header))
    shape = None
    for row in rows:
        shown = row.shape if row.shape != shape else ""
        shape = row.shape
        control = "" if row.contender == CONTROL else f"{row.control_ratio:.3f}"
        limit = "" if row.contender == CONTROL else f"{row.limit:.3f}"
        pair = "" if row.contender == CONTROL else f"{row.paired_ratio:.3f}"
        print(
            f"{shown:<20}{row.contender:<11}{row.old_median_s:>10.3f}{row.new_median_s:>10.3f}"
            f"{row.ratio:>9.3f}{row.ratio - 1:>+9.1%}{control:>9}{limit:>8}{pair:>8}"
            f"  {row.verdict}"
        )
    print()


def print_runs(runs: Sequence[Run]) -> None:
    """Every run's medians in the order run, so a drift over the session shows."""
    print("medians of every run (s/it), in the order run:")
    for i, run in enumerate(runs, 1):
        print(f"  run {i} ({run.label}): {run.wall_s:.0f} s, load before {run.load_before}")
        for shape, contenders in run.timings.items():
            medians = "  ".join(
                f"{name} {statistics.median(t):.3f}" for name, t in contenders.items()
            )
            print(f"    {shape:<20}{medians}")
    print()


def verdict_line(rows: Sequence[Comparison], target: float) -> tuple[str, bool]:
    """The last line of the report, and whether any ratio FAILs."""
    judged = [row for row in rows if row.contender != CONTROL]
    failed = [row for row in judged if row.verdict == "FAIL"]
    noisy = [row for row in judged if row.verdict == "NOISE"]
    worst = max(judged, key=lambda row: min(row.ratio, row.paired_ratio))
    rule = (
        f"target new/old <= {target:g}, unpaired or paired; a FAIL exceeds it paired and "
        "unpaired beyond the control's noise |sklearn ratio - 1|"
    )
    if failed:
        named = "; ".join(
            f"{r.shape} {r.contender} {r.ratio:.3f} > {r.limit:.3f}, paired {r.paired_ratio:.3f}"
            for r in failed
        )
        return f"verdict: FAIL ({rule}): {len(failed)} of {len(judged)} slower: {named}", True
    if noisy:
        named = "; ".join(
            f"{r.shape} {r.contender} {r.ratio:.3f} (paired {r.paired_ratio:.3f})" for r in noisy
        )
        return (
            f"verdict: PASS within noise ({rule}): above the target but within the control's "
            f"noise: {named}; rerun on a quieter machine to decide",
            False,
        )
    return (
        f"verdict: PASS ({rule}): worst {worst.shape} {worst.contender} {worst.ratio:.3f} "
        f"(paired {worst.paired_ratio:.3f})",
        False,
    )


# -- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Arguments after -- go to both checkouts' bench_em_iteration.py unchanged.",
    )
    parser.add_argument("old_dir", metavar="OLD_DIR", help="root of the checkout before")
    parser.add_argument(
        "new_dir",
        metavar="NEW_DIR",
        nargs="?",
        default=str(Path(__file__).resolve().parent.parent),
        help="root of the checkout after (default: the one holding this script)",
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick on (N / 20; smoke run)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"runs of each checkout, in ABBA order (default {DEFAULT_ROUNDS}; even balances it)",
    )
    parser.add_argument(
        "--covariance-type",
        choices=("full", "tied", "diag", "spherical"),
        default="full",
        help="passed on (default full)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET,
        help=f"largest new/old ratio accepted, before noise (default {DEFAULT_TARGET})",
    )
    parser.add_argument("--log-dir", type=Path, help="write every run's full output here")
    args = parser.parse_args(ours)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}.")
    if args.target <= 0:
        parser.error(f"--target is a ratio new/old and must be positive, got {args.target}.")
    return args, extra


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        old = find_checkout("old", args.old_dir, "OLD_DIR")
        new = find_checkout("new", args.new_dir, "NEW_DIR")
        bench_args = [*(["--quick"] if args.quick else []), "--covariance-type"]
        bench_args += [args.covariance_type, *extra]
        print_environment(old, new)
        print(f"each run: python {BENCH_SCRIPT} {' '.join(bench_args)}\n", flush=True)

        checkouts = {"old": old, "new": new}
        order = abba_order(args.rounds)
        runs: list[Run] = []
        for i, label in enumerate(order, 1):
            origin = f"run {i}/{len(order)} ({label})"
            print(f"{origin}: {checkouts[label].root} ...", end=" ", flush=True)
            log_file = args.log_dir / f"run{i:02d}-{label}.txt" if args.log_dir else None
            run = run_benchmark(checkouts[label], bench_args, origin, log_file)
            if run.covariance_types != {args.covariance_type}:
                raise ComparisonError(
                    f"{origin}: the benchmark ran covariance types "
                    f"{sorted(run.covariance_types)}, "
                    f"not {args.covariance_type!r} as asked; its options differ from what this "
                    "script passes."
                )
            runs.append(run)
            print(
                f"{run.wall_s:.0f} s; all {run.n_distmix_modules} distmix modules imported "
                "from this checkout",
                flush=True,
            )
        print()

        rows = compare(
            pool([run.timings for run in runs if run.label == "old"]),
            pool([run.timings for run in runs if run.label == "new"]),
            args.target,
            pool([paired(run.timings) for run in runs if run.label == "old"]),
            pool([paired(run.timings) for run in runs if run.label == "new"]),
        )
    except ComparisonError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2

    print_runs(runs)
    per_checkout = len(order) // 2
    print(
        f"{args.covariance_type} covariances; medians over every repetition of "
        f"{per_checkout} run{'s' if per_checkout > 1 else ''} per checkout; sklearn = the "
        "control's new/old ratio (same code in both: the machine's noise); limit = target + "
        "|sklearn - 1|; paired = new/old of the contender's time over sklearn's in the same "
        "repetition (medians)"
    )
    print_table(rows)
    print(f"load average (1, 5, 15 min) at the end: {load_average()}")
    line, failed = verdict_line(rows, args.target)
    print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
