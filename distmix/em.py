"""The EM loop over any engine: E-step pass → M-step, until the log-likelihood settles.

Each iteration is exactly one pass over the rows (one ``engine.reduce("estep", params)``,
hence one Dask compute): the E-step's SuffStats carry the log-likelihood, the
row count and the non-finite-row check along with the moments.

Convergence is scikit-learn's: the iteration stops when the mean
log-likelihood per sample (weighted by ``sample_weight``) changes by less than
``tol``. As in scikit-learn, ``lower_bound`` is the log-likelihood of the
E-step of the last iteration, i.e. of the Params *before* its M-step.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distmix import progress
from distmix.engines.base import Engine
from distmix.fingerprint import DataChangedError, DataFingerprint
from distmix.init import initial_params
from distmix.mstep import m_step
from distmix.nonfinite import raise_if_nonfinite
from distmix.params import Params
from distmix.persist import (
    Checkpoint,
    RunState,
    check_checkpoint_settings,
    load_checkpoint,
    save_checkpoint,
)
from distmix.progress import logger
from distmix.suffstats import SuffStats


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


def mean_log_likelihood_of(engine: Engine, params: Params) -> float:
    """Mean log-likelihood per (weighted) row, in one pass; raises on non-finite rows."""
    total = engine.reduce("log_likelihood", params)
    total.nonfinite.raise_if_any()
    return total.log_lik / total.weight


def e_step(engine: Engine, params: Params) -> SuffStats:
    """One pass: total SuffStats of all rows under ``params`` (validated finite)."""
    stats = engine.reduce("estep", params).to_host()
    raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
    return stats


def e_step_fingerprinted(engine: Engine, params: Params) -> tuple[SuffStats, DataFingerprint]:
    """:func:`e_step` that also fingerprints the values it reads, in the same pass."""
    total = engine.reduce("estep_fingerprint", params).to_host()
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
            self.observe(engine.reduce("fingerprint"))

    def record(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` entry for the fingerprint (empty while pending)."""
        return {} if self.value is None else {"data_fingerprint": self.value.to_json()}


def mean_log_likelihood(stats: SuffStats) -> float:
    return float(stats.log_lik) / stats.weight_sum


def _em_step(
    stats: SuffStats,
    params: Params,
    previous: float,
    past: list[float],
    n_iter: int,
    seconds: float,
    *,
    tol: float,
    reg_covar: float,
) -> IterationInfo:
    """One iteration's M-step and convergence test from its E-step ``stats`` (``past``
    gets the iteration's lower bound): what :func:`run_em` and
    :func:`run_em_together` do for every run."""
    lower_bound = mean_log_likelihood(stats)
    params = m_step(stats, reg_covar, previous=params)
    past.append(lower_bound)
    change = lower_bound - previous
    return IterationInfo(
        n_iter,
        lower_bound,
        change,
        seconds,
        int(stats.n_rows),
        params,
        tuple(past),
        abs(change) < tol,
    )


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
        info = _em_step(
            stats,
            params,
            previous,
            past,
            n_iter,
            time.perf_counter() - start,
            tol=tol,
            reg_covar=reg_covar,
        )
        params, lower_bound, converged = info.params, info.lower_bound, info.converged
        if callback is not None:
            callback(info)
        if converged:
            break
    return EMResult(params, lower_bound, tuple(past), n_iter, converged)


def run_em_together(
    engine: Engine,
    starts: Sequence[Params],
    *,
    tol: float,
    max_iter: int,
    reg_covar: float,
    callback: Callable[[int, IterationInfo], None] | None = None,
) -> list[EMResult]:
    """EM from every one of ``starts`` side by side: each iteration is one pass over the
    rows for all the runs still going (``engine.reduce("estep_many", ...)``: every
    block read once, every model's E-step on it), and each run has its own M-step,
    convergence test and history, exactly as :func:`run_em` from that start alone
    gives them (bit for bit: every model's statistics are computed and summed as the
    block task ``estep`` computes and sums them). A run that converged stops costing
    work. ``callback(run, info)`` hears every run's iterations."""
    params = list(starts)
    lower = [-math.inf] * len(params)
    past: list[list[float]] = [[] for _ in params]
    converged = [False] * len(params)
    for n_iter in range(1, max_iter + 1):
        active = [i for i, done in enumerate(converged) if not done]
        if not active:
            break
        began = time.perf_counter()
        if len(active) == 1:
            results = [e_step(engine, params[active[0]])]
        else:
            bundle = engine.reduce("estep_many", tuple(params[i] for i in active)).to_host()
            results = list(bundle.members)
            raise_if_nonfinite(results[0].n_nonfinite, results[0].first_nonfinite)
        seconds = (time.perf_counter() - began) / len(active)
        for i, stats in zip(active, results, strict=True):
            info = _em_step(
                stats, params[i], lower[i], past[i], n_iter, seconds, tol=tol, reg_covar=reg_covar
            )
            params[i], lower[i], converged[i] = info.params, info.lower_bound, info.converged
            if callback is not None:
                callback(i, info)
    return [
        EMResult(params[i], lower[i], tuple(past[i]), len(past[i]), converged[i])
        for i in range(len(params))
    ]


# --------------------------------------------------------------------------- #
# a whole fit: n_init runs, the best kept, checkpointed and resumable         #
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class FitSettings:
    """What a batch fit does (the estimator's parameters, validated).

    ``random_state`` is the integer seed when one was given (recorded in a
    checkpoint, which must agree on it), else ``None``.
    """

    n_components: int
    covariance_type: str
    tol: float
    reg_covar: float
    max_iter: int
    n_init: int
    init_params: str
    random_state: int | None = None
    verbose: int = 0
    verbose_interval: int = 10

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> FitSettings:
        """From an estimator's ``get_params()`` (checked already)."""
        seed = params["random_state"]
        return cls(
            n_components=int(params["n_components"]),
            covariance_type=params["covariance_type"],
            tol=float(params["tol"]),
            reg_covar=float(params["reg_covar"]),
            max_iter=int(params["max_iter"]),
            n_init=int(params["n_init"]),
            init_params=params["init_params"],
            random_state=int(seed) if isinstance(seed, numbers.Integral) else None,
            verbose=int(params["verbose"]),
            verbose_interval=int(params["verbose_interval"]),
        )

    def checkpoint_key(self, engine: Engine, weighted: bool) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed by this fit."""
        return {
            "n_rows": engine.n_rows,
            "n_features": engine.n_features,
            "weighted": weighted,
            "n_components": int(self.n_components),
            "covariance_type": self.covariance_type,
            "tol": float(self.tol),
            "reg_covar": float(self.reg_covar),
            "n_init": int(self.n_init),
            "max_iter": int(self.max_iter),
            "init_params": self.init_params,
            "random_state": self.random_state,
        }


@dataclass(frozen=True)
class FitResult:
    """The best run of a fit and its final lower bound."""

    best: RunState
    lower_bound: float


def fit_em(
    engine: Engine,
    settings: FitSettings,
    *,
    seeds: Sequence[int],
    user_init: dict[str, Any] | None = None,
    start: tuple[Params, float] | None = None,
    weighted: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> FitResult:
    """``len(seeds)`` EM runs over ``engine`` (one per seed), the best kept.

    Each run starts from :func:`~distmix.init.initial_params` with its seed and
    ``user_init`` (validated ``weights_init``/``means_init``/``precisions_init``),
    or, given ``start = (params, lower_bound)`` (a warm start), from there.

    With ``checkpoint``, the state is written atomically after every iteration
    and every run; with ``resume`` and an existing checkpoint of the same
    settings and data shape (:meth:`FitSettings.checkpoint_key`), the fit
    continues where it stopped and gives exactly the parameters of an
    uninterrupted one. A checkpoint is bound to the values of its data: they
    are fingerprinted in the first pass of a new fit and checked against the
    first pass of a resumed one, before anything is written.
    """
    key = settings.checkpoint_key(engine, weighted)
    resumed = _resumed_checkpoint(checkpoint, key) if resume else None
    data = (
        None
        if checkpoint is None
        else DataCheck(
            checkpoint,
            resumed.extra.get("data_fingerprint") if resumed else None,
            resuming=resumed is not None,
        )
    )
    fit = _BatchFit(engine, settings, tuple(seeds), user_init or {}, start, key, resumed, data)
    if checkpoint is None and start is None and len(seeds) > 1:
        with progress.fit_progress(settings.max_iter * len(seeds)):
            fit.run_together()
        assert fit.best is not None
        return FitResult(fit.best, fit.best_lb)
    first = resumed.init_index if resumed else 0
    if resumed is not None and resumed.finished:
        first = len(seeds)  # the checkpointed fit had finished: nothing left to run
    with progress.fit_progress(settings.max_iter * len(seeds)) as reporter:
        for init in range(first, len(seeds)):
            fit.run(init)
            reporter.step((init + 1) * settings.max_iter, f"run {init + 1}/{len(seeds)} done")
    if data is not None:
        data.ensure(engine)  # a finished fit resumed: checked before it is returned
    assert fit.best is not None
    return FitResult(fit.best, fit.best_lb)


@dataclass
class _BatchFit:
    """The state :func:`fit_em` carries from run to run: the best run so far."""

    engine: Engine
    settings: FitSettings
    seeds: tuple[int, ...]
    user_init: dict[str, Any]
    start: tuple[Params, float] | None
    key: dict[str, Any]
    resumed: Checkpoint | None
    data: DataCheck | None
    best: RunState | None = None
    best_lb: float = -math.inf

    def __post_init__(self) -> None:
        if self.resumed is not None:
            self.best, self.best_lb = self.resumed.best, self.resumed.best_lower_bound

    def run(self, init: int) -> None:
        """Run ``init`` (from its start, or from the resumed checkpoint's state)."""
        settings, data, resumed = self.settings, self.data, self.resumed
        started = time.perf_counter()
        if settings.verbose:
            logger.info(f"Initialization {init}")
        carried = resumed.current if resumed and init == resumed.init_index else None
        lower_bound = -math.inf
        history: tuple[float, ...] = ()
        if carried is not None:
            params, history = carried.params, carried.lower_bounds
        elif self.start is None:
            params = self._start(init)
        else:
            params, lower_bound = self.start
        if carried is not None and carried.converged:
            result = EMResult(params, history[-1], history, len(history), True)
        else:
            result = run_em(
                self.engine,
                params,
                tol=settings.tol,
                max_iter=settings.max_iter,
                reg_covar=settings.reg_covar,
                lower_bound=lower_bound,
                history=history,
                callback=self._after_iteration(init),
                check_data=data.observe if data is not None and data.pending else None,
            )
        self._keep(result, started)
        if data is not None:
            data.ensure(self.engine)  # a run that made no pass (resumed when converged)
            save_checkpoint(
                data.checkpoint,
                Checkpoint(
                    self.key,
                    init + 1,
                    None,
                    self.best,
                    self.best_lb,
                    finished=init == len(self.seeds) - 1,
                    extra=data.record(),
                ),
            )

    def run_together(self) -> None:
        """Every run side by side (:func:`run_em_together`): their starts one after
        another, then one pass per iteration for all; the best kept as :meth:`run`
        keeps it (the first of the highest lower bounds)."""
        settings = self.settings
        started = time.perf_counter()
        starts = []
        for init in range(len(self.seeds)):
            if settings.verbose:
                logger.info(f"Initialization {init}")
            starts.append(self._start(init))
        callbacks = [self._after_iteration(init) for init in range(len(self.seeds))]
        results = run_em_together(
            self.engine,
            starts,
            tol=settings.tol,
            max_iter=settings.max_iter,
            reg_covar=settings.reg_covar,
            callback=lambda run, info: callbacks[run](info),
        )
        for result in results:
            self._keep(result, started)

    def _start(self, init: int) -> Params:
        """Run ``init``'s start, from its seed (and the user's ``*_init``)."""
        settings = self.settings
        return initial_params(
            self.engine,
            settings.init_params,
            settings.n_components,
            settings.covariance_type,
            settings.reg_covar,
            self.seeds[init],
            **self.user_init,
        )

    def _keep(self, result: EMResult, started: float) -> None:
        """Say how a run ended (verbose) and keep it if it is the best so far (the first
        of the highest lower bounds)."""
        if self.settings.verbose:
            status = "converged" if result.converged else "did not converge"
            logger.info(
                f"Initialization {status}. time lapse {time.perf_counter() - started:.5f}s"
                f"\t lower bound {result.lower_bound:.5f}"
            )
        if self.best is None or result.lower_bound > self.best_lb:
            self.best = RunState(result.params, result.lower_bounds, result.converged)
            self.best_lb = result.lower_bound

    def _after_iteration(self, init: int) -> Callable[[IterationInfo], None]:
        """The callback of run ``init``: checkpoint, progress, then the verbose line."""
        settings, data = self.settings, self.data
        best, best_lb = self.best, self.best_lb  # as they were when the run started
        reporter = progress.current()

        def after_iteration(info: IterationInfo) -> None:
            if data is not None:
                save_checkpoint(
                    data.checkpoint,
                    Checkpoint(
                        self.key,
                        init,
                        RunState(info.params, info.lower_bounds, info.converged),
                        best,
                        best_lb,
                        extra=data.record(),
                    ),
                )
            reporter.step(
                init * settings.max_iter + info.n_iter,
                f"run {init + 1}/{len(self.seeds)} iteration {info.n_iter} "
                f"ll {info.lower_bound:.6f}",
            )
            if settings.verbose and info.n_iter % settings.verbose_interval == 0:
                if settings.verbose == 1:
                    logger.info(f"  Iteration {info.n_iter}")
                else:
                    rate = info.n_rows / info.seconds if info.seconds > 0 else math.inf
                    logger.info(
                        f"  Iteration {info.n_iter}\t time lapse {info.seconds:.5f}s"
                        f"\t ll change {info.change:.5f}\t ll {info.lower_bound:.6f}"
                        f"\t {rate:,.0f} rows/s"
                    )

        return after_iteration


def _resumed_checkpoint(
    checkpoint: str | os.PathLike[str] | None, key: dict[str, Any]
) -> Checkpoint | None:
    """The checkpoint to resume (``None`` when there is none yet), its settings checked."""
    if checkpoint is None or not Path(checkpoint).exists():
        return None
    state = load_checkpoint(checkpoint)
    check_checkpoint_settings(
        checkpoint,
        state.fingerprint,
        key,
        "fit",
        "Fit with resume=False to start over, or use another checkpoint path.",
    )
    return state
