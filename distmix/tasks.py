"""The named block tasks: everything an engine may run on a block.

Layer: beside the kernels. It imports kernels and result types, never an
engine, the EM loop, the estimator or the CLI.

An engine is asked for ``(task name, small arguments)`` — never for an
arbitrary function — and returns the tree sum (``reduce`` tasks) or the
row-ordered concatenation (``map`` tasks) of the task's results over its
blocks. The set is closed and each entry is versioned, so that

* what runs on a block can be read from the request (a log, a site's
  validation of a request against a fixed schema);
* an engine can refuse a task by name: a federation refuses the tasks that
  move rows to the caller (:attr:`BlockTask.moves_rows`);
* a kernel registry can later pick the implementation for a block's array
  type (a compiled CPU kernel for NumPy, the array-API kernel as reference).

Every ``reduce`` task returns a result type with an exact ``+`` and
``pack``/``unpack`` to a flat vector with a schema (:mod:`distmix.results`).

Large NumPy blocks go through a kernel in cache-sized pieces whose results
are added (:func:`kernel_piece_rows`): every engine runs the same task on the
same blocks, so pieces never make engines disagree.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from distmix import estep
from distmix.fingerprint import block_fingerprint
from distmix.init_kernels import (
    cost_block,
    kmeans_block,
    nearest_weight_block,
    nonfinite_block,
    random_resp_block,
    sample_block,
    take_rows_block,
)
from distmix.kernels import chosen, compiled_kernel, compiled_module, estep_kernel
from distmix.nonfinite import NonFinite, raise_if_nonfinite
from distmix.params import Params
from distmix.privacy import ClipBall, private_stats
from distmix.results import FingerprintedStats, LogLikelihoodTotal, StatsBundle, Totals
from distmix.sources.blocks import default_block_rows
from distmix.suffstats import SuffStats, _to_numpy

TaskName = Literal[
    "estep",
    "estep_fingerprint",
    "estep_many",
    "scores",
    "private_estep",
    "private_moments",
    "log_likelihood",
    "fingerprint",
    "nonfinite",
    "kmeans",
    "kmeans_cost",
    "kmeans_sample",
    "nearest_weight",
    "random_resp",
    "take_rows",
    "predict",
    "predict_proba",
    "score_samples",
]
TASK_NAMES: tuple[str, ...] = get_args(TaskName)


class TaskRefusedError(ValueError):
    """An engine was asked for a task it does not run (a federation moving rows, say)."""


# --------------------------------------------------------------------------- #
# pieces of large NumPy blocks                                                #
# --------------------------------------------------------------------------- #
def _malloc_tuned() -> bool:
    """Whether a glibc malloc tunable is set in this process's environment.

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``; any such
    variable turns off glibc's adaptive mmap threshold, so every temporary over
    128 KiB is a fresh ``mmap`` that faults its pages in on each use.
    """
    return any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ)


#: bytes of the (K, rows, D) float64 stack the diag/spherical kernels build per piece
STACK_BYTES = 2 * 2**20


def kernel_piece_rows(covariance_type: str, n_components: int, n_features: int) -> int:
    """Rows of the pieces a large NumPy block goes through the E-step kernel in.

    ``full`` and ``tied`` go component by component (``(rows, D)`` temporaries):
    :func:`~distmix.sources.blocks.default_block_rows`. ``diag`` and ``spherical``
    build the ``(K, rows, D)`` stack of centred rows, so their pieces shrink with K
    to keep it near ``STACK_BYTES`` (at least 256 rows). Measured on one core
    (ns/row, K × D = 8 × 16 / 32 × 16 / 32 × 64, diag): a 2–4 MiB stack 226–233
    / 782–823 / 2,439, an 8 MiB stack or more 633–697 / 2,066–2,152 / 7,150–7,600.
    """
    rows = default_block_rows(n_components, n_features)
    if covariance_type in estep.PER_COMPONENT_TYPES:
        return rows
    stack_rows = STACK_BYTES // (8 * max(1, n_components) * max(1, n_features))
    return int(min(rows, max(stack_rows, 256)))


def _pieces(block: Any, params: Params) -> list[slice] | None:
    """Row slices a NumPy block goes through a kernel in, or ``None`` for whole.

    A block much larger than a cache-sized piece (a whole Zarr chunk, say; see
    :func:`kernel_piece_rows`) goes piece by piece: the kernel's temporaries
    then stay in cache. Measured on 8 MiB blocks at D = 16, K = 8: 2.1× faster
    with glibc's default malloc, but 1.3× slower under a malloc tunable (every
    piece's temporaries are fresh mmaps; measured for diag too), so blocks go
    whole in that case.
    """
    piece = kernel_piece_rows(params.covariance_type, params.n_components, params.n_features)
    n = int(block.shape[0])
    if n <= 2 * piece or not isinstance(block, np.ndarray) or _malloc_tuned():
        return None
    return [slice(start, min(start + piece, n)) for start in range(0, n, piece)]


def _summed_over_pieces(
    kernel: Callable[[Any, Any, int, Params], Any],
    block: Any,
    sample_weight: Any,
    row_offset: int,
    params: Params,
) -> Any:
    """``kernel`` (block-task argument order) on ``block``, or on each of its pieces
    (:func:`_pieces`) with their weights and global first rows, the results added."""
    pieces = _pieces(block, params)
    if pieces is None:
        return kernel(block, sample_weight, row_offset, params)
    parts = (
        kernel(
            block[rows],
            None if sample_weight is None else sample_weight[rows],
            row_offset + rows.start,
            params,
        )
        for rows in pieces
    )
    return functools.reduce(operator.add, parts)


def rowwise_in_pieces(block_fn: Callable[[Any, Params], Any], block: Any, params: Params) -> Any:
    """A row-wise kernel (prediction: one output row per input row) over ``block``,
    in pieces where :func:`_pieces` says so, the outputs stacked in row order."""
    pieces = _pieces(block, params)
    if pieces is None:
        return block_fn(block, params)
    return np.concatenate([block_fn(block[rows], params) for rows in pieces], axis=0)


# --------------------------------------------------------------------------- #
# the block functions of the reduce tasks: fn(block, w, row_offset, *args)    #
# --------------------------------------------------------------------------- #
def load_kernels() -> None:
    """Load the block kernels this process's tasks would run: the compiled ones (numba
    and llvmlite, ~54 MiB on import) where the kernel choice runs them. A Dask worker's
    memory probe calls it, so that the blocks are checked against what is left."""
    compiled_module()


def estep_block(block: Any, sample_weight: Any, row_offset: int, params: Params) -> SuffStats:
    """The E-step's SuffStats of a block: the compiled kernel where the kernel registry
    picks it (it tiles the block itself), else the array-API kernel, in pieces where
    :func:`_pieces` says so."""
    compiled = estep_kernel(block)
    if compiled is not None:
        return compiled(block, params, sample_weight, row_offset)  # type: ignore[no-any-return]
    return _summed_over_pieces(
        lambda x, w, offset, p: estep.chunk_stats(x, p, w, offset),
        block,
        sample_weight,
        row_offset,
        params,
    )


def estep_many_block(
    block: Any, sample_weight: Any, row_offset: int, models: tuple[Params, ...]
) -> StatsBundle:
    """:func:`estep_block` of every model of ``models`` on one read of the block, one
    after another (each exactly as the block task ``estep`` computes it alone; the
    peak memory is one model's)."""
    return StatsBundle(
        tuple(estep_block(block, sample_weight, row_offset, params) for params in models)
    )


def scores_block(
    block: Any, sample_weight: Any, row_offset: int, models: tuple[Params, ...]
) -> Totals:
    """Per model of ``models``: the block's weighted log-likelihood and the weighted
    entropy of its responsibilities ``−Σ w r log r`` (for ICL), then the block's
    weight: ``2M + 1`` sums from one read (model selection's scoring pass)."""
    xp = estep.namespace(block)
    x, w, _, _ = estep.prepare_block(xp, block, sample_weight, row_offset)
    values = []
    for params in models:
        log_resp, log_norm = estep.log_resp_and_norm(x, params)
        resp = xp.exp(log_resp)
        entropy = -xp.sum(resp * xp.where(resp > 0.0, log_resp, 0.0), axis=1)
        values += [
            float(_to_numpy(estep.weighted_sum(xp, w, log_norm))),
            float(_to_numpy(estep.weighted_sum(xp, w, entropy))),
        ]
    values.append(float(_to_numpy(xp.sum(w))))
    return Totals(np.asarray(values, dtype=np.float64))


def private_estep_block(
    block: Any, sample_weight: Any, row_offset: int, params: Params, ball: ClipBall
) -> SuffStats:
    """A private fit's E-step of a block: its rows clipped to ``ball``, its statistics
    about the ball's centre (:func:`distmix.privacy.private_stats`), by the kernel the
    registry picks."""
    return private_stats(
        block,
        params,
        ball,
        sample_weight,
        row_offset,
        lambda x, p, w, offset: estep_block(x, w, offset, p),
    )


def private_moments_block(
    block: Any, sample_weight: Any, row_offset: int, ball: ClipBall, covariance_type: str
) -> SuffStats:
    """A private fit's first release of a block: its rows clipped to ``ball``, their
    count and moments about the centre (the statistics of one component)."""
    d = ball.n_features
    one = Params.from_covariances(
        np.ones(1),
        ball.centre[None, :],
        {
            "full": np.eye(d)[None],
            "tied": np.eye(d),
            "diag": np.ones((1, d)),
            "spherical": np.ones(1),
        }[covariance_type],
        covariance_type,  # type: ignore[arg-type]
    )
    return private_estep_block(block, sample_weight, row_offset, one, ball)


def estep_fingerprint_block(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> FingerprintedStats:
    """:func:`estep_block` and the block's data fingerprint, from one read."""
    return FingerprintedStats(
        estep_block(block, sample_weight, row_offset, params),
        block_fingerprint(block, sample_weight, row_offset),
    )


def log_likelihood_block(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> LogLikelihoodTotal:
    """The block's log-likelihood under ``params`` (for ``score``): the compiled
    kernel where the kernel registry picks it, else the array-API one in pieces."""
    compiled = compiled_kernel("log_likelihood", block)
    if compiled is not None:
        return compiled(block, params, sample_weight, row_offset)  # type: ignore[no-any-return]
    return _summed_over_pieces(_log_likelihood_whole, block, sample_weight, row_offset, params)


def _log_likelihood_whole(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> LogLikelihoodTotal:
    xp = estep.namespace(block)
    x, w, n_bad, first = estep.prepare_block(xp, block, sample_weight, row_offset)
    _, log_norm = estep.log_resp_and_norm(x, params)
    return LogLikelihoodTotal(
        float(_to_numpy(estep.weighted_sum(xp, w, log_norm))),
        float(_to_numpy(xp.sum(w))),
        NonFinite(float(_to_numpy(n_bad)), float(_to_numpy(first))),
    )


def _compiled_or(name: str, block_fn: Callable[..., Any]) -> Callable[..., Any]:
    """The reduce task ``name``'s block function: its compiled kernel where the
    kernel registry picks one for the block, else ``block_fn`` (array-API)."""

    def run(block: Any, sample_weight: Any, row_offset: int, *args: Any) -> Any:
        compiled = compiled_kernel(name, block)
        return (compiled or block_fn)(block, sample_weight, row_offset, *args)

    run.__name__ = block_fn.__name__
    return run


# --------------------------------------------------------------------------- #
# the block functions of the map tasks: fn(block, row_offset, params)          #
# --------------------------------------------------------------------------- #
def _checked_rowwise(
    name: str, block_fn: Callable[[Any, Params], Any]
) -> Callable[[Any, int, Params], Any]:
    """A prediction kernel behind a finiteness check that names the bad rows
    (a prediction has no statistics to carry the count in: it raises on the block);
    the compiled kernel of task ``name`` where the kernel registry picks it."""

    def run(block: Any, row_offset: int, params: Params) -> Any:
        xp = estep.namespace(block)
        bad = ~xp.all(xp.isfinite(block), axis=1)
        n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
        if n_bad:
            first = int(xp.argmax(xp.astype(bad, xp.int8)))
            raise_if_nonfinite(n_bad, row_offset + first)
        compiled = compiled_kernel(name, block)
        if compiled is not None:
            return compiled(block, params)
        return rowwise_in_pieces(block_fn, block, params)

    run.__name__ = block_fn.__name__
    return run


# --------------------------------------------------------------------------- #
# the registry                                                                #
# --------------------------------------------------------------------------- #
def _all_blocks(args: tuple, starts: Sequence[int], lengths: Sequence[int]) -> list[int]:
    return list(range(len(starts)))


def _blocks_holding(args: tuple, starts: Sequence[int], lengths: Sequence[int]) -> list[int]:
    """The blocks that hold one of the global rows ``args[0]`` (for ``take_rows``)."""
    idx = np.asarray(args[0], dtype=np.int64)
    return [
        i
        for i, (start, n) in enumerate(zip(starts, lengths, strict=True))
        if np.any((idx >= start) & (idx < start + n))
    ]


@dataclass(frozen=True)
class BlockTask:
    """One named, versioned task an engine runs on its blocks.

    ``kind="reduce"``: ``run(block, sample_weight, row_offset, *args)`` returns a
    result of type ``result`` and the engine returns their tree sum.
    ``kind="map"``: ``run(block, row_offset, params)`` returns one output row per
    input row (``dtype``; ``columns(params)`` trailing columns, ``None`` for a
    1-D output) and the engine returns the outputs in row order.
    ``arguments`` names what follows the block in a request; ``moves_rows``
    marks the tasks whose result holds rows of the data; ``blocks(args, starts,
    lengths)`` lists the blocks a request needs (all of them but for
    ``take_rows``).
    """

    name: str
    version: int
    kind: Literal["reduce", "map"]
    run: Callable[..., Any]
    arguments: tuple[str, ...]
    result: str
    moves_rows: bool = False
    blocks: Callable[[tuple, Sequence[int], Sequence[int]], list[int]] = _all_blocks
    dtype: Any = np.float64
    columns: Callable[[Params], int | None] | None = None


def _reduce(
    name: str, run: Callable[..., Any], arguments: tuple[str, ...], result: str, **kw: Any
) -> BlockTask:
    return BlockTask(name, 1, "reduce", run, arguments, result, **kw)


def _map(name: str, run: Callable[..., Any], dtype: Any, columns: Any) -> BlockTask:
    return BlockTask(
        name,
        1,
        "map",
        _checked_rowwise(name, run),
        ("params",),
        "array",
        dtype=dtype,
        columns=columns,
    )


TASKS: dict[str, BlockTask] = {
    task.name: task
    for task in (
        _reduce("estep", estep_block, ("params",), "SuffStats"),
        _reduce("estep_fingerprint", estep_fingerprint_block, ("params",), "FingerprintedStats"),
        _reduce("estep_many", estep_many_block, ("models",), "StatsBundle"),
        _reduce("scores", scores_block, ("models",), "Totals"),
        _reduce("private_estep", private_estep_block, ("params", "ball"), "SuffStats"),
        _reduce("private_moments", private_moments_block, ("ball", "covariance_type"), "SuffStats"),
        _reduce("log_likelihood", log_likelihood_block, ("params",), "LogLikelihoodTotal"),
        _reduce(
            "fingerprint",
            lambda block, w, offset: block_fingerprint(block, w, offset),
            (),
            "DataFingerprint",
        ),
        _reduce("nonfinite", nonfinite_block, (), "NonFinite"),
        _reduce(
            "kmeans",
            _compiled_or("kmeans", kmeans_block),
            ("centers", "shift", "covariance_type"),
            "KMeansStats",
        ),
        _reduce(
            "kmeans_cost", _compiled_or("kmeans_cost", cost_block), ("centers", "shift"), "Totals"
        ),
        _reduce(
            "kmeans_sample",
            sample_block,
            ("centers", "shift", "phi", "oversampling", "seed", "stream"),
            "Rows",
            moves_rows=True,
        ),
        _reduce(
            "nearest_weight",
            _compiled_or("nearest_weight", nearest_weight_block),
            ("centers", "shift"),
            "Totals",
        ),
        _reduce(
            "random_resp", random_resp_block, ("reference", "covariance_type", "seed"), "SuffStats"
        ),
        _reduce(
            "take_rows",
            take_rows_block,
            ("indices",),
            "Rows",
            moves_rows=True,
            blocks=_blocks_holding,
        ),
        _map("predict", estep.predict_block, np.int64, None),
        _map("predict_proba", estep.predict_proba_block, np.float64, lambda p: p.n_components),
        _map("score_samples", estep.score_samples_block, np.float64, None),
    )
}
assert tuple(TASKS) == TASK_NAMES


#: the tasks whose results hold rows of the data
ROW_MOVING_TASKS = frozenset(name for name, task in TASKS.items() if task.moves_rows)


def get_task(
    name: str,
    kind: str | None = None,
    refused: frozenset[str] | set[str] = frozenset(),
    *,
    by: str = "this engine",
) -> BlockTask:
    """The task registered as ``name``; raises naming the valid ones (or the refusal)."""
    task = TASKS.get(name) if isinstance(name, str) else None
    if task is None or (kind is not None and task.kind != kind):
        valid = [n for n, t in TASKS.items() if kind is None or t.kind == kind]
        raise ValueError(
            f"unknown {kind + ' ' if kind else ''}block task {name!r}; the registered ones "
            f"are {', '.join(valid)}."
        )
    if name in refused:
        why = " (it moves rows of the data to the caller)" if task.moves_rows else ""
        raise TaskRefusedError(f"{by} does not run the block task {name!r}{why}.")
    return task


def check_arguments(task: BlockTask, args: tuple) -> None:
    """A request must give exactly the task's arguments."""
    if len(args) != len(task.arguments):
        raise TypeError(
            f"block task {task.name!r} takes {len(task.arguments)} argument"
            f"{'s' if len(task.arguments) != 1 else ''} "
            f"({', '.join(task.arguments) or 'none'}), got {len(args)}."
        )


def _host(result: Any) -> Any:
    to_host = getattr(result, "to_host", None)
    return to_host() if to_host is not None else result


def run_block(
    name: str,
    block: Any,
    sample_weight: Any,
    row_offset: int,
    args: tuple,
    kernel: str | None = None,
) -> Any:
    """Run the reduce task ``name`` on one block; its result on the host.
    ``kernel``: the fit's choice of kernel for this block (``None``: the process's)."""
    with chosen(kernel):
        return _host(TASKS[name].run(block, sample_weight, row_offset, *args))


def run_map_block(
    name: str, block: Any, row_offset: int, args: tuple, kernel: str | None = None
) -> Any:
    """Run the map task ``name`` on one block: one output row per row of ``block``."""
    with chosen(kernel):
        return TASKS[name].run(block, row_offset, *args)
