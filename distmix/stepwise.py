"""Stepwise online EM, the arithmetic: step sizes, the running statistics, the
order a stream reads its blocks in, and the state a checkpoint keeps.

Layer: a kernel-side module, like :mod:`distmix.mstep`; it imports no engine,
loop or estimator (:mod:`distmix.online` drives it with an engine's E-step
passes). Each batch's SuffStats come from the same kernel and the same engines
as a batch-EM pass (a batch is one in-memory block set, or a window of dask/Zarr
blocks reduced as a tree). What is particular to streaming lives here: the
running average of the statistics (Cappé & Moulines 2009; in mini-batch form,
Liang & Klein 2009),

    s ← (1 − γ_t) · s + γ_t · stats(batch) / |batch|,   γ_t = (t + t0)^(−κ),

followed by the batch M-step on ``s``; the order in which a source's blocks are
read (seeded shuffles, passes, the rows a growing array has added); and the
state a checkpoint needs to continue a stream exactly.

``s`` holds statistics per unit of row weight, about the means of the Params of
the latest E-step. Before a new batch is added, ``s`` is moved to the new
reference exactly (:meth:`SuffStats.recentre`), so the average never mixes
statistics about different points. The M-step sees ``s`` scaled back to the
size of the batch, so that for ``γ = 1`` an update is exactly one EM step on
the batch (``m_step`` of the batch's own statistics).

Optional extras: a floor on ``γ_t`` (``forgetting_factor``: old batches keep
being forgotten at least at that rate, for drifting streams), and Polyak–
Ruppert averaging of the Params of the updates after ``average_after``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from distmix.mstep import m_step
from distmix.nonfinite import raise_if_nonfinite
from distmix.params import Params
from distmix.suffstats import SuffStats

#: how many per-update history entries a stream keeps (the newest); older ones are dropped
HISTORY_LENGTH = 10_000


# --------------------------------------------------------------------------- #
# the step size                                                               #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class StepSchedule:
    """``γ_t = max((t + learning_offset)^(−learning_decay), forgetting_factor)``, t = 1, 2, …

    Parameters
    ----------
    learning_decay : float in (0.5, 1]
        κ: how fast the weight of new batches decays. Cappé & Moulines's
        conditions (Σγ = ∞, Σγ² < ∞) need κ in (0.5, 1]; κ = 1 with offset 0 is
        the plain average of all batches so far.
    learning_offset : float >= 0
        t0: larger values give early batches (statistics computed under poor
        starting parameters) less weight. With 0, γ_1 = 1.
    forgetting_factor : float in (0, 1] or None
        A floor on γ: the statistics forget old batches at least at this rate,
        so that the model follows a stream whose distribution drifts.
    """

    learning_decay: float = 0.6
    learning_offset: float = 1.0
    forgetting_factor: float | None = None

    def __post_init__(self) -> None:
        kappa, t0, floor = self.learning_decay, self.learning_offset, self.forgetting_factor
        if not _is_real(kappa) or not 0.5 < kappa <= 1:
            raise ValueError(f"learning_decay must be a number in (0.5, 1], got {kappa!r}.")
        if not _is_real(t0) or not 0 <= t0 < math.inf:
            raise ValueError(f"learning_offset must be a finite number >= 0, got {t0!r}.")
        if floor is not None and (not _is_real(floor) or not 0 < floor <= 1):
            raise ValueError(
                f"forgetting_factor must be None or a number in (0, 1], got {floor!r}."
            )

    def step(self, t: int) -> float:
        """γ_t for the ``t``-th update (1-based)."""
        gamma = float((t + self.learning_offset) ** (-self.learning_decay))
        if self.forgetting_factor is not None:
            gamma = max(gamma, float(self.forgetting_factor))
        return min(gamma, 1.0)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


#: γ = 1 at every update: an update is exactly one batch-EM step on its batch
EM_STEP = StepSchedule(learning_decay=1.0, learning_offset=0.0)


# --------------------------------------------------------------------------- #
# the state of a stream                                                       #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class StreamRecord:
    """One history entry: where the stream stood after update ``n_steps``."""

    n_steps: int
    n_samples_seen: int
    step_size: float
    batch_log_likelihood: float  # mean over the batch, under the Params before the update
    running_log_likelihood: float  # the γ-weighted average of the batch means
    validation_log_likelihood: float | None = None


@dataclass(frozen=True)
class StreamState:
    """Everything an online fit carries from one batch to the next.

    ``stats`` is the running average (per unit of row weight) about the means of
    the Params its last batch was computed with; ``params`` the Params after the
    latest M-step; ``averaged`` the Polyak–Ruppert average of the Params of the
    last ``n_averaged`` updates.
    """

    params: Params
    stats: SuffStats | None = None
    n_steps: int = 0
    n_samples_seen: int = 0
    weight_seen: float = 0.0
    averaged: Params | None = None
    n_averaged: int = 0
    history: tuple[StreamRecord, ...] = ()

    @property
    def model_params(self) -> Params:
        """The Params a model exposes: the average if averaging has begun."""
        return self.averaged if self.averaged is not None else self.params

    @property
    def running_log_likelihood(self) -> float:
        if self.stats is None:
            return -math.inf
        return float(self.stats.log_lik) / float(np.sum(self.stats.resp_sum))


def online_update(
    state: StreamState,
    batch: SuffStats,
    schedule: StepSchedule,
    reg_covar: float,
    *,
    average_after: int | None = None,
) -> StreamState:
    """The state after one stepwise-EM update with a batch's statistics.

    ``batch`` must be about ``state.params.means`` (computed with the state's
    Params). Pure: the old state is left as it was.
    """
    batch = batch.to_host()
    raise_if_nonfinite(batch.n_nonfinite, batch.first_nonfinite)
    weight = float(np.sum(batch.resp_sum))
    if not weight > 0:
        raise ValueError(
            "the batch's total weight is zero (every row has sample_weight 0): "
            "it carries nothing to update the model with."
        )
    t = state.n_steps + 1
    gamma = schedule.step(t)
    new = batch.scale(gamma / weight)
    if state.stats is not None and gamma < 1.0:
        new = state.stats.recentre(batch.reference).scale(1.0 - gamma) + new
    # the M-step is invariant to the scale of the statistics except for its
    # absolute guards (10·eps per component, the empty-component threshold): give
    # it the batch's size, so that γ = 1 is exactly batch EM's M-step on the batch
    params = m_step(new.scale(weight), reg_covar, previous=state.params)
    averaged, n_averaged = state.averaged, state.n_averaged
    if average_after is not None and t > average_after:
        averaged = params if averaged is None else _running_mean(averaged, params, n_averaged + 1)
        n_averaged += 1
    record = StreamRecord(
        t,
        state.n_samples_seen + int(batch.n_rows),
        gamma,
        float(batch.log_lik) / weight,
        float(new.log_lik) / float(np.sum(new.resp_sum)),
    )
    return StreamState(
        params=params,
        stats=new,
        n_steps=t,
        n_samples_seen=state.n_samples_seen + int(batch.n_rows),
        weight_seen=state.weight_seen + weight,
        averaged=averaged,
        n_averaged=n_averaged,
        history=_append(state.history, record),
    )


def _running_mean(mean: Params, new: Params, count: int) -> Params:
    """The average of ``count`` Params, given that of the first ``count − 1``."""
    f = 1.0 / count
    weights = mean.weights + f * (new.weights - mean.weights)
    return Params.from_covariances(
        weights / weights.sum(),
        mean.means + f * (new.means - mean.means),
        mean.covariances + f * (new.covariances - mean.covariances),
        mean.covariance_type,
    )


def _append(history: tuple[StreamRecord, ...], record: StreamRecord) -> tuple[StreamRecord, ...]:
    if len(history) < HISTORY_LENGTH:
        return (*history, record)
    return tuple(collections.deque((*history[1:], record), maxlen=HISTORY_LENGTH))


def with_validation(state: StreamState, value: float) -> StreamState:
    """The state with the held-out log-likelihood recorded on its latest entry."""
    if not state.history:
        return state
    last = replace(state.history[-1], validation_log_likelihood=float(value))
    return replace(state, history=(*state.history[:-1], last))


# --------------------------------------------------------------------------- #
# reading a source in stream order                                            #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class StreamPosition:
    """Where a stream over an array stands.

    ``rows_done`` rows at the start of the source have had all their passes
    (a growing array continues after them). Inside the segment being streamed,
    ``[segment_start, segment_stop)``, the stream is in pass ``pass_index``
    before its ``batch_index``-th batch.
    """

    rows_done: int = 0
    segment_start: int = 0
    segment_stop: int = 0
    pass_index: int = 0
    batch_index: int = 0

    @property
    def in_segment(self) -> bool:
        return self.segment_stop > self.segment_start


Range = tuple[int, int]


@dataclass(frozen=True)
class Stream:
    """Where a stream has got to: what an estimator keeps between calls and a model
    file saves.

    ``position`` is ``None`` for a stream of batches (or ``partial_fit`` calls);
    ``plan`` holds the settings of the read order to continue with (seed, window,
    passes, shuffle), ``data`` the fingerprint of the rows read and the blocks
    they were read in.
    """

    state: StreamState
    position: StreamPosition | None = None
    plan: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class StreamPlan:
    """How a stream cuts and orders an array's rows; the same plan replays the same batches.

    The pieces are the source's row blocks (whole Zarr chunks for Zarr sources),
    clipped to the segment being streamed; every update reads ``window`` of
    them. With ``shuffle``, each pass of a segment visits its pieces in a seeded
    random order that depends only on ``seed``, the segment's rows and the pass.
    """

    block_stops: tuple[int, ...]
    window: int = 1
    n_passes: int = 1
    shuffle: bool = True
    seed: int = 0

    @classmethod
    def for_blocks(cls, block_rows: Sequence[int], **kwargs: Any) -> StreamPlan:
        stops = np.cumsum(np.asarray(block_rows, dtype=np.int64))
        return cls(tuple(int(s) for s in stops), **kwargs)

    def segment_ranges(self, start: int, stop: int) -> list[Range]:
        """Row ranges of the source's blocks, clipped to ``[start, stop)``."""
        bounds = [start, *(b for b in self.block_stops if start < b < stop), stop]
        return list(zip(bounds[:-1], bounds[1:], strict=True))

    def batches(self, start: int, stop: int, pass_index: int) -> list[list[Range]]:
        """The row ranges of every batch of one pass over rows ``[start, stop)``."""
        ranges = self.segment_ranges(start, stop)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, start, stop, pass_index, 0x5EED])
            ranges = [ranges[i] for i in rng.permutation(len(ranges))]
        return [ranges[i : i + self.window] for i in range(0, len(ranges), self.window)]

    def with_blocks_read(self, stops: Sequence[int] | None, position: StreamPosition) -> StreamPlan:
        """This plan with the block ``stops`` of the run that reached ``position`` for the
        rows it has seen (its segment in progress included), and its own blocks after.

        A position counts batches of blocks: resumed with other blocks (another
        ``block_size``, or blocks sized to other workers) it would name other rows.
        """
        if stops is None:
            return self
        seen = max(position.rows_done, position.segment_stop)
        kept = tuple(int(s) for s in stops if s <= seen)
        return replace(self, block_stops=kept + tuple(s for s in self.block_stops if s > seen))

    def blocks_read_record(self, position: StreamPosition) -> dict[str, Any]:
        """The block stops of the rows seen by ``position``, run-length encoded for a
        checkpoint: ``{"block_stops": [[rows, count], ...]}``."""
        seen = max(position.rows_done, position.segment_stop)
        stops = [s for s in self.block_stops if s <= seen]
        if seen and (not stops or stops[-1] != seen):
            stops.append(seen)  # the segment's end is a boundary whatever the blocks
        runs: list[list[int]] = []
        previous = 0
        for stop in stops:
            rows = stop - previous
            if runs and runs[-1][0] == rows:
                runs[-1][1] += 1
            else:
                runs.append([rows, 1])
            previous = stop
        return {"block_stops": runs}

    def ranges_read(self, position: StreamPosition) -> list[Range]:
        """The row ranges a stream's first passes have read before ``position``.

        Every row read so far was read in the first pass over its segment: the
        rows done, the segment in progress if it is past its first pass, else
        the batches of its first pass before ``position``.
        """
        ranges = self.segment_ranges(0, position.rows_done) if position.rows_done else []
        if position.in_segment:
            start, stop = position.segment_start, position.segment_stop
            if position.pass_index > 0:
                ranges += self.segment_ranges(start, stop)
            else:
                for batch in self.batches(start, stop, 0)[: position.batch_index]:
                    ranges += batch
        return ranges

    def walk(
        self, position: StreamPosition, n_rows: int
    ) -> Iterator[tuple[StreamPosition, list[Range]]]:
        """``(position after the batch, its row ranges)`` for every batch left to stream.

        Finishes the segment in progress, then streams the rows a growing source
        has added after it as a new segment (``n_passes`` passes over them).
        """
        seen = max(position.rows_done, position.segment_stop)
        if n_rows < seen:
            raise ValueError(
                f"the source has {n_rows} rows but the stream has already read {seen}: "
                "rows can be appended to a streamed array, not removed"
            )
        pos = position
        while True:
            if not pos.in_segment:
                if n_rows == pos.rows_done:
                    return
                pos = StreamPosition(pos.rows_done, pos.rows_done, n_rows, 0, 0)
            for pass_index in range(pos.pass_index, self.n_passes):
                batches = self.batches(pos.segment_start, pos.segment_stop, pass_index)
                first = pos.batch_index if pass_index == pos.pass_index else 0
                for i in range(first, len(batches)):
                    if i + 1 < len(batches):
                        after = replace(pos, pass_index=pass_index, batch_index=i + 1)
                    elif pass_index + 1 < self.n_passes:
                        after = replace(pos, pass_index=pass_index + 1, batch_index=0)
                    else:
                        after = StreamPosition(pos.segment_stop)
                    yield after, batches[i]
            pos = StreamPosition(pos.segment_stop)
