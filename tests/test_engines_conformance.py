"""Every engine passes the conformance suite of :mod:`distmix.testing`, and the suite
fails engines that are wrong.

The local engine (with and without refusing the tasks that move rows), the Dask
engine on the threaded scheduler and on a real two-process
``distributed.LocalCluster``, and a minimal serial engine written here (what a
user's first engine looks like) run every check. Then engines broken on
purpose, each in one way (a dropped block, row offsets ignored, blocks mapped
out of order, a refusal ignored, a second pass, a window that forgets where its
rows came from), are shown to fail the check that is about that way, while the
correct toy passes the same check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pytest
from distributed import get_task_stream

from distmix.engines import DaskEngine, LocalEngine
from distmix.engines.base import block_offsets, window_offsets
from distmix.reduce import tree_sum
from distmix.tasks import ROW_MOVING_TASKS, check_arguments, get_task, run_block, run_map_block
from distmix.testing import EngineTests
from distmix.testing.engines import EMPTY_LAYOUTS, SHORT_LAYOUTS, distributed_computes


def as_dask(X: np.ndarray, w: np.ndarray | None, block_rows: tuple[int, ...]) -> tuple:
    rows = da.from_array(X, chunks=(block_rows, (X.shape[1],)))
    return rows, None if w is None else da.from_array(w, chunks=(block_rows,))


# -- the engines of the package ---------------------------------------------------
class TestLocalEngine(EngineTests):
    accepts_empty_blocks = False  # block lengths must be positive
    computes_per_reduce = 0  # no Dask computation at all

    def make_engine(self, X, sample_weight, block_rows, split_every):
        return LocalEngine(X, sample_weight, block_rows, split_every, refused_tasks=self.refused)


class TestLocalEngineRefusingRowMovers(TestLocalEngine):
    """A federation's engine: it keeps rows where they are."""

    refused = ROW_MOVING_TASKS


class TestDaskEngineThreads(EngineTests):
    def make_engine(self, X, sample_weight, block_rows, split_every):
        rows, w = as_dask(X, sample_weight, block_rows)
        return DaskEngine(rows, w, split_every=split_every, scheduler="threads")


class TestDaskEngineDistributed(TestDaskEngineThreads):
    block_runs_observable = False  # block tasks run in the worker processes
    # a task costs ~1 ms on the scheduler: fewer, smaller graphs (the threaded class
    # above runs the same engine code over every layout)
    layouts = SHORT_LAYOUTS
    empty_layouts = EMPTY_LAYOUTS[:1]

    @pytest.fixture(autouse=True)
    def _use_cluster(self, cluster_client):
        self.client = cluster_client

    def make_engine(self, X, sample_weight, block_rows, split_every):
        rows, w = as_dask(X, sample_weight, block_rows)
        return DaskEngine(rows, w, split_every=split_every, scheduler=self.client)

    def compute_counter(self):
        return distributed_computes(self.client)

    def materialise(self, output):
        return np.asarray(self.client.compute(output).result())

    def test_blocks_ran_on_the_workers(self):
        """The cluster did the work (not a local scheduler behind its back)."""
        engine = self.make_engine(np.ones((20, 3)), None, (5, 15), 2)
        with get_task_stream(client=self.client) as stream:
            engine.reduce("nonfinite")
        workers = {item["worker"] for item in stream.data}
        assert workers and workers <= set(self.client.scheduler_info()["workers"])


# -- a minimal engine, and engines broken on purpose -------------------------------
class ToyEngine:
    """The smallest correct engine: serial, in process, over NumPy blocks."""

    def __init__(
        self,
        X: np.ndarray,
        sample_weight: np.ndarray | None,
        block_rows: tuple[int, ...],
        split_every: int,
        row_offsets: tuple[int, ...] | None = None,
        refused_tasks: frozenset[str] = frozenset(),
    ) -> None:
        if any(n <= 0 for n in block_rows) or sum(block_rows) != X.shape[0]:
            raise ValueError(f"block_rows {block_rows} must be positive and sum to {len(X)}.")
        self.X, self.sample_weight = X, sample_weight
        self.n_rows, self.n_features = X.shape
        self.split_every = split_every
        self.refused_tasks = frozenset(refused_tasks)
        self.block_rows = tuple(block_rows)
        self.row_offsets = row_offsets or block_offsets(self.block_rows)
        self.starts = block_offsets(self.block_rows)

    def block(self, i: int) -> tuple[np.ndarray, np.ndarray | None, int]:
        rows = slice(self.starts[i], self.starts[i] + self.block_rows[i])
        w = None if self.sample_weight is None else self.sample_weight[rows]
        return self.X[rows], w, self.row_offsets[i]

    def blocks_for(self, spec: Any, args: tuple) -> list[int]:
        return spec.blocks(args, self.row_offsets, self.block_rows)

    def reduce(self, task: str, *args: Any) -> Any:
        spec = get_task(task, "reduce", self.refused_tasks, by="the toy engine")
        check_arguments(spec, args)
        parts = (run_block(task, *self.block(i), args) for i in self.blocks_for(spec, args))
        return tree_sum(parts, self.split_every)

    def map_blocks(self, task: str, *args: Any) -> np.ndarray:
        spec = get_task(task, "map", self.refused_tasks, by="the toy engine")
        check_arguments(spec, args)
        order = range(len(self.block_rows))
        outputs = [run_map_block(task, self.block(i)[0], self.block(i)[2], args) for i in order]
        return np.concatenate(outputs, axis=0)

    def parallel_blocks(self) -> int:
        return 1

    def window(self, ranges: Sequence[tuple[int, int]]) -> ToyEngine:
        offsets = window_offsets(ranges, self.block_rows, self.row_offsets)
        rows = np.concatenate([np.arange(a, b) for a, b in ranges])
        w = None if self.sample_weight is None else self.sample_weight[rows]
        return type(self)(
            self.X[rows],
            w,
            tuple(b - a for a, b in ranges),
            self.split_every,
            offsets,
            self.refused_tasks,
        )


class ToyKit(EngineTests):
    """The suite over whatever ``factory`` builds (set on an instance to try an engine)."""

    accepts_empty_blocks = False
    computes_per_reduce = 0
    factory: Callable[..., Any] = ToyEngine

    def make_engine(self, X, sample_weight, block_rows, split_every):
        return self.factory(X, sample_weight, block_rows, split_every)


class TestToyEngine(ToyKit):
    """A user's first engine passes the whole suite."""


class DropsLastBlock(ToyEngine):
    def blocks_for(self, spec, args):
        which = super().blocks_for(spec, args)
        return which[:-1] if len(which) > 1 else which


class IgnoresRowOffsets(ToyEngine):
    """Tells each block that it starts at row 0."""

    def block(self, i):
        rows, w, _ = super().block(i)
        return rows, w, 0


class MapsBlocksInReverse(ToyEngine):
    def map_blocks(self, task, *args):
        spec = get_task(task, "map", self.refused_tasks)
        check_arguments(spec, args)
        order = reversed(range(len(self.block_rows)))
        return np.concatenate([run_map_block(task, *self.block(i)[::2], args) for i in order])


class IgnoresRefusals(ToyEngine):
    """Says it refuses the row-moving tasks, and runs them anyway."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused_tasks = ROW_MOVING_TASKS

    def reduce(self, task, *args):
        spec = get_task(task, "reduce")
        parts = (run_block(task, *self.block(i), args) for i in self.blocks_for(spec, args))
        return tree_sum(parts, self.split_every)


class ReadsTwice(ToyEngine):
    """Reads every block twice (a validation pass before the real one)."""

    def reduce(self, task, *args):
        spec = get_task(task, "reduce", self.refused_tasks)
        for i in self.blocks_for(spec, args):
            run_block(task, *self.block(i), args)
        return super().reduce(task, *args)


class WindowForgetsGlobalRows(ToyEngine):
    def window(self, ranges):
        rows = np.concatenate([np.arange(a, b) for a, b in ranges])
        w = None if self.sample_weight is None else self.sample_weight[rows]
        return ToyEngine(self.X[rows], w, tuple(b - a for a, b in ranges), self.split_every)


class ValidatesFirst(DaskEngine):
    """A Dask engine that checks the rows in a pass of its own before each reduce."""

    def reduce(self, task, *args):
        super().reduce("nonfinite")
        return super().reduce(task, *args)


def dask_factory(engine_class: type[DaskEngine]) -> Callable[..., DaskEngine]:
    def build(X, sample_weight, block_rows, split_every):
        rows, w = as_dask(X, sample_weight, block_rows)
        return engine_class(rows, w, split_every=split_every, scheduler="threads")

    build.__name__ = engine_class.__name__
    return build


dask_validates_first, dask_engine = dask_factory(ValidatesFirst), dask_factory(DaskEngine)


#: (broken engine, the kit's settings for it, the check that must fail, its arguments)
BROKEN: list[tuple[Callable[..., Any], dict, str, dict]] = [
    (DropsLastBlock, {}, "test_reduce_equals_one_block", {"task": "estep", "weighted": True}),
    (
        DropsLastBlock,
        {},
        "test_reduce_equals_one_block",
        {"task": "fingerprint", "weighted": False},
    ),
    (DropsLastBlock, {}, "test_rows_at", {}),
    (IgnoresRowOffsets, {}, "test_nonfinite_rows_named_by_global_index", {}),
    (
        IgnoresRowOffsets,
        {},
        "test_reduce_equals_one_block",
        {"task": "random_resp", "weighted": True},
    ),
    (
        IgnoresRowOffsets,
        {},
        "test_reduce_equals_one_block",
        {"task": "kmeans_sample", "weighted": False},
    ),
    (
        IgnoresRowOffsets,
        {},
        "test_map_names_a_nonfinite_row_by_its_global_index",
        {"task": "predict"},
    ),
    (IgnoresRowOffsets, {}, "test_rows_at", {}),
    (MapsBlocksInReverse, {}, "test_map_equals_one_block", {"task": "predict_proba"}),
    (IgnoresRefusals, {"refused": ROW_MOVING_TASKS}, "test_refused_tasks_raise", {}),
    (ReadsTwice, {}, "test_reduce_runs_each_block_once", {}),
    (WindowForgetsGlobalRows, {}, "test_window", {}),
    (dask_validates_first, {"computes_per_reduce": 1}, "test_one_compute_per_reduce", {}),
]
#: the correct engine of each broken one (default: the toy)
CORRECT: dict[Any, Callable[..., Any]] = {dask_validates_first: dask_engine}


def kit_for(factory: Callable[..., Any], settings: dict) -> ToyKit:
    kit = ToyKit()
    kit.factory = factory
    for name, value in settings.items():
        setattr(kit, name, value)
    return kit


def case_id(case: tuple) -> str:
    factory, _, check, kwargs = case
    name = factory.__name__
    return "-".join([name, check.removeprefix("test_"), *map(str, kwargs.values())])


@pytest.mark.parametrize("case", BROKEN, ids=[case_id(c) for c in BROKEN])
def test_the_suite_fails_a_broken_engine(case):
    factory, settings, check, kwargs = case
    broken = kit_for(factory, settings)
    # an assertion of the suite, or distmix's own check inside rows_at
    with pytest.raises((AssertionError, pytest.fail.Exception, RuntimeError)):
        getattr(broken, check)(**kwargs)


@pytest.mark.parametrize("case", BROKEN, ids=[case_id(c) for c in BROKEN])
def test_the_same_check_passes_the_correct_engine(case):
    """The failure above is the broken engine's, not the check's."""
    factory, settings, check, kwargs = case
    correct = CORRECT.get(factory, ToyEngine)
    if correct is ToyEngine and "refused" in settings:
        correct = functools.partial(ToyEngine, refused_tasks=settings["refused"])
    getattr(kit_for(correct, settings), check)(**kwargs)
