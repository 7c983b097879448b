"""The engine conformance suite: every engine inherits it, as a subclass of :class:`EngineTests`.

Layer: a leaf beside the tests. It imports pytest, the engines' protocol, the
task registry and the result types; nothing in :mod:`distmix` imports it.

An engine conforms when every named block task gives, over its blocks, what
one block holding all the rows gives (:func:`~distmix.tasks.run_block` on the
whole array): whatever the blocks (equal, ragged, one row each, empty where
accepted), the fan-in ``split_every`` (2, 3, larger than the number of blocks),
the weights, or the data's distance from the origin. Integer-like results
(counts, row indices, fingerprints, rows moved) must be equal; float statistics
agree to ``FLOAT_RTOL`` of each output's largest value, since only the order of
the additions differs. Beyond the sums, the suite checks that bad rows are
named by their global index, map tasks keep the row order, refused, unknown and
ill-formed requests raise before any computation, ``rows_at`` returns exactly
the asked rows, a reduce runs each block once in one computation (where that
can be observed), windows keep global row indices, and results pack and unpack
exactly.

Use::

    from distmix.testing import EngineTests

    class TestMyEngine(EngineTests):
        refused = frozenset({"take_rows", "kmeans_sample"})  # optional

        def make_engine(self, X, sample_weight, block_rows, split_every):
            return MyEngine(X, sample_weight, block_rows, split_every, refused_tasks=self.refused)

Optional hooks: :attr:`EngineTests.accepts_empty_blocks`,
:attr:`EngineTests.exposes_blocks` and :attr:`EngineTests.names_bad_rows` (an
engine that hides its blocks and the position of bad rows: a federation),
:meth:`EngineTests.compute_counter` with :attr:`EngineTests.computes_per_reduce`,
:attr:`EngineTests.block_runs_observable`, :meth:`EngineTests.materialise` (for
lazy map outputs) and :attr:`EngineTests.known_failures` (strict xfails with a
reason, for bugs found and not yet fixed).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from dask.callbacks import Callback
from distributed.diagnostics.plugin import SchedulerPlugin

from distmix.engines.base import Engine, block_offsets, rows_at
from distmix.fingerprint import DataFingerprint
from distmix.nonfinite import NonFinite, NonFiniteInputError
from distmix.params import Params
from distmix.privacy import ClipBall
from distmix.results import (
    FingerprintedStats,
    KMeansStats,
    LogLikelihoodTotal,
    Rows,
    StatsBundle,
    Totals,
    unpack_result,
)
from distmix.suffstats import SuffStats
from distmix.tasks import TASKS, TaskRefusedError, run_block, run_map_block

#: relative tolerance of float statistics summed in another order (of each output's largest value)
FLOAT_RTOL = 1e-12

N_ROWS, N_FEATURES, N_COMPONENTS = 200, 3, 3
#: the distance from the origin of the far data (its rows keep ~6 significant digits less)
FAR = 1e6
#: rows holding NaN and +inf in the data of the non-finite checks
BAD_ROWS = (123, 171)
SEED = 20

REDUCE_TASKS = tuple(name for name, task in TASKS.items() if task.kind == "reduce")
MAP_TASKS = tuple(name for name, task in TASKS.items() if task.kind == "map")

#: ways of cutting ``N_ROWS`` rows into blocks
CHUNKINGS: dict[str, tuple[int, ...]] = {
    "one_block": (N_ROWS,),
    "equal": (50, 50, 50, 50),
    "ragged": (1, 73, 2, 99, 25),
    "one_row": (1,) * N_ROWS,
    "mixed": (1, 1, 1, 60, 1, 1, 40, 1, 94),
    "empty": (0, 80, 0, 0, 120, 0),
}
assert all(sum(rows) == N_ROWS for rows in CHUNKINGS.values())

#: (chunking, split_every) pairs every reduce and map task is checked on
LAYOUTS: tuple[tuple[str, int], ...] = (
    ("one_block", 8),
    ("equal", 3),
    ("ragged", 2),
    ("ragged", 1000),  # larger than the number of blocks: one level
    ("mixed", 3),
    ("one_row", 2),  # a tree of depth 8
)
#: fewer and smaller blocks, for engines that pay much per task (a distributed scheduler)
SHORT_LAYOUTS: tuple[tuple[str, int], ...] = (("ragged", 2), ("mixed", 3))
#: layouts with zero-row blocks, for engines that accept them
EMPTY_LAYOUTS: tuple[tuple[str, int], ...] = (("empty", 2), ("empty", 3))

#: windows of the ragged engine, each inside one block: (start, stop) positions, in order asked
WINDOW_RANGES = ((150, 175), (3, 4), (20, 70), (180, 195))
#: windows whose ranges cross the ragged engine's block edges (at 74, 76 and 175)
CROSSING_RANGES = ((60, 80), (170, 200))


# --------------------------------------------------------------------------- #
# data and the arguments of every task                                        #
# --------------------------------------------------------------------------- #
def mixture_rows(
    seed: int, n_rows: int = N_ROWS, n_features: int = N_FEATURES, shift: float = 0.0
) -> np.ndarray:
    """Rows ``(n_rows, n_features)`` from a mixture of ``N_COMPONENTS`` separated Gaussians."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(N_COMPONENTS, n_features))
    labels = rng.integers(N_COMPONENTS, size=n_rows)
    mixing = np.eye(n_features) + rng.normal(size=(N_COMPONENTS, n_features, n_features)) / 3
    noise = rng.normal(size=(n_rows, n_features))
    return centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels]) + shift


def random_params(rng: np.random.Generator, means: np.ndarray, covariance_type: str) -> Params:
    """Params with the given means, random weights and random well-conditioned covariances."""
    k, d = means.shape
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": np.diagonal(full, axis1=1, axis2=2).copy(),
        "spherical": np.trace(full, axis1=1, axis2=2) / d,
    }[covariance_type]
    return Params.from_covariances(
        rng.dirichlet(np.full(k, 3.0)), means, covariances, covariance_type
    )


@dataclass(frozen=True, eq=False)
class Problem:
    """Rows, weights and the small arguments every block task is asked with."""

    X: np.ndarray  # (N, D) float64, read-only
    sample_weight: np.ndarray | None  # (N,)
    params: dict[str, Params]  # by covariance type; means are finite rows of X
    centers: np.ndarray  # (5, D) finite rows of X
    indices: np.ndarray  # sorted global rows for take_rows
    phi: float  # the k-means cost of ``centers`` over all rows

    @property
    def shift(self) -> np.ndarray:
        """The point the k-means tasks shift rows and centres by (a point near the data)."""
        return self.centers[0]

    def arguments(self, task: str) -> tuple:
        """The arguments of ``task`` (the tasks see different covariance types)."""
        return TASK_ARGUMENTS[task](self)


#: how each registered task is asked, as in distmix.init and distmix.em
TASK_ARGUMENTS: dict[str, Callable[[Problem], tuple]] = {
    "estep": lambda pb: (pb.params["full"],),
    "estep_fingerprint": lambda pb: (pb.params["spherical"],),
    # models of every covariance type side by side
    "estep_many": lambda pb: (tuple(pb.params[t] for t in ("full", "diag", "tied", "spherical")),),
    "scores": lambda pb: ((pb.params["full"], pb.params["spherical"]),),
    # a ball about the first mean that clips some rows (rows far from it)
    "private_estep": lambda pb: (pb.params["tied"], ClipBall(pb.params["tied"].means[0], 2.0)),
    "private_moments": lambda pb: (ClipBall(pb.params["full"].means[1], 3.0), "diag"),
    "log_likelihood": lambda pb: (pb.params["diag"],),
    "fingerprint": lambda pb: (),
    "nonfinite": lambda pb: (),
    "kmeans": lambda pb: (pb.centers, pb.shift, "diag"),
    "kmeans_cost": lambda pb: (pb.centers, pb.shift),
    # oversampling 20: about 20 rows drawn, so the comparison has content
    "kmeans_sample": lambda pb: (pb.centers, pb.shift, pb.phi, 20.0, SEED, 1),
    "nearest_weight": lambda pb: (pb.centers, pb.shift),
    "random_resp": lambda pb: (pb.centers[:N_COMPONENTS], "tied", SEED),
    "take_rows": lambda pb: (pb.indices,),
    "predict": lambda pb: (pb.params["tied"],),
    "predict_proba": lambda pb: (pb.params["full"],),
    "score_samples": lambda pb: (pb.params["diag"],),
}


@functools.cache
def make_problem(weighted: bool, shift: float = 0.0, bad_rows: tuple[int, ...] = ()) -> Problem:
    """The seeded rows (``shift`` from the origin, NaN/inf in ``bad_rows``) and arguments.

    Weights, when asked for, are uniform in [0, 2) with one row in ten at 0.
    Cached: the arrays are read-only.
    """
    rng = np.random.default_rng(SEED)
    X = mixture_rows(SEED, shift=shift)
    for i, row in enumerate(bad_rows):
        X[row, i % N_FEATURES] = (np.nan, np.inf, -np.inf)[i % 3]
    w = rng.uniform(0.0, 2.0, size=N_ROWS)
    w[rng.choice(N_ROWS, N_ROWS // 10, replace=False)] = 0.0
    finite = np.flatnonzero(np.all(np.isfinite(X), axis=1))
    centers = X[rng.choice(finite, 5, replace=False)]
    means = X[rng.choice(finite, N_COMPONENTS, replace=False)]
    params = {cov: random_params(rng, means, cov) for cov in ("full", "tied", "diag", "spherical")}
    # both sides of every block edge (one-row blocks aside), the last row, a few others
    starts = {
        o for name, rows in CHUNKINGS.items() if name != "one_row" for o in block_offsets(rows)
    }
    edges = [o + side for o in starts for side in (-1, 0) if 0 <= o + side < N_ROWS]
    indices = np.unique(np.asarray([*edges, N_ROWS - 1, 7, 120, 121], dtype=np.int64))
    sample_weight = w if weighted else None
    cost = run_block("kmeans_cost", X, sample_weight, 0, (centers, centers[0]))
    for array in (X, w, centers, indices):
        array.setflags(write=False)
    return Problem(X, sample_weight, params, centers, indices, float(cost.values[0]))


def one_block_reduce(problem: Problem, task: str, args: tuple | None = None) -> Any:
    """The reference: ``task`` on one block holding every row (global rows from 0)."""
    args = problem.arguments(task) if args is None else args
    return run_block(task, problem.X, problem.sample_weight, 0, args)


# --------------------------------------------------------------------------- #
# comparing results                                                           #
# --------------------------------------------------------------------------- #
def assert_close(got: Any, want: Any, rtol: float, what: str) -> None:
    """Equal within ``rtol`` of the largest ``|want|`` (entries near 0 included)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _same_stats(got: SuffStats, want: SuffStats, rtol: float, what: str) -> None:
    got, want = got.to_host(), want.to_host()
    assert got.covariance_type == want.covariance_type, f"{what}: covariance_type"
    np.testing.assert_array_equal(got.reference, want.reference, err_msg=f"{what}: reference")
    for name in ("n_rows", "n_nonfinite", "first_nonfinite"):
        assert getattr(got, name) == getattr(want, name), (
            f"{what}: {name} is {getattr(got, name)}, expected {getattr(want, name)}"
        )
    for name in ("resp_sum", "x_sum", "second", "log_lik"):
        assert_close(getattr(got, name), getattr(want, name), rtol, f"{what}: {name}")


def _same_rows(got: Rows, want: Rows, rtol: float, what: str) -> None:
    np.testing.assert_array_equal(got.index, want.index, err_msg=f"{what}: row indices")
    np.testing.assert_array_equal(got.rows, want.rows, err_msg=f"{what}: rows")


def _same_value(got: Any, want: Any, rtol: float, what: str) -> None:
    assert got == want, f"{what}: {got}, expected {want}"


def _same_fingerprinted(
    got: FingerprintedStats, want: FingerprintedStats, rtol: float, what: str
) -> None:
    _same_stats(got.stats, want.stats, rtol, what)
    _same_value(got.fingerprint, want.fingerprint, rtol, f"{what}: fingerprint")


def _same_kmeans(got: KMeansStats, want: KMeansStats, rtol: float, what: str) -> None:
    _same_stats(got.stats, want.stats, rtol, what)
    assert_close(got.inertia, want.inertia, rtol, f"{what}: inertia")


def _same_bundle(got: StatsBundle, want: StatsBundle, rtol: float, what: str) -> None:
    assert len(got.members) == len(want.members), f"{what}: number of models"
    for i, (a, b) in enumerate(zip(got.members, want.members, strict=True)):
        _same_stats(a, b, rtol, f"{what}: model {i}")


def _same_log_likelihood(
    got: LogLikelihoodTotal, want: LogLikelihoodTotal, rtol: float, what: str
) -> None:
    assert_close(got.log_lik, want.log_lik, rtol, f"{what}: log_lik")
    assert_close(got.weight, want.weight, rtol, f"{what}: weight")
    _same_value(got.nonfinite, want.nonfinite, rtol, f"{what}: nonfinite")


def _same_totals(got: Totals, want: Totals, rtol: float, what: str) -> None:
    assert_close(got.values, want.values, rtol, what)


#: how two results of one type are compared: counts, indices and hashes exactly
_COMPARE: dict[type, Callable[[Any, Any, float, str], None]] = {
    SuffStats: _same_stats,
    FingerprintedStats: _same_fingerprinted,
    KMeansStats: _same_kmeans,
    StatsBundle: _same_bundle,
    LogLikelihoodTotal: _same_log_likelihood,
    Totals: _same_totals,
    Rows: _same_rows,
    DataFingerprint: _same_value,
    NonFinite: _same_value,
}


def assert_results_match(got: Any, want: Any, rtol: float = FLOAT_RTOL, what: str = "") -> None:
    """``got`` is ``want``: same type, integer-like parts equal, floats within ``rtol``."""
    assert type(got) is type(want), (
        f"{what}: a {type(got).__name__}, expected a {type(want).__name__}"
    )
    compare = _COMPARE.get(type(want))
    if compare is None:
        raise TypeError(
            f"the conformance suite cannot compare {type(want).__name__} results: "
            "add a comparison to distmix.testing.engines._COMPARE."
        )
    compare(got, want, rtol, what)


def packed_size(schema: dict[str, Any]) -> int:
    """The length of a packed result, read from its schema alone."""
    kind = schema["type"]
    if kind == "SuffStats":
        return SuffStats.packed_size(
            schema["covariance_type"], int(schema["n_components"]), int(schema["n_features"])
        )
    if kind == "FingerprintedStats":
        return packed_size(schema["stats"]) + DataFingerprint.PACKED_SIZE
    if kind == "KMeansStats":
        return packed_size(schema["stats"]) + 1
    if kind == "StatsBundle":
        return sum(packed_size(member) for member in schema["members"])
    if kind == "Rows":
        return int(schema["n_rows"]) * (1 + int(schema["n_features"]))
    fixed = {
        "Totals": lambda: int(schema["size"]),
        "LogLikelihoodTotal": lambda: 4,
        "NonFinite": lambda: 2,
        "DataFingerprint": lambda: DataFingerprint.PACKED_SIZE,
    }
    if kind not in fixed:
        raise TypeError(
            f"the conformance suite does not know the packed size of {kind!r} results: "
            "add it to distmix.testing.engines.packed_size."
        )
    return fixed[kind]()


# --------------------------------------------------------------------------- #
# watching computations and block runs                                        #
# --------------------------------------------------------------------------- #
class ComputeCount:
    """The number of computations started while its counter was open."""

    def __init__(self) -> None:
        self.count = 0


class _LocalSchedulerStarts(Callback):
    def __init__(self, tally: ComputeCount) -> None:
        super().__init__()
        self.tally = tally

    def _start(self, dsk: Any) -> None:
        self.tally.count += 1


@contextmanager
def local_dask_computes() -> Iterator[ComputeCount]:
    """Count the graphs Dask's local schedulers (threads, processes, sync) start."""
    tally = ComputeCount()
    with _LocalSchedulerStarts(tally):
        yield tally


class _GraphSubmissions(SchedulerPlugin):
    """On a distributed scheduler: how many graphs clients submitted."""

    def __init__(self) -> None:
        self.count = 0

    def update_graph(
        self,
        scheduler: Any,
        *,
        client: str,
        keys: set,
        tasks: list,
        annotations: dict,
        priority: dict,
        stimulus_id: str,
        **kwargs: Any,
    ) -> None:
        self.count += 1


def _submissions(dask_scheduler: Any, name: str) -> int:
    return int(dask_scheduler.plugins[name].count)


@contextmanager
def distributed_computes(client: Any) -> Iterator[ComputeCount]:
    """Count the graphs submitted to ``client``'s scheduler (read when the block ends)."""
    name = f"distmix-conformance-{uuid.uuid4().hex}"
    client.register_plugin(_GraphSubmissions(), name=name)
    tally = ComputeCount()
    try:
        yield tally
    finally:
        tally.count = client.run_on_scheduler(_submissions, name=name)
        client.unregister_scheduler_plugin(name)


@contextmanager
def counting_block_runs(task: str) -> Iterator[list[tuple[int, int]]]:
    """Record ``(row_offset, rows)`` of every run of ``task`` on a block in this process.

    Swaps the task's entry of the registry :data:`distmix.tasks.TASKS` (which
    :func:`~distmix.tasks.run_block` reads at each call) for the time of the block.
    """
    spec = TASKS[task]
    runs: list[tuple[int, int]] = []

    def counted(block: Any, sample_weight: Any, row_offset: int, *args: Any) -> Any:
        runs.append((int(row_offset), int(block.shape[0])))
        return spec.run(block, sample_weight, row_offset, *args)

    TASKS[task] = dataclasses.replace(spec, run=counted)
    try:
        yield runs
    finally:
        TASKS[task] = spec


# --------------------------------------------------------------------------- #
# the suite                                                                   #
# --------------------------------------------------------------------------- #
class EngineTests:
    """Conformance tests for an engine; subclass as ``Test...`` and give :meth:`make_engine`.

    Every test builds its engines through :meth:`make_engine` and may be called
    directly (no fixtures but the optional ones of the subclass), so a test can
    also show that the suite fails a broken engine.
    """

    #: tasks the engine must refuse (and the only ones it refuses)
    refused: frozenset[str] = frozenset()
    #: whether blocks of zero rows are accepted; if not, building one must raise ValueError
    accepts_empty_blocks: bool = True
    #: computations one reduce starts, as :meth:`compute_counter` counts them
    computes_per_reduce: int = 1
    #: whether block tasks run in this process, where :func:`counting_block_runs` sees them
    block_runs_observable: bool = True
    #: (chunking, split_every) pairs each task is checked on; trim for a slow scheduler
    layouts: tuple[tuple[str, int], ...] = LAYOUTS
    #: the same with zero-row blocks (used when ``accepts_empty_blocks``)
    empty_layouts: tuple[tuple[str, int], ...] = EMPTY_LAYOUTS
    #: ``test id -> reason``: tests expected to fail (strict xfail) until a bug is fixed
    known_failures: ClassVar[dict[str, str]] = {}
    #: whether the engine reports the blocks it was built on (a federation shows one
    #: block of all its rows: per-site and per-block row counts never leave the sites)
    exposes_blocks: bool = True
    #: whether NaN/inf rows are named by their global index (a federation's sites say
    #: only that they hold such rows, never which: the error must not name a row)
    names_bad_rows: bool = True

    # -- what a subclass gives ----------------------------------------------------
    def make_engine(
        self,
        X: np.ndarray,
        sample_weight: np.ndarray | None,
        block_rows: tuple[int, ...],
        split_every: int,
    ) -> Engine:
        """The engine under test over ``X`` ``(n, D)`` cut into ``block_rows``."""
        raise NotImplementedError("a subclass of EngineTests builds its engine in make_engine")

    def compute_counter(self) -> AbstractContextManager[ComputeCount]:
        """A context counting the computations the engine starts (default: Dask's
        local schedulers; :func:`distributed_computes` for a distributed client)."""
        return local_dask_computes()

    def materialise(self, output: Any) -> np.ndarray:
        """A map task's output as a NumPy array (a lazy output is computed here)."""
        compute = getattr(output, "compute", None)
        return np.asarray(compute() if callable(compute) else output)

    @pytest.fixture(autouse=True)
    def _expect_known_failures(self, request: pytest.FixtureRequest) -> None:
        reason = self.known_failures.get(request.node.name)
        if reason is not None:
            request.applymarker(pytest.mark.xfail(reason=reason, strict=True))

    # -- helpers ------------------------------------------------------------------
    def _engine(self, problem: Problem, chunking: str, split_every: int) -> Engine:
        return self.make_engine(problem.X, problem.sample_weight, CHUNKINGS[chunking], split_every)

    def _layouts(self) -> tuple[tuple[str, int], ...]:
        return self.layouts + (self.empty_layouts if self.accepts_empty_blocks else ())

    def _call(self, engine: Engine, task: str, args: tuple) -> Any:
        if TASKS[task].kind == "map":
            return self.materialise(engine.map_blocks(task, *args))  # type: ignore[arg-type]
        return engine.reduce(task, *args)  # type: ignore[arg-type]

    def _check_reduce(
        self, problem: Problem, task: str, layouts: tuple[tuple[str, int], ...], label: str
    ) -> None:
        want = one_block_reduce(problem, task)
        assert type(want).__name__ == TASKS[task].result
        args = problem.arguments(task)
        for chunking, split_every in layouts:
            engine = self._engine(problem, chunking, split_every)
            if task in self.refused:
                with pytest.raises(TaskRefusedError, match=re.escape(repr(task))):
                    engine.reduce(task, *args)  # type: ignore[arg-type]
                continue
            got = engine.reduce(task, *args)  # type: ignore[arg-type]
            what = f"{task} on {chunking} blocks, split_every={split_every}, {label}"
            assert_results_match(got, want, FLOAT_RTOL, what)

    def _check_map(self, problem: Problem, task: str, layouts: tuple[tuple[str, int], ...]) -> None:
        spec, args = TASKS[task], problem.arguments(task)
        want = run_map_block(task, problem.X, 0, args)
        for chunking, split_every in layouts:
            engine = self._engine(problem, chunking, split_every)
            what = f"{task} on {chunking} blocks"
            if task in self.refused:
                with pytest.raises(TaskRefusedError, match=re.escape(repr(task))):
                    engine.map_blocks(task, *args)  # type: ignore[arg-type]
                continue
            got = self.materialise(engine.map_blocks(task, *args))  # type: ignore[arg-type]
            assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
            assert got.dtype == np.dtype(spec.dtype), f"{what}: dtype {got.dtype}"
            if np.issubdtype(want.dtype, np.integer):
                # labels: equal wherever the top two responsibilities are not a near tie
                proba = np.sort(run_map_block("predict_proba", problem.X, 0, args), axis=1)
                clear = proba[:, -1] - proba[:, -2] > 1e-9
                assert clear.sum() > N_ROWS // 2
                np.testing.assert_array_equal(got[clear], want[clear], err_msg=what)
            else:
                assert_close(got, want, FLOAT_RTOL, what)

    # -- the tests ----------------------------------------------------------------
    def test_every_task_is_covered(self) -> None:
        """The suite knows how to ask every registered task (a new task needs arguments here)."""
        assert set(TASK_ARGUMENTS) == set(TASKS), (
            "tasks without example arguments in distmix.testing.engines.TASK_ARGUMENTS: "
            f"{sorted(set(TASKS) - set(TASK_ARGUMENTS))}"
        )

    def test_layout(self) -> None:
        """Row and feature counts, block lengths, global first rows and fan-in as built."""
        problem = make_problem(weighted=False)
        for chunking, split_every in self._layouts():
            engine = self._engine(problem, chunking, split_every)
            rows = CHUNKINGS[chunking]
            assert (engine.n_rows, engine.n_features) == (N_ROWS, N_FEATURES), chunking
            if not self.exposes_blocks:
                assert sum(engine.block_rows) == N_ROWS, chunking
                assert len(engine.row_offsets) == len(engine.block_rows), chunking
                continue
            assert tuple(engine.block_rows) == rows, chunking
            assert tuple(engine.row_offsets) == block_offsets(rows), chunking
            assert engine.split_every == split_every, chunking

    @pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
    @pytest.mark.parametrize("task", REDUCE_TASKS)
    def test_reduce_equals_one_block(self, task: str, weighted: bool) -> None:
        """The tree sum over any blocks and fan-in is the one-block result."""
        label = "weighted" if weighted else "unweighted"
        self._check_reduce(make_problem(weighted), task, self.layouts, label)

    @pytest.mark.parametrize("task", ["estep", "log_likelihood", "kmeans", "nearest_weight"])
    def test_reduce_far_from_origin(self, task: str) -> None:
        """Rows 1e6 from the origin (means and centres among them) sum like the others."""
        self._check_reduce(make_problem(True, shift=FAR), task, self.layouts, "rows at 1e6")

    @pytest.mark.parametrize("task", REDUCE_TASKS)
    def test_reduce_with_empty_blocks(self, task: str) -> None:
        """Zero-row blocks add nothing, or are refused when the engine is built."""
        problem = make_problem(weighted=True, bad_rows=BAD_ROWS if self.names_bad_rows else ())
        if not self.accepts_empty_blocks:
            with pytest.raises(ValueError):
                self._engine(problem, "empty", 2)
            return
        self._check_reduce(problem, task, self.empty_layouts, "weighted, with empty blocks")

    @pytest.mark.parametrize("task", MAP_TASKS)
    def test_map_equals_one_block(self, task: str) -> None:
        """Map outputs come back in row order, equal to the one-block outputs."""
        self._check_map(make_problem(weighted=False), task, self.layouts)

    @pytest.mark.parametrize("task", MAP_TASKS)
    def test_map_with_empty_blocks(self, task: str) -> None:
        problem = make_problem(weighted=False)
        if not self.accepts_empty_blocks:
            with pytest.raises(ValueError):
                self._engine(problem, "empty", 2)
            return
        self._check_map(problem, task, self.empty_layouts)

    def test_nonfinite_rows_named_by_global_index(self) -> None:
        """NaN/inf rows are counted, and the first is named by its global row, whatever
        block holds it (every task that reports them, every layout)."""
        problem = make_problem(weighted=True, bad_rows=BAD_ROWS)
        count, first = float(len(BAD_ROWS)), float(min(BAD_ROWS))

        def reported(result: Any) -> NonFinite:
            if isinstance(result, NonFinite):
                return result
            if isinstance(result, LogLikelihoodTotal):
                return result.nonfinite
            stats = result.stats if hasattr(result, "stats") else result
            stats = stats.to_host()
            return NonFinite(stats.n_nonfinite, stats.first_nonfinite)

        tasks = ("estep", "estep_fingerprint", "log_likelihood", "nonfinite", "kmeans")
        if not self.names_bad_rows:
            self._check_bad_rows_unnamed(problem, REDUCE_TASKS)
            return
        for task in tasks:
            # the one-block reference names them too (a check of the check)
            assert reported(one_block_reduce(problem, task)) == NonFinite(count, first), task
            # n_nonfinite and first_nonfinite are compared exactly
            self._check_reduce(problem, task, self.layouts, "with NaN and inf rows")

    def _check_bad_rows_unnamed(self, problem: Problem, tasks: tuple[str, ...]) -> None:
        """Every task (not refused) raises NonFiniteInputError naming no bad row."""
        for task in tasks:
            if task in self.refused:
                continue
            for chunking, split_every in self.layouts:
                engine = self._engine(problem, chunking, split_every)
                with pytest.raises(NonFiniteInputError) as caught:
                    self._call(engine, task, problem.arguments(task))
                text = str(caught.value)
                named = [row for row in BAD_ROWS if re.search(rf"\b{row}\b", text)]
                assert not named, f"{task} on {chunking} blocks: the error names rows {named}"

    @pytest.mark.parametrize("task", MAP_TASKS)
    def test_map_names_a_nonfinite_row_by_its_global_index(self, task: str) -> None:
        problem = make_problem(weighted=False, bad_rows=BAD_ROWS[:1])
        if not self.names_bad_rows:
            self._check_bad_rows_unnamed(problem, (task,))
            return
        error = TaskRefusedError if task in self.refused else NonFiniteInputError
        message = repr(task) if task in self.refused else f"the first is row {BAD_ROWS[0]}\\b"
        for chunking, split_every in self.layouts:
            engine = self._engine(problem, chunking, split_every)
            with pytest.raises(error, match=message):
                self._call(engine, task, problem.arguments(task))

    @pytest.mark.parametrize("task", REDUCE_TASKS)
    def test_results_pack_and_unpack_exactly(self, task: str) -> None:
        """A result's packed vector has its schema's length and reads back to the same result."""
        problem = make_problem(weighted=True)
        engine = self._engine(problem, "ragged", 3)
        if task in self.refused:
            with pytest.raises(TaskRefusedError, match=re.escape(repr(task))):
                engine.reduce(task, *problem.arguments(task))  # type: ignore[arg-type]
            return
        result = engine.reduce(task, *problem.arguments(task))  # type: ignore[arg-type]
        assert type(result).__name__ == TASKS[task].result, task
        vector, schema = result.pack(), result.schema()
        assert vector.dtype == np.float64 and vector.ndim == 1, task
        assert vector.size == packed_size(schema), f"{task}: {vector.size} values"
        again = unpack_result(vector, schema)
        assert_results_match(again, result, 0.0, f"{task} unpacked")
        np.testing.assert_array_equal(again.pack(), vector, err_msg=task)
        for wrong in (vector[:-1], np.append(vector, 0.0)):
            with pytest.raises(ValueError):
                unpack_result(wrong, schema)

    def test_refused_tasks_raise(self) -> None:
        """The engine refuses the declared tasks, by name, before any computation."""
        problem = make_problem(weighted=False)
        engine = self._engine(problem, "ragged", 3)
        assert frozenset(engine.refused_tasks) == frozenset(self.refused), (
            f"the engine refuses {sorted(engine.refused_tasks)}, declared {sorted(self.refused)}"
        )
        with self.compute_counter() as computes:
            for task in sorted(self.refused):
                with pytest.raises(TaskRefusedError, match=re.escape(repr(task))):
                    self._call(engine, task, problem.arguments(task))
            if "take_rows" in self.refused:
                with pytest.raises(TaskRefusedError):
                    rows_at(engine, [0, 5])
        assert computes.count == 0, f"a refusal started {computes.count} computation(s)"

    def test_bad_requests_name_the_task(self) -> None:
        """Unknown names, a task of the other kind and a wrong number of arguments raise
        an error naming the task, before any computation."""
        problem = make_problem(weighted=False)
        engine = self._engine(problem, "ragged", 3)
        params = problem.arguments("estep")[0]
        cases: list[tuple[Callable[..., Any], tuple, str]] = [
            (engine.reduce, ("no_such_task",), "no_such_task"),
            (engine.map_blocks, ("no_such_task", params), "no_such_task"),
            (engine.reduce, ("predict", params), "predict"),
            (engine.map_blocks, ("estep", params), "estep"),
            (engine.reduce, ("estep",), "estep"),
            (engine.reduce, ("estep", params, params), "estep"),
            (engine.reduce, ("nonfinite", params), "nonfinite"),
            (engine.map_blocks, ("predict",), "predict"),
        ]
        with self.compute_counter() as computes:
            for call, args, name in cases:
                if name in self.refused:
                    continue
                # raised by the request itself, not when a lazy output is computed
                with pytest.raises((TypeError, ValueError), match=re.escape(repr(name))):
                    call(*args)
        assert computes.count == 0, f"bad requests started {computes.count} computation(s)"

    def test_rows_at(self) -> None:
        """``rows_at`` returns exactly ``X[positions]``: any order, repeats, every block."""
        problem = make_problem(weighted=True)
        positions = np.concatenate(
            [[N_ROWS - 1, 0, 74, 74], np.random.default_rng(SEED).integers(N_ROWS, size=20)]
        )
        for chunking, split_every in self._layouts():
            engine = self._engine(problem, chunking, split_every)
            if "take_rows" in self.refused:
                with pytest.raises(TaskRefusedError):
                    rows_at(engine, positions)
                continue
            got = rows_at(engine, positions)
            assert got.dtype == np.float64, chunking
            np.testing.assert_array_equal(got, problem.X[positions], err_msg=chunking)

    def test_one_compute_per_reduce(self) -> None:
        """Every reduce is one computation (``computes_per_reduce`` as counted)."""
        problem = make_problem(weighted=True)
        engine = self._engine(problem, "ragged", 3)
        for task in REDUCE_TASKS:
            if task in self.refused:
                continue
            with self.compute_counter() as computes:
                engine.reduce(task, *problem.arguments(task))  # type: ignore[arg-type]
            assert computes.count == self.computes_per_reduce, (
                f"reduce({task!r}) started {computes.count} computation(s), "
                f"expected {self.computes_per_reduce}"
            )

    def test_reduce_runs_each_block_once(self) -> None:
        """One pass: each block's task runs once, with its own global first row."""
        if not self.block_runs_observable:
            pytest.skip("the engine's block tasks run out of this process")
        problem = make_problem(weighted=True)
        for chunking, split_every in self._layouts():
            engine = self._engine(problem, chunking, split_every)
            with counting_block_runs("estep") as runs:
                engine.reduce("estep", *problem.arguments("estep"))
            if not self.exposes_blocks:  # blocks unknown here: each row read exactly once
                covered = np.zeros(N_ROWS, dtype=int)
                for start, n in runs:
                    covered[start : start + n] += 1
                assert np.all(covered == 1), f"{chunking} blocks: rows read {set(covered)} times"
                continue
            want = list(zip(engine.row_offsets, engine.block_rows, strict=True))
            assert sorted(runs) == sorted(want), f"{chunking} blocks: ran {len(runs)} times"

    def _check_window_reduces(
        self,
        window: Any,
        problem: Problem,
        ranges: tuple[tuple[int, int], ...],
        tasks: tuple[str, ...],
    ) -> None:
        """``window`` (of ``problem``'s engine over ``ranges``) has one block per range,
        starting at the range's global row, and reduces each of ``tasks`` (not refused)
        to the sum of the ranges' one-block results."""
        assert tuple(window.block_rows) == tuple(b - a for a, b in ranges)
        assert tuple(window.row_offsets) == tuple(a for a, _ in ranges)
        w = problem.sample_weight
        assert w is not None
        for task in tasks:
            if task in self.refused:
                continue
            args = problem.arguments(task)
            parts = [run_block(task, problem.X[a:b], w[a:b], a, args) for a, b in ranges]
            want = functools.reduce(operator.add, parts)
            assert_results_match(window.reduce(task, *args), want, FLOAT_RTOL, f"window {task}")

    def test_window(self) -> None:
        """A window reduces exactly its ranges' rows, named by their global index, one
        block per range; a window of a window too."""
        problem = make_problem(weighted=True, bad_rows=(160, 100))  # 100 is outside the window
        engine = self._engine(problem, "ragged", 3)
        if not callable(getattr(engine, "window", None)):
            pytest.skip("not a WindowedEngine")
        assert int(engine.parallel_blocks()) >= 1  # type: ignore[attr-defined]
        window = engine.window(WINDOW_RANGES)  # type: ignore[attr-defined]
        lengths = tuple(b - a for a, b in WINDOW_RANGES)
        assert (window.n_rows, window.n_features) == (sum(lengths), N_FEATURES)
        self._check_window_reduces(
            window,
            problem,
            WINDOW_RANGES,
            ("estep", "fingerprint", "nonfinite", "random_resp", "log_likelihood"),
        )
        if "nonfinite" not in self.refused:
            assert window.reduce("nonfinite") == NonFinite(1.0, 160.0)

        rows = np.concatenate([np.arange(a, b) for a, b in WINDOW_RANGES])
        clean = make_problem(weighted=True)
        window = self._engine(clean, "ragged", 3).window(WINDOW_RANGES)  # type: ignore[attr-defined]
        if "predict_proba" not in self.refused:
            args = clean.arguments("predict_proba")
            got = self.materialise(window.map_blocks("predict_proba", *args))
            want_proba = run_map_block("predict_proba", clean.X[rows], 0, args)
            assert_close(got, want_proba, FLOAT_RTOL, "window predict_proba")
        if "take_rows" not in self.refused:
            positions = [0, 90, 25, 26, 24, 25]
            np.testing.assert_array_equal(rows_at(window, positions), clean.X[rows[positions]])
        # ranges within its blocks: positions 28..36 are rows 22..30, 0..10 rows 150..160
        inner = window.window([(28, 36), (0, 10)])
        assert tuple(inner.row_offsets) == (22, 150)
        assert tuple(inner.block_rows) == (8, 10)
        X, cw = clean.X, clean.sample_weight
        assert cw is not None
        want_fp = run_block("fingerprint", X[22:30], cw[22:30], 22, ()) + run_block(
            "fingerprint", X[150:160], cw[150:160], 150, ()
        )
        assert inner.reduce("fingerprint") == want_fp, "a window of a window lost global rows"
        if "take_rows" not in self.refused:
            np.testing.assert_array_equal(rows_at(inner, np.arange(18)), X[np.r_[22:30, 150:160]])

    def test_window_ahead(self) -> None:
        """:meth:`window_ahead` gives the window :meth:`window` gives, its rows read:
        the same blocks, global rows and results."""
        problem = make_problem(weighted=True, bad_rows=(160, 75))
        engine = self._engine(problem, "ragged", 3)
        if not callable(getattr(engine, "window_ahead", None)):
            pytest.skip("not a WindowedEngine")
        tasks = ("estep", "fingerprint", "nonfinite", "log_likelihood")
        # whole blocks in another order (a stream's windows), then ranges within blocks
        # and across them
        starts = np.cumsum((0,) + tuple(engine.block_rows))
        blocks = tuple((int(starts[i]), int(starts[i + 1])) for i in (2, 0, len(starts) - 2))
        for ranges in (blocks, WINDOW_RANGES, CROSSING_RANGES):
            ahead = engine.window_ahead(ranges).result()  # type: ignore[attr-defined]
            window = engine.window(ranges)  # type: ignore[attr-defined]
            assert (ahead.n_rows, ahead.n_features) == (window.n_rows, window.n_features)
            assert tuple(ahead.block_rows) == tuple(window.block_rows)
            assert tuple(ahead.row_offsets) == tuple(window.row_offsets)
            self._check_window_reduces(ahead, problem, ranges, tasks)
            for task in tasks:
                if task in self.refused:
                    continue
                args = problem.arguments(task)
                assert_results_match(
                    ahead.reduce(task, *args), window.reduce(task, *args), 0.0, task
                )

    def test_window_across_blocks(self) -> None:
        """A range that crosses block edges still makes one block of its rows."""
        problem = make_problem(weighted=True, bad_rows=(75, 120))  # 120 is outside
        engine = self._engine(problem, "ragged", 3)
        if not callable(getattr(engine, "window", None)):
            pytest.skip("not a WindowedEngine")
        window = engine.window(CROSSING_RANGES)  # type: ignore[attr-defined]
        self._check_window_reduces(
            window, problem, CROSSING_RANGES, ("estep", "fingerprint", "nonfinite")
        )
        if "take_rows" not in self.refused:
            rows = np.concatenate([np.arange(a, b) for a, b in CROSSING_RANGES])
            positions = np.arange(rows.size)[::-1]
            np.testing.assert_array_equal(rows_at(window, positions), problem.X[rows[positions]])

    def test_window_refuses_ranges_across_unrelated_rows(self) -> None:
        """A window's range is one block with one global first row: a range across
        blocks whose global rows do not follow on (in a window of a window) is
        refused, never numbered wrongly; ranges outside the rows are refused too."""
        problem = make_problem(weighted=True)
        engine = self._engine(problem, "ragged", 3)
        if not callable(getattr(engine, "window", None)):
            pytest.skip("not a WindowedEngine")
        window = engine.window(WINDOW_RANGES)  # type: ignore[attr-defined]
        # positions 20..26 of the window: global rows 170..174, then row 3
        with pytest.raises(ValueError, match="consecutive"):
            window.window([(20, 26)])
        # positions 25..30: global rows 3, then 20..23 (a gap too)
        with pytest.raises(ValueError, match="consecutive"):
            window.window([(25, 30)])
        with pytest.raises(ValueError, match="not within"):
            engine.window([(0, problem.X.shape[0] + 1)])  # type: ignore[attr-defined]
        # across blocks of the source, whose global rows do follow on: accepted
        assert tuple(engine.window([(60, 80)]).row_offsets) == (60,)  # type: ignore[attr-defined]
