"""The online-EM driver: streams of batches through an engine, with checkpoints.

Layer: the loop, beside :mod:`distmix.em` (imports engines' protocol, the
E-step pass of :mod:`distmix.em`, :mod:`distmix.stepwise`, :mod:`distmix.init`
and :mod:`distmix.persist`; never an estimator). The estimator's ``partial_fit``
and ``fit_stream`` hand it their settings and a function that builds (and
checks) the engine of a batch; it hands back where the stream has got to.

A stream reads an array (Zarr, dask or NumPy) in windows of its blocks, in a
seeded order per pass (:class:`~distmix.stepwise.StreamPlan`), or an iterable of
batches one update each. With a checkpoint, every update is saved with the
fingerprint of the rows read so far, and a resumed stream first checks that the
rows it skips are those the checkpoint was written for.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from distmix.em import DataCheck, e_step, e_step_fingerprinted, mean_log_likelihood_of
from distmix.engines.base import Engine, WindowedEngine
from distmix.fingerprint import DataFingerprint, block_fingerprint
from distmix.init import initial_params
from distmix.params import Params
from distmix.persist import (
    STREAM_PLAN_KEYS,
    check_checkpoint_settings,
    load_stream_checkpoint,
    save_stream_checkpoint,
)
from distmix.progress import current, fit_progress, logger
from distmix.selection import n_parameters
from distmix.settings import check_count
from distmix.sources.checks import is_zarr_source
from distmix.stepwise import (
    EM_STEP,
    Range,
    StepSchedule,
    Stream,
    StreamPlan,
    StreamPosition,
    StreamRecord,
    StreamState,
    online_update,
    with_validation,
)

#: ``engine_for(X, sample_weight, first)``: the engine of a batch or source, checked;
#: ``first`` when it is the first data the model sees (its feature count is set then)
EngineFor = Callable[[Any, Any, bool], WindowedEngine]


@dataclass(frozen=True)
class OnlineSettings:
    """What an online fit needs of the estimator's settings."""

    n_components: int
    covariance_type: str
    reg_covar: float
    init_params: str
    schedule: StepSchedule
    average_after: int | None
    #: rows of batch EM a stream over an array begins with ("auto" or a count; 0: none)
    warmup_rows: int | str
    #: the warm-up's EM: at most ``max_iter`` iterations, stopped at a change below ``tol``
    max_iter: int
    tol: float
    #: ``user_init(n_features)``: the checked ``weights_init``/``means_init``/``precisions_init``
    user_init: Callable[[int], dict[str, Any]]
    #: ``draw_seed()``: a seed from the estimator's ``random_state``, drawn anew at each
    #: call as scikit-learn does (for the read order, and for initialisation on a
    #: stream's first rows)
    draw_seed: Callable[[], int]
    checkpoint: Any = None
    resume: bool = False
    verbose: int = 0

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        user_init: Callable[[int], dict[str, Any]],
        draw_seed: Callable[[], int],
    ) -> OnlineSettings:
        """From an estimator's ``get_params()`` (checked already)."""
        return cls(
            n_components=params["n_components"],
            covariance_type=params["covariance_type"],
            reg_covar=params["reg_covar"],
            init_params=params["init_params"],
            schedule=StepSchedule(
                params["learning_decay"], params["learning_offset"], params["forgetting_factor"]
            ),
            average_after=params["average_after"],
            warmup_rows=params["warmup_rows"],
            max_iter=params["max_iter"],
            tol=params["tol"],
            user_init=user_init,
            draw_seed=draw_seed,
            checkpoint=params["checkpoint"],
            resume=bool(params["resume"]),
            verbose=int(params["verbose"]),
        )

    def record(self, n_features: int, plan: StreamPlan, weighted: bool) -> dict[str, Any]:
        """The settings a stream checkpoint is bound to (a resumed stream must match)."""
        schedule = self.schedule
        return {
            "n_features": int(n_features),
            "weighted": weighted,
            "n_components": int(self.n_components),
            "covariance_type": self.covariance_type,
            "reg_covar": float(self.reg_covar),
            "init_params": self.init_params,
            "learning_decay": float(schedule.learning_decay),
            "learning_offset": float(schedule.learning_offset),
            "forgetting_factor": None
            if schedule.forgetting_factor is None
            else float(schedule.forgetting_factor),
            "average_after": None if self.average_after is None else int(self.average_after),
            "window": plan.window,
            "n_passes": plan.n_passes,
            "shuffle": plan.shuffle,
            "seed": plan.seed,
        }


@dataclass(frozen=True)
class StreamOptions:
    """How one ``fit_stream`` call reads its source."""

    n_passes: int | None = None
    window: int | None = None
    shuffle: bool | None = None
    validation: Any = None
    report_every: int = 10
    callback: Callable[[StreamRecord], None] | None = None


# --------------------------------------------------------------------------- #
# one update                                                                  #
# --------------------------------------------------------------------------- #
def start_params(engine: Engine, settings: OnlineSettings) -> Params:
    """Params to start a stream from: the user's, or ``init_params`` on ``engine``'s rows."""
    return initial_params(
        engine,
        settings.init_params,
        settings.n_components,
        settings.covariance_type,
        settings.reg_covar,
        settings.draw_seed(),
        **settings.user_init(engine.n_features),
    )


def update(
    engine: Engine,
    state: StreamState | None,
    settings: OnlineSettings,
    fingerprint: bool = False,
) -> tuple[StreamState, int, DataFingerprint | None]:
    """One online-EM update with the rows of ``engine``.

    ``(new state, rows read, their fingerprint)``; with ``fingerprint`` the same
    pass fingerprints the rows (else ``None``). A stream without a state starts
    from :func:`start_params` on these rows.
    """
    if state is None:
        state = StreamState(start_params(engine, settings))
    rows_fingerprint = None
    if fingerprint:
        stats, rows_fingerprint = e_step_fingerprinted(engine, state.params)
    else:
        stats = e_step(engine, state.params)
    new = online_update(
        state, stats, settings.schedule, settings.reg_covar, average_after=settings.average_after
    )
    return new, int(stats.n_rows), rows_fingerprint


#: the disjoint samples of its rows the warm-up also runs EM on, each from a start of its own
WARMUP_SAMPLES = 3
#: ``warmup_rows="auto"``: the warm-up's rows per free parameter of the mixture (20 for
#: each of its samples)
WARMUP_ROWS_PER_PARAMETER = 20 * WARMUP_SAMPLES
#: ``warmup_rows="auto"`` reads at most this many bytes of float64 rows in its window
WARMUP_BYTES = 256 * 2**20


def warmup_size(settings: OnlineSettings, n_features: int, n_rows: int) -> int:
    """How many rows a stream over an array of ``n_rows`` rows begins with batch EM on.

    ``"auto"``: :data:`WARMUP_ROWS_PER_PARAMETER` rows per free parameter of the
    mixture, at most :data:`WARMUP_BYTES` of rows, at most the rows of the array.
    """
    wanted = settings.warmup_rows
    if wanted == "auto":
        parameters = n_parameters(settings.n_components, n_features, settings.covariance_type)
        wanted = min(WARMUP_ROWS_PER_PARAMETER * parameters, WARMUP_BYTES // (8 * n_features))
    return max(0, min(int(wanted), int(n_rows)))


def warm_up(
    engine: Engine,
    settings: OnlineSettings,
    n_batches: int,
    fingerprint: bool = False,
    samples: Callable[[], Sequence[Engine]] | None = None,
) -> tuple[StreamState, int, DataFingerprint | None]:
    """A stream's first update: batch EM on the rows of its first ``n_batches`` batches.

    EM runs from :func:`start_params` on these rows to ``settings.tol`` (at most
    ``settings.max_iter`` iterations). Which optimum EM reaches from a poor start
    turns on the sample the start is made on and EM runs on: from random rows as
    means, EM on a few thousand rows and on all 200,000 ended in different optima
    for 4 starts in 25. So with ``samples`` (engines over disjoint parts of these
    rows), EM also runs on each part from a start made on that part (the user's
    means, with weights and covariances from the part's rows; or ``init_params``
    on them), then on all the rows from where it ended; the end with the highest
    log-likelihood on all the rows is kept (the first, unless another beats it by
    more than ``settings.tol``). On the same 25 starts this left 1 ending worse
    than batch EM by more than 0.02 nats/row (and 10 better), against 4 (and 7).

    The state counts as ``n_batches`` updates, so that the next batch's step size
    is what it would have been after them. ``(state, rows, their fingerprint)`` as
    :func:`update`.
    """
    state, rows, rows_fingerprint = _em_state(
        engine, start_params(engine, settings), settings, fingerprint
    )
    for part in samples() if samples is not None else ():
        try:
            end = _em_state(part, start_params(part, settings), settings)[0].params
        except ValueError as error:
            # a third that cannot be fitted alone (its rows all weigh 0, fewer rows
            # than components for k-means, ...) is no candidate; the whole was fitted
            logger.debug(f"warm-up: a third of its rows gives no candidate ({error})")
            continue
        other = _em_state(engine, end, settings)[0]
        gain = other.history[-1].batch_log_likelihood - state.history[-1].batch_log_likelihood
        if gain > settings.tol:
            state = other
    record = replace(state.history[-1], n_steps=n_batches)
    state = replace(state, n_steps=n_batches, history=(record,))
    if settings.average_after is not None and n_batches > settings.average_after:
        state = replace(state, averaged=state.params, n_averaged=1)
    return state, rows, rows_fingerprint


def _em_state(
    engine: Engine, start: Params, settings: OnlineSettings, fingerprint: bool = False
) -> tuple[StreamState, int, DataFingerprint | None]:
    """EM on ``engine``'s rows from ``start`` (to ``settings.tol``, at least one and at
    most ``settings.max_iter`` iterations), each iteration an update with ``γ = 1``:
    the stream state of its last step, the rows, and (``fingerprint``) their
    fingerprint, taken in the first pass."""
    state = StreamState(start)
    rows_fingerprint = None
    previous = -math.inf
    for iteration in range(max(1, settings.max_iter)):
        if fingerprint and iteration == 0:
            stats, rows_fingerprint = e_step_fingerprinted(engine, state.params)
        else:
            stats = e_step(engine, state.params)
        state = online_update(StreamState(state.params), stats, EM_STEP, settings.reg_covar)
        mean = state.history[-1].batch_log_likelihood
        if abs(mean - previous) < settings.tol:
            break
        previous = mean
    return state, int(stats.n_rows), rows_fingerprint


def partial_update(
    engine: Engine, stream: Stream | None, fitted: Params | None, settings: OnlineSettings
) -> Stream:
    """``partial_fit``: one update of ``stream`` with ``engine``'s rows.

    A model without a stream starts one from its ``fitted`` Params, or, if it has
    none, from :func:`start_params` on these rows.
    """
    if stream is not None:
        state: StreamState | None = stream.state
    else:
        state = StreamState(fitted) if fitted is not None else None
    state, _, _ = update(engine, state, settings)
    return Stream(state) if stream is None else replace(stream, state=state)


# --------------------------------------------------------------------------- #
# a stream                                                                    #
# --------------------------------------------------------------------------- #
def fit_stream(
    source: Any,
    sample_weight: Any,
    settings: OnlineSettings,
    engine_for: EngineFor,
    options: StreamOptions,
    *,
    previous: Stream | None = None,
    random_state_given: bool = True,
) -> Stream | None:
    """Stream ``source`` (an array or an iterable of batches); the stream's end.

    ``previous`` is the stream to continue (``warm_start``); ``None`` is returned
    when it had nothing new to read. ``random_state_given=False`` lets a stream
    continued or resumed keep its stored shuffle seed.
    """
    # settings not given continue those of the stream being continued or resumed
    stored: dict[str, Any] = dict(previous.plan or {}) if previous is not None else {}
    checkpoint = settings.checkpoint
    if checkpoint is not None and settings.resume and Path(checkpoint).exists():
        record_before, _, _, _ = load_stream_checkpoint(checkpoint)
        stored.update({k: record_before.get(k) for k in STREAM_PLAN_KEYS})
    n_passes = stored.get("n_passes") or 1 if options.n_passes is None else options.n_passes
    shuffle = stored.get("shuffle", True) if options.shuffle is None else options.shuffle
    window = stored.get("window") if options.window is None else options.window
    if not random_state_given and stored.get("seed") is not None:
        seed = int(stored["seed"])
    else:
        seed = settings.draw_seed()
    check_count("n_passes", n_passes, 1)
    check_count("report_every", options.report_every, 1)
    check_count("window", window, 1, none_ok=True)
    with fit_progress(None, "update"):
        if is_batch_iterable(source):
            if sample_weight is not None:
                raise ValueError(
                    "sample_weight cannot be given with an iterable of batches; "
                    "make each batch a (X, sample_weight) pair instead."
                )
            return _BatchStream(source, settings, engine_for, options, previous).run(
                seed, n_passes=int(n_passes), shuffle=bool(shuffle)
            )
        return _ArrayStream(source, sample_weight, settings, engine_for, options, previous).run(
            seed,
            n_passes=int(n_passes),
            shuffle=bool(shuffle),
            window=None if window is None else int(window),
        )


class _Driver:
    """What both kinds of stream share: resuming, held-out rows, reporting."""

    def __init__(
        self,
        settings: OnlineSettings,
        engine_for: EngineFor,
        options: StreamOptions,
        previous: Stream | None,
    ) -> None:
        self.settings, self.engine_for, self.options = settings, engine_for, options
        self.previous = previous
        self.continuing = previous is not None
        self.started = time.perf_counter()
        self.rows_here = 0
        self._held_out: Engine | None = None

    def resume(
        self, record: dict[str, Any]
    ) -> tuple[StreamState, StreamPosition, dict[str, Any]] | None:
        """``(state, position, extra)`` of the checkpoint to resume, its settings checked."""
        checkpoint = self.settings.checkpoint
        if checkpoint is None or not self.settings.resume or not Path(checkpoint).exists():
            return None
        stored, state, position, extra = load_stream_checkpoint(checkpoint)
        check_checkpoint_settings(
            checkpoint,
            stored,
            record,
            "stream",
            "Start over without resuming (resume=False; on the command line, drop --resume), "
            "or use another checkpoint path.",
        )
        return state, position or StreamPosition(), extra

    def with_held_out(self, state: StreamState) -> StreamState:
        """``state`` with the held-out log-likelihood of its model Params (if rows were given)."""
        validation = self.options.validation
        if validation is None:
            return state
        if self._held_out is None:
            self._held_out = self.engine_for(validation, None, False)
        return with_validation(state, mean_log_likelihood_of(self._held_out, state.model_params))

    def report(self, state: StreamState) -> None:
        record = state.history[-1]
        seconds = time.perf_counter() - self.started
        if self.settings.verbose:
            rate = self.rows_here / seconds if seconds > 0 else math.inf
            held_out = (
                ""
                if record.validation_log_likelihood is None
                else f"\t held-out ll {record.validation_log_likelihood:.6f}"
            )
            logger.info(
                f"  Step {record.n_steps}\t rows {record.n_samples_seen:,}\t {rate:,.0f} rows/s"
                f"\t step {record.step_size:.4f}\t running ll {record.running_log_likelihood:.6f}"
                + held_out
            )
        if self.options.callback is not None:
            self.options.callback(record)

    def stepped(self, state: StreamState, n_read: int, due: bool) -> StreamState:
        """After an update: count its rows, tell the progress reporter, and when
        ``due`` record the held-out score and report."""
        self.rows_here += n_read
        current().step(state.n_steps, f"rows {state.n_samples_seen:,}")
        if due:
            state = self.with_held_out(state)
            self.report(state)
        return state


class _ArrayStream(_Driver):
    """A stream over an array's blocks, ``window`` blocks an update."""

    def __init__(
        self,
        source: Any,
        sample_weight: Any,
        settings: OnlineSettings,
        engine_for: EngineFor,
        options: StreamOptions,
        previous: Stream | None,
    ) -> None:
        super().__init__(settings, engine_for, options, previous)
        self.source_engine = engine_for(source, sample_weight, not self.continuing)
        self.weighted = sample_weight is not None

    def run(self, seed: int, *, n_passes: int, shuffle: bool, window: int | None) -> Stream | None:
        previous, settings, report_every = self.previous, self.settings, self.options.report_every
        source_engine = self.source_engine
        state = previous.state if previous is not None else None
        position = (previous.position if previous is not None else None) or StreamPosition()
        plan = StreamPlan.for_blocks(
            source_engine.block_rows,
            window=int(source_engine.parallel_blocks() if window is None else window),
            n_passes=n_passes,
            shuffle=shuffle,
            seed=seed,
        )
        record = settings.record(source_engine.n_features, plan, self.weighted)
        resumed = self.resume(record)
        if resumed is not None:
            state, position, carried = resumed
        else:
            carried = dict(previous.data or {}) if previous is not None else {}
        # a position counts the blocks of the run that wrote it: the rows already read
        # keep that run's blocks, whatever the blocks of the source are now
        plan = plan.with_blocks_read(_decode_stops(carried.get("block_stops")), position)
        data = None
        if settings.checkpoint is not None:
            # the checkpoint is bound to the values read so far (each row once, in the
            # first pass over its segment): a resumed stream reads those rows once more,
            # hash only, and refuses to go on if they changed, before writing anything
            data = DataCheck(
                settings.checkpoint,
                carried.get("data_fingerprint"),
                resuming=resumed is not None,
            )
            if resumed is not None:
                data.ensure(source_engine.window(plan.ranges_read(position)))
            elif not self.continuing:
                data.observe(DataFingerprint())  # nothing read yet
            else:
                # continued from this estimator's own stream, which recorded its rows (if
                # it had no checkpoint, nothing was recorded and the checkpoint says so)
                known = DataFingerprint.from_json(carried.get("data_fingerprint"))
                if known is not None:
                    data.observe(known)
        n_rows = source_engine.n_rows
        steps = plan.walk(position, n_rows)
        # a stream that starts begins with batch EM on its first rows (those of the
        # first batches that hold ``warmup_rows``): one update, one read-ahead window
        warmup = 0
        if state is None:
            warmup = warmup_size(settings, source_engine.n_features, n_rows - position.rows_done)
        for after, engine, ranges, n_batches in _read_ahead(source_engine, _grouped(steps, warmup)):
            first_pass = not position.in_segment or position.pass_index == 0
            track = data is not None and not data.pending and first_pass
            if state is None and warmup > 0:

                def samples(ranges: list[Range] = ranges) -> list[WindowedEngine]:
                    parts = np.array_split(np.arange(len(ranges)), WARMUP_SAMPLES)
                    return [source_engine.window([ranges[i] for i in part]) for part in parts]

                state, n_read, rows_fingerprint = warm_up(
                    engine,
                    settings,
                    n_batches,
                    track,
                    samples if len(ranges) >= WARMUP_SAMPLES else None,
                )
            else:
                state, n_read, rows_fingerprint = update(engine, state, settings, track)
            if data is not None and rows_fingerprint is not None:
                data.add(rows_fingerprint)
            position = after
            last = not after.in_segment and after.rows_done == n_rows
            state = self.stepped(state, n_read, state.n_steps % report_every == 0 or last)
            if data is not None:
                save_stream_checkpoint(
                    data.checkpoint,
                    record,
                    state,
                    position,
                    extra={**data.record(), **plan.blocks_read_record(position)},
                )
        if state is None:
            if self.continuing:
                return None  # nothing new to read: the model stays as it is
            raise ValueError("the stream source has no rows to read.")
        read = {**(data.record() if data is not None else {}), **plan.blocks_read_record(position)}
        return Stream(state, position, plan={k: record[k] for k in STREAM_PLAN_KEYS}, data=read)


class _BatchStream(_Driver):
    """A stream of batches (arrays or ``(X, sample_weight)`` pairs), one update each.

    A sequence (list, tuple) can be read in several passes and shuffled; an
    iterator is read once, in its own order. The position counts batches, so
    that a resumed stream skips those already folded in (the iterable must
    yield the same batches again).
    """

    def __init__(
        self,
        source: Any,
        settings: OnlineSettings,
        engine_for: EngineFor,
        options: StreamOptions,
        previous: Stream | None,
    ) -> None:
        super().__init__(settings, engine_for, options, previous)
        self.source = source

    def run(self, seed: int, *, n_passes: int, shuffle: bool) -> Stream | None:
        source, previous, settings = self.source, self.previous, self.settings
        report_every, continuing = self.options.report_every, self.continuing
        is_sequence = isinstance(source, Sequence)
        if n_passes > 1 and not is_sequence and iter(source) is source:
            raise ValueError(
                "n_passes > 1 needs a source that can be read again (a list of batches, a "
                "dask or Zarr array); an iterator is read once."
            )
        if shuffle and not is_sequence:
            shuffle = False  # an iterator streams in its own order
        state = previous.state if previous is not None else None
        position = (previous.position if previous is not None else None) or StreamPosition()
        record = settings.record(
            state.params.n_features if state is not None else -1,
            StreamPlan((), 1, n_passes, shuffle, seed),
            False,
        )
        record = {**record, "source": "batches"}
        record.pop("n_features")
        resumed = self.resume(record)
        if resumed is not None:
            state, position, _ = resumed
        if not continuing and resumed is None:
            position = StreamPosition()
        # bound to the values of the batches folded in (keyed by their place in the
        # source): checked on resume against the batches skipped, before any write
        data, seen, checking = None, DataFingerprint(), False
        if settings.checkpoint is not None:
            data = DataCheck(
                settings.checkpoint,
                resumed[2].get("data_fingerprint") if resumed else None,
                resuming=resumed is not None,
            )
            if resumed is not None and position.pass_index > 0:  # all of the first pass
                data.observe(sum((_batch_fingerprint(i, b) for i, b in enumerate(source)), seen))
            elif resumed is not None:
                checking = True  # summed over the batches skipped below
            elif not continuing:
                data.observe(seen)
        for pass_index in range(position.pass_index, n_passes):
            order: Any = source
            places: Any = itertools.count()
            if shuffle:
                rng = np.random.default_rng([seed, pass_index, 0x5EED])
                places = rng.permutation(len(source))
                order = [source[i] for i in places]
            skip = position.batch_index if pass_index == position.pass_index else 0
            # places: each batch's index in the source (a count when not shuffled)
            for index, (place, item) in enumerate(zip(places, order, strict=False)):
                if index < skip:
                    if checking:
                        seen += _batch_fingerprint(int(place), item)
                    continue
                if checking and data is not None:
                    data.observe(seen)
                    checking = False
                X, w = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
                where = f"batch {index}" + (f" of pass {pass_index}" if n_passes > 1 else "")
                try:
                    engine = self.engine_for(X, w, state is None and not continuing)
                    track = data is not None and not data.pending and pass_index == 0
                    state, n_read, rows_fingerprint = update(engine, state, settings, track)
                except ValueError as error:
                    raise ValueError(f"{where}: {error}") from error
                if data is not None and rows_fingerprint is not None:
                    data.add(_keyed_by_place(int(place), rows_fingerprint))
                position = StreamPosition(0, 0, 0, pass_index, index + 1)
                state = self.stepped(state, n_read, state.n_steps % report_every == 0)
                if data is not None:
                    save_stream_checkpoint(
                        data.checkpoint, record, state, position, extra=data.record()
                    )
            position = StreamPosition(0, 0, 0, pass_index + 1, 0)
        if checking and data is not None:
            data.observe(seen)
        if state is None:
            if continuing or resumed is not None:
                return None
            raise ValueError("the stream of batches is empty: there is nothing to fit.")
        if self.options.validation is not None and (
            not state.history or state.history[-1].validation_log_likelihood is None
        ):
            state = self.with_held_out(state)
            self.report(state)
        return Stream(
            state,
            None,
            plan={k: record[k] for k in STREAM_PLAN_KEYS},
            data=previous.data if previous is not None else None,
        )


# --------------------------------------------------------------------------- #
# helpers                                                                     #
# --------------------------------------------------------------------------- #
def _grouped(
    steps: Iterator[tuple[StreamPosition, list[Range]]], rows: int
) -> Iterator[tuple[StreamPosition, list[Range], int]]:
    """``steps`` with their batch counts, the first batches that hold ``rows`` rows
    (or all, if fewer) made one: ``(position after, row ranges, batches)``."""
    ranges: list[Range] = []
    count, held, after = 0, 0, None
    for step_after, step_ranges in steps:
        if held >= rows:
            yield step_after, step_ranges, 1
            continue
        ranges += step_ranges
        count += 1
        held += sum(stop - start for start, stop in step_ranges)
        after = step_after
        if held >= rows:
            yield after, ranges, count
    if after is not None and held < rows:
        yield after, ranges, count


def _read_ahead(
    source: WindowedEngine, steps: Iterator[tuple[StreamPosition, list[Range], int]]
) -> Iterator[tuple[StreamPosition, WindowedEngine, list[Range], int]]:
    """``(position after, the window's engine, its ranges, batches)`` for every step,
    the next window's rows read while this one is used
    (:meth:`WindowedEngine.window_ahead`: one window ahead, never more, so memory
    stays at two windows).

    Measured on a 2,000,000 × 16 Zarr store, K = 8, 2 cores (62 updates of two 16,384-row
    blocks, ``bench_stream.py --quick``): a pass took 1.25 s reading each window at its
    update (0.70 s for one batch iteration, 0.37 s for the read alone), each update
    waiting ~9 ms beyond its share of the arithmetic for its read, the compute's start
    and the M-step, one after the other; reading ahead, 0.82 s (a batch iteration
    0.81 s in the same run).
    """
    pending = None
    for after, ranges, count in steps:
        upcoming = source.window_ahead(ranges)
        if pending is not None:
            yield pending[0], pending[1].result(), pending[2], pending[3]
        pending = (after, upcoming, ranges, count)
    if pending is not None:
        yield pending[0], pending[1].result(), pending[2], pending[3]


def _keyed_by_place(place: int, rows: DataFingerprint) -> DataFingerprint:
    """A batch's fingerprint (rows numbered from 0) made specific to its ``place`` in
    the source, so that the same batch elsewhere in the stream counts differently."""
    odd = int(block_fingerprint(np.array([[float(place)]])).value) | 1
    return DataFingerprint((rows.value * odd + place) % 2**64, rows.n_rows)


def _batch_fingerprint(place: int, item: Any) -> DataFingerprint:
    """The fingerprint of a batch of an iterable at ``place`` in the source, read anew
    (a resumed stream checks the batches it skips)."""
    X, w = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    # arrays of any namespace are read by the fingerprint itself (a CuPy batch has
    # no NumPy conversion); nested lists become arrays first
    rows = X if array_api_compat.is_array_api_obj(X) else np.asarray(X, dtype=np.float64)
    if w is not None and not array_api_compat.is_array_api_obj(w):
        w = np.asarray(w, dtype=np.float64)
    return _keyed_by_place(place, block_fingerprint(rows, w))


def _decode_stops(record: Any) -> tuple[int, ...] | None:
    """Block stops from their run-length record ``[[rows, count], ...]`` (or ``None``)."""
    if not isinstance(record, list):
        return None
    lengths = [int(rows) for rows, count in record for _ in range(int(count))]
    return tuple(int(s) for s in np.cumsum(lengths)) if lengths else ()


def is_batch_iterable(source: Any) -> bool:
    """An iterable of batches (not an array, a Zarr source or a nested list of numbers)."""
    if is_zarr_source(source) or hasattr(source, "shape") or isinstance(source, (str, bytes)):
        return False
    if isinstance(source, (list, tuple)):
        # batches are 2-D arrays or (2-D array, weights) pairs; a list of 1-D rows is an array
        return len(source) > 0 and all(
            getattr(item, "ndim", 0) == 2
            or (isinstance(item, tuple) and len(item) == 2 and getattr(item[0], "ndim", 0) == 2)
            for item in source
        )
    return hasattr(source, "__iter__")
