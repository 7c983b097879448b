"""The EM loop over any engine: E-step pass → M-step, until the log-likelihood settles.

Each iteration is exactly one pass over the rows (one ``engine.map_reduce``,
hence one Dask compute): the E-step's SuffStats carry the log-likelihood, the
row count and the non-finite-row check along with the moments.

Convergence is scikit-learn's: the iteration stops when the mean
log-likelihood per sample (weighted by ``sample_weight``) changes by less than
``tol``. As in scikit-learn, ``lower_bound`` is the log-likelihood of the
E-step of the last iteration, i.e. of the Params *before* its M-step.
"""

from __future__ import annotations

import functools
import math
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from distmix.chunks import NonFinite, default_block_rows, raise_if_nonfinite
from distmix.engines.base import Engine
from distmix.estep import (
    PER_COMPONENT_TYPES,
    chunk_stats,
    log_resp_and_norm,
    namespace,
    prepare_block,
    weighted_sum,
)
from distmix.fingerprint import (
    DataChangedError,
    DataFingerprint,
    block_fingerprint,
    fingerprint_block,
)
from distmix.mstep import m_step
from distmix.params import Params
from distmix.suffstats import SuffStats, _to_numpy


@dataclass(frozen=True)
class EMResult:
    params: Params
    lower_bound: float
    lower_bounds: tuple[float, ...]
    n_iter: int
    converged: bool


@dataclass(frozen=True)
class IterationInfo:
    """What a callback hears after every iteration.

    ``params`` are the Params after this iteration's M-step and ``lower_bounds``
    the history so far: together, all a checkpoint needs to resume the run.
    """

    n_iter: int
    lower_bound: float
    change: float
    seconds: float
    n_rows: int
    params: Params
    lower_bounds: tuple[float, ...]
    converged: bool


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
    :func:`~distmix.chunks.default_block_rows`. ``diag`` and ``spherical`` build
    the ``(K, rows, D)`` stack of centred rows, so their pieces shrink with K to
    keep it near ``STACK_BYTES`` (at least 256 rows). Measured on one core
    (ns/row, K × D = 8 × 16 / 32 × 16 / 32 × 64, diag): a 2–4 MiB stack 226–233
    / 782–823 / 2,439, an 8 MiB stack or more 633–697 / 2,066–2,152 / 7,150–7,600.
    """
    rows = default_block_rows(n_components, n_features)
    if covariance_type in PER_COMPONENT_TYPES:
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
    """``kernel`` (engine argument order) on ``block``, or on each of its pieces
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


def estep_block(block: Any, sample_weight: Any, row_offset: int, params: Params) -> SuffStats:
    """Engine-facing E-step: ``chunk_stats`` with the engine's argument order.

    Large NumPy blocks go through the kernel in pieces (:func:`_pieces`) whose
    SuffStats are added. Every engine calls this function on the same blocks;
    pieces and whole blocks differ only by float rounding.
    """
    return _summed_over_pieces(
        lambda x, w, offset, p: chunk_stats(x, p, w, offset),
        block,
        sample_weight,
        row_offset,
        params,
    )


def rowwise_in_pieces(block_fn: Callable[[Any, Params], Any], block: Any, params: Params) -> Any:
    """A row-wise kernel (prediction: one output row per input row) over ``block``,
    in pieces where :func:`_pieces` says so, the outputs stacked in row order."""
    pieces = _pieces(block, params)
    if pieces is None:
        return block_fn(block, params)
    return np.concatenate([block_fn(block[rows], params) for rows in pieces], axis=0)


@dataclass(frozen=True)
class LogLikelihoodTotal:
    """``Σ w log p(x)`` and ``Σ w`` over finite rows, and the non-finite rows."""

    log_lik: float
    weight: float
    nonfinite: NonFinite

    def __add__(self, other: LogLikelihoodTotal) -> LogLikelihoodTotal:
        return LogLikelihoodTotal(
            self.log_lik + other.log_lik,
            self.weight + other.weight,
            self.nonfinite + other.nonfinite,
        )


def log_likelihood_block(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> LogLikelihoodTotal:
    """Engine-facing: the block's log-likelihood under ``params`` (for ``score``),
    large NumPy blocks in the E-step's pieces."""
    return _summed_over_pieces(_log_likelihood_whole, block, sample_weight, row_offset, params)


def _log_likelihood_whole(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> LogLikelihoodTotal:
    xp = namespace(block)
    x, w, n_bad, first = prepare_block(xp, block, sample_weight, row_offset)
    _, log_norm = log_resp_and_norm(x, params)
    return LogLikelihoodTotal(
        float(_to_numpy(weighted_sum(xp, w, log_norm))),
        float(_to_numpy(xp.sum(w))),
        NonFinite(float(_to_numpy(n_bad)), float(_to_numpy(first))),
    )


def mean_log_likelihood_of(engine: Engine, params: Params) -> float:
    """Mean log-likelihood per (weighted) row, in one pass; raises on non-finite rows."""
    total = engine.map_reduce(log_likelihood_block, params)
    total.nonfinite.raise_if_any()
    return total.log_lik / total.weight


def e_step(engine: Engine, params: Params) -> SuffStats:
    """One pass: total SuffStats of all rows under ``params`` (validated finite)."""
    stats = engine.map_reduce(estep_block, params).to_host()
    raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
    return stats


@dataclass(frozen=True)
class FingerprintedStats:
    """A block's SuffStats and the fingerprint of its values, added side by side."""

    stats: SuffStats
    fingerprint: DataFingerprint

    def __add__(self, other: FingerprintedStats) -> FingerprintedStats:
        return FingerprintedStats(self.stats + other.stats, self.fingerprint + other.fingerprint)

    def to_host(self) -> FingerprintedStats:
        return FingerprintedStats(self.stats.to_host(), self.fingerprint)


def estep_fingerprint_block(
    block: Any, sample_weight: Any, row_offset: int, params: Params
) -> FingerprintedStats:
    """Engine-facing: :func:`estep_block` and the block's data fingerprint, from one read."""
    return FingerprintedStats(
        estep_block(block, sample_weight, row_offset, params),
        block_fingerprint(block, sample_weight, row_offset),
    )


def e_step_fingerprinted(engine: Engine, params: Params) -> tuple[SuffStats, DataFingerprint]:
    """:func:`e_step` that also fingerprints the values it reads, in the same pass."""
    total = engine.map_reduce(estep_fingerprint_block, params).to_host()
    stats = total.stats
    raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
    return stats, total.fingerprint


class DataCheck:
    """The fingerprint of a fit's data: recorded for a new checkpoint, checked on resume.

    ``expected`` is the fingerprint a resumed checkpoint holds (``None`` for a
    new fit). The value comes from the first E-step pass (:func:`run_em`'s
    ``check_data``), or, where a resumed fit has no pass left to run, from one
    read of the blocks (:meth:`ensure`). A mismatch raises before anything is
    written.
    """

    def __init__(
        self, checkpoint: str | os.PathLike[str], stored: Any = None, *, resuming: bool = False
    ) -> None:
        self.checkpoint = checkpoint
        self.resuming = resuming
        self.expected = DataFingerprint.from_json(stored) if resuming else None
        self.value: DataFingerprint | None = None
        if resuming and self.expected is None:
            raise DataChangedError(
                f"checkpoint {checkpoint} records no fingerprint of the data it was written "
                "for (an older distmix wrote it, or a stream continued from a model that had "
                "streamed without a checkpoint), so resuming it on these data cannot be "
                "checked: start over without resuming (resume=False; on the command line, "
                "drop --resume), or use another checkpoint path."
            )

    @property
    def pending(self) -> bool:
        """Whether the data have not been fingerprinted yet."""
        return self.value is None

    def observe(self, fingerprint: DataFingerprint) -> None:
        if self.expected is not None and fingerprint != self.expected:
            raise DataChangedError(
                f"checkpoint {self.checkpoint} was written for other data: the rows it was "
                f"fitted on have fingerprint {self.expected.describe()}, the rows given now "
                f"{fingerprint.describe()}. Resume it only on the data it was written for; "
                "to fit these data, start over without resuming (resume=False; on the "
                "command line, drop --resume) or use another checkpoint path."
            )
        self.value = fingerprint

    def add(self, fingerprint: DataFingerprint) -> None:
        """Count more rows in (a stream's newly read rows)."""
        assert self.value is not None
        self.value = self.value + fingerprint

    def ensure(self, engine: Engine) -> None:
        """Fingerprint the data with one read of the blocks, unless already done."""
        if self.value is None:
            self.observe(engine.map_reduce(fingerprint_block))

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` entry for the fingerprint (empty while pending)."""
        return {} if self.value is None else {"data_fingerprint": self.value.to_json()}


def mean_log_likelihood(stats: SuffStats) -> float:
    return float(stats.log_lik) / stats.weight_sum


def run_em(
    engine: Engine,
    params: Params,
    *,
    tol: float,
    max_iter: int,
    reg_covar: float,
    lower_bound: float = -math.inf,
    history: Sequence[float] = (),
    callback: Callable[[IterationInfo], None] | None = None,
    check_data: Callable[[DataFingerprint], None] | None = None,
) -> EMResult:
    """Iterate EM from ``params`` over the rows of ``engine``.

    ``history`` holds the lower bounds of iterations already done (a resumed
    run): counting continues from there, up to ``max_iter`` in all, and
    ``lower_bound`` defaults to its last value. ``check_data``, if given, hears
    the fingerprint of the data (computed in the first iteration's pass) before
    that iteration's M-step and callback; it may raise to stop the run.
    """
    past = list(history)
    if past:
        lower_bound = past[-1]
    converged = False
    n_iter = len(past)
    for n_iter in range(len(past) + 1, max_iter + 1):
        start = time.perf_counter()
        previous = lower_bound
        if check_data is not None:
            stats, fingerprint = e_step_fingerprinted(engine, params)
            check_data(fingerprint)
            check_data = None  # once per run: the data do not change between passes
        else:
            stats = e_step(engine, params)
        lower_bound = mean_log_likelihood(stats)
        params = m_step(stats, reg_covar, previous=params)
        past.append(lower_bound)
        change = lower_bound - previous
        converged = abs(change) < tol
        if callback is not None:
            callback(
                IterationInfo(
                    n_iter,
                    lower_bound,
                    change,
                    time.perf_counter() - start,
                    int(stats.n_rows),
                    params,
                    tuple(past),
                    converged,
                )
            )
        if converged:
            break
    return EMResult(params, lower_bound, tuple(past), n_iter, converged)
