"""``distmix.GaussianMixture``: a scikit-learn estimator over every engine.

A leaf: it turns its input into an engine (NumPy → in-process blocks, dask or
Zarr → one Dask task per block), runs :mod:`distmix.init` and
:mod:`distmix.em`, and stores the result under scikit-learn's attribute names.
Nothing in distmix imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from distmix import estep
from distmix._typing import INIT_PARAMS, check_covariance_type
from distmix.chunks import (
    as_dask_rows,
    check_block_size,
    check_dtype,
    check_shape,
    default_block_rows,
    is_dask_array,
    is_zarr_source,
    open_dataset,
    raise_if_nonfinite,
)
from distmix.em import (
    DataCheck,
    EMResult,
    IterationInfo,
    e_step_fingerprinted,
    mean_log_likelihood_of,
    rowwise_in_pieces,
    run_em,
)
from distmix.engines import DaskEngine, LocalEngine
from distmix.engines.stream import (
    StepSchedule,
    StreamPlan,
    StreamPosition,
    StreamRecord,
    StreamState,
    batch_stats,
    online_update,
    window_engine,
    with_validation,
)
from distmix.fingerprint import DataFingerprint, block_fingerprint
from distmix.init import initial_params
from distmix.params import (
    Params,
    check_weights,
    covariance_shape,
    precision_cholesky_from_precisions,
)
from distmix.persist import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    MODEL_FORMAT,
    STREAM_CHECKPOINT_FORMAT,
    Checkpoint,
    ModelFileError,
    RunState,
    check_file_target,
    load_checkpoint,
    load_stream_checkpoint,
    params_arrays,
    params_from_arrays,
    read_archive,
    save_checkpoint,
    save_stream_checkpoint,
    stream_arrays,
    stream_from_arrays,
    write_archive,
)
from distmix.reduce import check_split_every


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM over row blocks, in memory or on Dask.

    The constructor takes scikit-learn's ``GaussianMixture`` parameters, with
    the same meaning and defaults, plus ``block_size`` and ``split_every``.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Stop when the mean log-likelihood per sample changes by less than this.
    reg_covar : float, default=1e-6
        Added to the covariances' diagonals.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the one with the highest likelihood is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        ``"kmeans"`` runs scalable k-means‖ seeding (Bahmani et al. 2012) and
        Lloyd passes over the blocks; ``"k-means++"`` uses the seeds as means.
        Both depend only on the rows and ``random_state``, not on the blocks.
    weights_init, means_init, precisions_init : array-like, optional
        User-given initial parameters (shapes as in scikit-learn).
    random_state : int, RandomState or None
    warm_start : bool, default=False
    verbose : int, default=0
    verbose_interval : int, default=10
    block_size : int, tuple of int or None, default=None
        Rows per block for in-memory input (``None``: sized so that each
        block's ``(K, rows, D)`` temporaries take about 4 MiB), or the length of
        every block. For dask input, rechunk the rows to this size (``None``:
        keep the input's chunks).
    split_every : int, default=8
        Fan-in of the reduction tree that adds the blocks' statistics.
    checkpoint : path, optional
        Write the state of the fit here after every iteration (atomically: a
        crash leaves the previous iteration's file, never a partial one).
    resume : bool, default=False
        If ``checkpoint`` exists, continue the fit it records (it must come from
        the same settings and data shape) instead of starting over; a finished
        checkpoint gives its result without any pass over the data. Resuming
        gives exactly the parameters of an uninterrupted fit.
    persist : {"auto", True, False}, default="auto"
        For dask and Zarr input: read the blocks once and keep them in the
        workers' memory for every pass (True), read them from storage on every
        pass, one block at a time per worker (False: memory stays bounded by a
        few blocks whatever the number of rows), or persist when the data take
        at most ``persist_fraction`` of the workers' memory ("auto").
    persist_fraction : float, default=0.5
    learning_decay : float in (0.5, 1], default=0.6
        Streaming (``partial_fit``, :func:`fit_stream`): κ of the step size
        ``γ_t = (t + learning_offset)^(−κ)`` with which the statistics of the
        ``t``-th batch enter the running average (stepwise online EM).
    learning_offset : float >= 0, default=1.0
        Streaming: t0 of the step size; 0 makes the first update ``γ = 1``.
    forgetting_factor : float in (0, 1] or None, default=None
        Streaming: a floor on the step size, so that old batches keep being
        forgotten at that rate (for streams whose distribution drifts).
    average_after : int or None, default=None
        Streaming: expose the Polyak–Ruppert average of the parameters of the
        updates after this many (``None``: the latest parameters).

    Attributes
    ----------
    weights_ : (K,)
    means_ : (K, D)
    covariances_, precisions_, precisions_cholesky_ : shapes per covariance type
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood per sample at the last E-step of the best run.
    lower_bounds_ : list of float
        Its value at every iteration of the best run.
    n_features_in_ : int
    n_steps_ : int
        Streaming only: online-EM updates made (one per batch).
    n_samples_seen_ : int
        Streaming only: rows read by those updates (every pass counts).
    stream_history_ : list of dict
        Streaming only: per update (the newest 10,000), rows seen, step size,
        the batch's mean log-likelihood before the update, the running average,
        and the held-out log-likelihood where one was computed.
    """

    lower_bound_: float

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        block_size: int | tuple[int, ...] | None = None,
        split_every: int = 8,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: bool = False,
        persist: bool | str = "auto",
        persist_fraction: float = 0.5,
        learning_decay: float = 0.6,
        learning_offset: float = 1.0,
        forgetting_factor: float | None = None,
        average_after: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.block_size = block_size
        self.split_every = split_every
        self.checkpoint = checkpoint
        self.resume = resume
        self.persist = persist
        self.persist_fraction = persist_fraction
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.forgetting_factor = forgetting_factor
        self.average_after = average_after

    # -- validation ---------------------------------------------------------
    def _check_parameters(self) -> None:
        def positive_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, np.integer))
                or value < minimum
            ):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")

        positive_int("n_components", 1)
        positive_int("max_iter", 0)
        positive_int("n_init", 1)
        positive_int("verbose_interval", 1)
        check_covariance_type(self.covariance_type)
        for name in ("tol", "reg_covar"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float, np.number))
                or not value >= 0
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.init_params not in INIT_PARAMS:
            raise ValueError(
                f"init_params={self.init_params!r} is not one of "
                f"{', '.join(repr(i) for i in INIT_PARAMS)}."
            )
        check_split_every(self.split_every)
        if not (isinstance(self.persist, bool) or self.persist == "auto"):
            raise ValueError(f"persist must be 'auto', True or False, got {self.persist!r}.")
        fraction = self.persist_fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, (int, float))
            or not 0 < fraction <= 1
        ):
            raise ValueError(f"persist_fraction must be a number in (0, 1], got {fraction!r}.")
        self._schedule()
        after = self.average_after
        if after is not None and (
            isinstance(after, bool) or not isinstance(after, (int, np.integer)) or after < 0
        ):
            raise ValueError(f"average_after must be None or an integer >= 0, got {after!r}.")

    def _schedule(self) -> StepSchedule:
        return StepSchedule(self.learning_decay, self.learning_offset, self.forgetting_factor)

    def _check_initial_parameters(self, n_features: int) -> dict[str, Any]:
        k, cov = self.n_components, self.covariance_type
        out: dict[str, Any] = {}
        if self.weights_init is not None:
            out["weights_init"] = check_weights(self.weights_init, k)
        if self.means_init is not None:
            means = np.asarray(self.means_init, dtype=np.float64)
            if means.shape != (k, n_features):
                raise ValueError(
                    f"means_init must have shape (n_components, n_features) = ({k}, {n_features}), "
                    f"got {means.shape}."
                )
            if not np.all(np.isfinite(means)):
                raise ValueError("means_init contains NaN or infinity.")
            out["means_init"] = means
        if self.precisions_init is not None:
            prec = np.asarray(self.precisions_init, dtype=np.float64)
            shape = covariance_shape(cov, k, n_features)
            if prec.shape != shape:
                raise ValueError(
                    f"precisions_init for covariance_type={cov!r} must have shape {shape}, "
                    f"got {prec.shape}."
                )
            precision_cholesky_from_precisions(prec, cov)  # raises if not positive-definite
            out["precisions_init"] = prec
        return out

    def _engine(
        self, X: Any, sample_weight: Any = None, *, reset: bool, many_passes: bool | None = None
    ) -> LocalEngine | DaskEngine:
        """Validate ``X`` (and weights) and wrap it in the engine that suits it.

        ``many_passes`` (default: ``reset``) lets dask input be persisted.
        """
        k = self.n_components if reset else None
        many_passes = reset if many_passes is None else many_passes
        reblock: Callable[[int], Any] | None = None
        if is_zarr_source(X):
            # a zarr.Array, path or URL: open_dataset validates it and reads whole chunks
            source, X = X, open_dataset(X)
            # blocks of our choosing shrink if the workers need it, for a fit; a stream's
            # position counts its blocks, so a stream keeps the same blocks run after run
            if self.block_size is None and many_passes:
                float_rows = X.dtype.kind == "f"

                def reblock(rows: int) -> Any:
                    smaller = open_dataset(source, block_rows=rows)
                    return smaller if float_rows else smaller.astype(np.float64)

            else:
                block = check_block_size(self.block_size, int(X.shape[0]))
                X = open_dataset(source, block_rows=block)
            check_shape(tuple(X.shape), k)
        elif is_dask_array(X):
            check_dtype(X.dtype)
            check_shape(tuple(X.shape), k)
            X = as_dask_rows(X, check_block_size(self.block_size, int(X.shape[0])))
        if is_dask_array(X):
            self._check_n_features(X.shape[1], reset=reset)
            if X.dtype.kind not in "f":
                X = X.astype(np.float64)
            w = None if sample_weight is None else _dask_sample_weight(sample_weight, X)
            # only a fit makes several passes: predictions read the blocks once
            return DaskEngine(
                X,
                w,
                split_every=self.split_every,
                persist=self.persist if many_passes else False,
                persist_fraction=self.persist_fraction,
                n_components=self.n_components,
                covariance_type=self.covariance_type,
                reblock=reblock,
                check_memory=True if reset or many_passes else "cached",
            )
        if hasattr(X, "dtype") and getattr(X.dtype, "kind", "f") not in "biufcO":
            check_dtype(X.dtype)
        if len(getattr(X, "shape", ())) > 2:  # scikit-learn's message only says "dim <= 2"
            check_shape(tuple(X.shape), k)
        X = validate_data(
            self,
            X,
            dtype=[np.float64, np.float32],
            ensure_all_finite=False,
            ensure_min_samples=2 if reset else 1,
            reset=reset,
        )
        check_shape(X.shape, k)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        block = check_block_size(self.block_size, X.shape[0])
        if block is None:
            block = default_block_rows(self.n_components, X.shape[1])
        if isinstance(block, int):
            block = min(block, X.shape[0])
        return LocalEngine(X, sample_weight, block, self.split_every)

    def _check_n_features(self, n_features: int, *, reset: bool) -> None:
        if reset:
            self.n_features_in_ = n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif n_features != self.n_features_in_:
            raise ValueError(
                f"X has {n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )

    # -- fitting ------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """Estimate the parameters by EM (``n_init`` runs, the best kept).

        Parameters
        ----------
        X : array-like, dask array, Zarr array, or the path/URL of a Zarr array
        Shape (n_samples, n_features).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights: an integer weight counts as that many
            copies of the row, and weight 0 drops it.

        Returns
        -------
        self
        """
        with self._unchanged_on_error():
            self._fit(X, sample_weight)
        return self

    @contextlib.contextmanager
    def _unchanged_on_error(self) -> Iterator[None]:
        """A call that raises leaves the estimator exactly as it was (every attribute)."""
        saved = dict(self.__dict__)
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then the most probable component of every row (lazy for dask input)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _fit(self, X: Any, sample_weight: Any) -> None:
        self._check_parameters()
        if self.checkpoint is not None:  # before any pass: a path it can write, no model there
            check_file_target(
                self.checkpoint, what="checkpoint", kinds=(CHECKPOINT_FORMAT,), replace=True
            )
        fitted_before = hasattr(self, "converged_")
        engine = self._engine(X, sample_weight, reset=True)
        user_init = self._check_initial_parameters(engine.n_features)
        do_init = not (self.warm_start and fitted_before)
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        seeds = [int(random_state.randint(np.iinfo(np.int32).max)) for _ in range(n_init)]

        fingerprint = self._fingerprint(engine, sample_weight is not None)
        resumed = self._resume_state(fingerprint)
        best = resumed.best if resumed else None
        best_lb = resumed.best_lower_bound if resumed else -math.inf
        first = resumed.init_index if resumed else 0
        if resumed is not None and resumed.finished:
            first = n_init  # the checkpointed fit had finished: nothing left to run
        # a checkpoint is bound to the values of its data: fingerprinted in the first
        # pass of a new fit, checked against the first pass of a resumed one
        data = (
            None
            if self.checkpoint is None
            else DataCheck(
                self.checkpoint,
                resumed.extra.get("data_fingerprint") if resumed else None,
                resuming=resumed is not None,
            )
        )

        for init in range(first, n_init):
            start = time.perf_counter()
            if self.verbose:
                print(f"Initialization {init}")
            carried = resumed.current if resumed and init == resumed.init_index else None
            lower_bound = -math.inf
            history: tuple[float, ...] = ()
            if carried is not None:
                params, history = carried.params, carried.lower_bounds
            elif do_init:
                params = initial_params(
                    engine,
                    self.init_params,
                    self.n_components,
                    self.covariance_type,
                    self.reg_covar,
                    seeds[init],
                    **user_init,
                )
            else:
                params, lower_bound = self._params(), float(self.lower_bound_)
            if carried is not None and carried.converged:
                result = EMResult(params, history[-1], history, len(history), True)
            else:
                result = run_em(
                    engine,
                    params,
                    tol=self.tol,
                    max_iter=self.max_iter,
                    reg_covar=self.reg_covar,
                    lower_bound=lower_bound,
                    history=history,
                    callback=self._iteration_callback(
                        start, fingerprint, init, best, best_lb, data
                    ),
                    check_data=data.observe if data is not None and data.pending else None,
                )
            if self.verbose:
                status = "converged" if result.converged else "did not converge"
                print(
                    f"Initialization {status}. time lapse {time.perf_counter() - start:.5f}s"
                    f"\t lower bound {result.lower_bound:.5f}"
                )
            if best is None or result.lower_bound > best_lb:
                best = RunState(result.params, result.lower_bounds, result.converged)
                best_lb = result.lower_bound
            if data is not None:
                data.ensure(engine)  # a run that made no pass (resumed when converged)
                save_checkpoint(
                    data.checkpoint,
                    Checkpoint(
                        fingerprint,
                        init + 1,
                        None,
                        best,
                        best_lb,
                        finished=init == n_init - 1,
                        extra=data.record(),
                    ),
                )
        if data is not None:
            data.ensure(engine)  # a finished fit resumed: checked before it is returned
        assert best is not None
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        # every attribute is assigned only now, after the whole fit succeeded
        self._set_params(best.params)
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best_lb if best.n_iter else -math.inf
        self.lower_bounds_ = list(best.lower_bounds)
        self._forget_stream()

    # -- streaming ----------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> GaussianMixture:
        """One stepwise online-EM update with the batch ``X``.

        The first call starts from the fitted parameters of a model that was
        fitted or loaded, else from ``weights_init``/``means_init``/
        ``precisions_init`` when all three are given, else from ``init_params``
        run on this batch; every call then folds the batch's statistics into the
        running average with step ``γ_t = (t + learning_offset)^(−learning_decay)``
        and runs the M-step. With ``γ = 1`` this is exactly one EM iteration on
        the batch.

        Parameters
        ----------
        X : array-like, dask array, Zarr array, or the path/URL of a Zarr array
            One batch, shape (n_batch, n_features); a dask or Zarr batch is
            reduced over its blocks in one pass.
        y : ignored
        sample_weight : array-like of shape (n_batch,), optional

        Returns
        -------
        self
        """
        with self._unchanged_on_error():  # a bad batch leaves the model as it was
            self._partial_fit(X, sample_weight)
        return self

    def _partial_fit(self, X: Any, sample_weight: Any) -> None:
        self._check_parameters()
        state: StreamState | None = getattr(self, "_stream_state", None)
        fitted = hasattr(self, "precisions_cholesky_")
        engine = self._engine(X, sample_weight, reset=not fitted, many_passes=False)
        if state is None and fitted:
            state = StreamState(self._params())
        state, _, _ = self._stream_step(engine, state)
        self._set_stream(state, getattr(self, "_stream_position", None))

    def _stream_step(
        self,
        engine: LocalEngine | DaskEngine,
        state: StreamState | None,
        fingerprint: bool = False,
    ) -> tuple[StreamState, int, DataFingerprint | None]:
        """One online-EM update with the rows of ``engine``.

        ``(new state, rows read, their fingerprint)``; with ``fingerprint`` the
        same pass fingerprints the rows (else ``None``). A stream without a state
        starts from ``_start_params`` on these rows.
        """
        if state is None:
            state = StreamState(self._start_params(engine))
        rows_fingerprint = None
        if fingerprint:
            stats, rows_fingerprint = e_step_fingerprinted(engine, state.params)
        else:
            stats = batch_stats(engine, state.params)
        new = online_update(
            state, stats, self._schedule(), self.reg_covar, average_after=self.average_after
        )
        return new, int(stats.n_rows), rows_fingerprint

    def _start_params(self, engine: LocalEngine | DaskEngine) -> Params:
        """Params to start a stream from: the user's, or ``init_params`` on ``engine``'s rows."""
        user_init = self._check_initial_parameters(engine.n_features)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        return initial_params(
            engine,
            self.init_params,
            self.n_components,
            self.covariance_type,
            self.reg_covar,
            seed,
            **user_init,
        )

    def _set_stream(self, state: StreamState, position: StreamPosition | None) -> None:
        """Expose a stream's state under the estimator's attribute names."""
        self._stream_state = state
        self._stream_position = position
        self._set_params(state.model_params)
        self.converged_ = False  # online EM has no convergence test
        self.n_steps_ = state.n_steps
        self.n_iter_ = state.n_steps
        self.n_samples_seen_ = state.n_samples_seen
        self.lower_bound_ = state.running_log_likelihood
        self.lower_bounds_ = [r.running_log_likelihood for r in state.history]
        self.stream_history_ = [dataclasses.asdict(r) for r in state.history]

    def _forget_stream(self) -> None:
        for name in (
            "_stream_state",
            "_stream_position",
            "_stream_plan",
            "_stream_data",
            "n_steps_",
            "n_samples_seen_",
            "stream_history_",
        ):
            self.__dict__.pop(name, None)

    def fit_stream(
        self,
        source: Any,
        *,
        sample_weight: Any = None,
        n_passes: int | None = None,
        window: int | None = None,
        shuffle: bool | None = None,
        validation: Any = None,
        report_every: int = 10,
        callback: Callable[[StreamRecord], None] | None = None,
    ) -> GaussianMixture:
        """Stepwise online EM over ``source`` in batches: see :func:`distmix.fit_stream`."""
        with self._unchanged_on_error():
            self._fit_stream(
                source,
                sample_weight,
                n_passes=n_passes,
                window=window,
                shuffle=shuffle,
                validation=validation,
                report_every=report_every,
                callback=callback,
            )
        return self

    def _stream_fingerprint(self, n_features: int, plan: StreamPlan, weighted: bool) -> dict:
        return {
            "n_features": int(n_features),
            "weighted": weighted,
            "n_components": int(self.n_components),
            "covariance_type": self.covariance_type,
            "reg_covar": float(self.reg_covar),
            "init_params": self.init_params,
            "learning_decay": float(self.learning_decay),
            "learning_offset": float(self.learning_offset),
            "forgetting_factor": None
            if self.forgetting_factor is None
            else float(self.forgetting_factor),
            "average_after": None if self.average_after is None else int(self.average_after),
            "window": plan.window,
            "n_passes": plan.n_passes,
            "shuffle": plan.shuffle,
            "seed": plan.seed,
        }

    def _stream_source(
        self, source: Any, sample_weight: Any, reset: bool
    ) -> tuple[Any, Any, tuple[int, ...]]:
        """``(X, sample_weight, block_rows)``: a dask array or a validated NumPy array."""
        if is_zarr_source(source) or is_dask_array(source):
            engine = self._engine(source, sample_weight, reset=reset, many_passes=False)
            assert isinstance(engine, DaskEngine)
            return engine.X, engine.sample_weight, engine.block_rows
        engine = self._engine(source, sample_weight, reset=reset, many_passes=False)
        assert isinstance(engine, LocalEngine)
        return engine.X, engine.sample_weight, engine.block_rows

    def _fit_stream(
        self,
        source: Any,
        sample_weight: Any,
        *,
        n_passes: int | None,
        window: int | None,
        shuffle: bool | None,
        validation: Any,
        report_every: int,
        callback: Callable[[StreamRecord], None] | None,
    ) -> None:
        self._check_parameters()
        if self.checkpoint is not None:
            check_file_target(
                self.checkpoint, what="checkpoint", kinds=(STREAM_CHECKPOINT_FORMAT,), replace=True
            )
        state: StreamState | None = None
        position = StreamPosition()
        continuing = self.warm_start and getattr(self, "_stream_state", None) is not None
        if continuing:
            state, position = self._stream_state, self._stream_position or StreamPosition()
        # settings not given continue those of the stream being continued or resumed
        stored: dict[str, Any] = dict(self.__dict__.get("_stream_plan") or {}) if continuing else {}
        if self.checkpoint is not None and self.resume and Path(self.checkpoint).exists():
            fingerprint_before, _, _, _ = load_stream_checkpoint(self.checkpoint)
            stored.update({k: fingerprint_before.get(k) for k in _PLAN_KEYS})
        n_passes = stored.get("n_passes") or 1 if n_passes is None else n_passes
        shuffle = stored.get("shuffle", True) if shuffle is None else shuffle
        window = stored.get("window") if window is None else window
        if self.random_state is None and stored.get("seed") is not None:
            seed = int(stored["seed"])
        else:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        for name, value in (("n_passes", n_passes), ("report_every", report_every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1
        ):
            raise ValueError(f"window must be None or an integer >= 1, got {window!r}.")
        if _is_batch_iterable(source):
            if sample_weight is not None:
                raise ValueError(
                    "sample_weight cannot be given with an iterable of batches; "
                    "make each batch a (X, sample_weight) pair instead."
                )
            self._stream_batches(
                source,
                state,
                position,
                seed,
                n_passes=int(n_passes),
                shuffle=bool(shuffle),
                validation=validation,
                report_every=int(report_every),
                callback=callback,
                continuing=continuing,
            )
            return
        X, w, block_rows = self._stream_source(source, sample_weight, reset=not continuing)
        if window is None:
            window = _default_window(X)
        plan = StreamPlan.for_blocks(
            block_rows, window=int(window), n_passes=int(n_passes), shuffle=bool(shuffle), seed=seed
        )
        fingerprint = self._stream_fingerprint(X.shape[1], plan, w is not None)
        resumed = self._resume_stream(fingerprint)
        if resumed is not None:
            state, position, carried = resumed
        else:
            carried = dict(self.__dict__.get("_stream_data") or {}) if continuing else {}
        # a position counts the blocks of the run that wrote it: the rows already read
        # keep that run's blocks, whatever the blocks of the source are now
        plan = plan.with_blocks_read(_decode_stops(carried.get("block_stops")), position)
        data = None
        if self.checkpoint is not None:
            # the checkpoint is bound to the values read so far (each row once, in the
            # first pass over its segment): a resumed stream reads those rows once more,
            # hash only, and refuses to go on if they changed, before writing anything
            data = DataCheck(
                self.checkpoint,
                carried.get("data_fingerprint"),
                resuming=resumed is not None,
            )
            if resumed is not None:
                data.ensure(
                    window_engine(X, w, plan.ranges_read(position), split_every=self.split_every)
                )
            elif not continuing:
                data.observe(DataFingerprint())  # nothing read yet
            else:
                # continued from this estimator's own stream, which recorded its rows (if
                # it had no checkpoint, nothing was recorded and the checkpoint says so)
                known = DataFingerprint.from_json(carried.get("data_fingerprint"))
                if known is not None:
                    data.observe(known)
        n_rows = int(X.shape[0])
        held_out = _HeldOut(self, validation)
        self._stream_plan = {k: fingerprint[k] for k in _PLAN_KEYS}
        started = time.perf_counter()
        rows_here = 0
        for after, ranges in plan.walk(position, n_rows):
            engine = window_engine(X, w, ranges, split_every=self.split_every)
            first_pass = not position.in_segment or position.pass_index == 0
            track = data is not None and not data.pending and first_pass
            state, n_read, rows_fingerprint = self._stream_step(engine, state, track)
            if data is not None and rows_fingerprint is not None:
                data.add(rows_fingerprint)
            position = after
            rows_here += n_read
            last = not after.in_segment and after.rows_done == n_rows
            if state.n_steps % report_every == 0 or last:
                state = held_out.record(state)
                self._report_stream(state, rows_here, time.perf_counter() - started, callback)
            if data is not None:
                save_stream_checkpoint(
                    data.checkpoint,
                    fingerprint,
                    state,
                    position,
                    extra={**data.record(), **plan.blocks_read_record(position)},
                )
        if state is None:
            if continuing:
                return  # nothing new to read: the model stays as it is
            raise ValueError("the stream source has no rows to read.")
        self._set_stream(state, position)
        self._stream_data = {
            **(data.record() if data is not None else {}),
            **plan.blocks_read_record(position),
        }

    def _stream_batches(
        self,
        source: Any,
        state: StreamState | None,
        position: StreamPosition,
        seed: int,
        *,
        n_passes: int,
        shuffle: bool,
        validation: Any,
        report_every: int,
        callback: Callable[[StreamRecord], None] | None,
        continuing: bool,
    ) -> None:
        """Stream an iterable of batches (arrays or ``(X, sample_weight)`` pairs).

        A sequence (list, tuple) can be read in several passes and shuffled; an
        iterator is read once, in its own order. The position counts batches,
        so that a resumed stream skips those already folded in (the iterable
        must yield the same batches again).
        """
        is_sequence = isinstance(source, Sequence)
        if n_passes > 1 and not is_sequence and iter(source) is source:
            raise ValueError(
                "n_passes > 1 needs a source that can be read again (a list of batches, a "
                "dask or Zarr array); an iterator is read once."
            )
        if shuffle and not is_sequence:
            shuffle = False  # an iterator streams in its own order
        fingerprint = {
            **self._stream_fingerprint(
                getattr(self, "n_features_in_", -1) if continuing else -1,
                StreamPlan((), 1, n_passes, shuffle, seed),
                False,
            ),
            "source": "batches",
        }
        fingerprint.pop("n_features")
        resumed = self._resume_stream(fingerprint)
        if resumed is not None:
            state, position, _ = resumed
        if not continuing and resumed is None:
            position = StreamPosition()
        # bound to the values of the batches folded in (keyed by their place in the
        # source): checked on resume against the batches skipped, before any write
        data, seen, checking = None, DataFingerprint(), False
        if self.checkpoint is not None:
            data = DataCheck(
                self.checkpoint,
                resumed[2].get("data_fingerprint") if resumed else None,
                resuming=resumed is not None,
            )
            if resumed is not None and position.pass_index > 0:  # all of the first pass
                data.observe(sum((_batch_fingerprint(i, b) for i, b in enumerate(source)), seen))
            elif resumed is not None:
                checking = True  # summed over the batches skipped below
            elif not continuing:
                data.observe(seen)
        held_out = _HeldOut(self, validation)
        started, rows_here = time.perf_counter(), 0
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
                    engine = self._engine(
                        X, w, reset=state is None and not continuing, many_passes=False
                    )
                    track = data is not None and not data.pending and pass_index == 0
                    state, n_read, rows_fingerprint = self._stream_step(engine, state, track)
                except ValueError as error:
                    raise ValueError(f"{where}: {error}") from error
                if data is not None and rows_fingerprint is not None:
                    data.add(_keyed_by_place(int(place), rows_fingerprint))
                rows_here += n_read
                position = StreamPosition(0, 0, 0, pass_index, index + 1)
                if state.n_steps % report_every == 0:
                    state = held_out.record(state)
                    self._report_stream(state, rows_here, time.perf_counter() - started, callback)
                if data is not None:
                    save_stream_checkpoint(
                        data.checkpoint, fingerprint, state, position, extra=data.record()
                    )
            position = StreamPosition(0, 0, 0, pass_index + 1, 0)
        if checking and data is not None:
            data.observe(seen)
        if state is None:
            if continuing or resumed is not None:
                return
            raise ValueError("the stream of batches is empty: there is nothing to fit.")
        if validation is not None and (
            not state.history or state.history[-1].validation_log_likelihood is None
        ):
            state = held_out.record(state)
            self._report_stream(state, rows_here, time.perf_counter() - started, callback)
        self._stream_plan = {k: fingerprint[k] for k in _PLAN_KEYS}
        self._set_stream(state, None)

    def _resume_stream(
        self, fingerprint: dict[str, Any]
    ) -> tuple[StreamState, StreamPosition, dict[str, Any]] | None:
        """``(state, position, extra)`` of the checkpoint to resume, its settings checked."""
        if self.checkpoint is None or not self.resume or not Path(self.checkpoint).exists():
            return None
        stored, state, position, extra = load_stream_checkpoint(self.checkpoint)
        _check_fingerprint(
            self.checkpoint,
            stored,
            fingerprint,
            "stream",
            "Start over without resuming (resume=False; on the command line, drop --resume), "
            "or use another checkpoint path.",
        )
        return state, position or StreamPosition(), extra

    def _report_stream(
        self,
        state: StreamState,
        rows: int,
        seconds: float,
        callback: Callable[[StreamRecord], None] | None,
    ) -> None:
        record = state.history[-1]
        if self.verbose:
            rate = rows / seconds if seconds > 0 else math.inf
            held_out = (
                ""
                if record.validation_log_likelihood is None
                else f"\t held-out ll {record.validation_log_likelihood:.6f}"
            )
            print(
                f"  Step {record.n_steps}\t rows {record.n_samples_seen:,}\t {rate:,.0f} rows/s"
                f"\t step {record.step_size:.4f}\t running ll {record.running_log_likelihood:.6f}"
                + held_out
            )
        if callback is not None:
            callback(record)

    # -- checkpoints ----------------------------------------------------------
    def _fingerprint(self, engine: LocalEngine | DaskEngine, weighted: bool) -> dict[str, Any]:
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
            "random_state": int(self.random_state)
            if isinstance(self.random_state, (int, np.integer))
            else None,
        }

    def _resume_state(self, fingerprint: dict[str, Any]) -> Checkpoint | None:
        if self.checkpoint is None or not self.resume or not Path(self.checkpoint).exists():
            return None
        state = load_checkpoint(self.checkpoint)
        _check_fingerprint(
            self.checkpoint,
            state.fingerprint,
            fingerprint,
            "fit",
            "Fit with resume=False to start over, or use another checkpoint path.",
        )
        return state

    def _iteration_callback(
        self,
        start: float,
        fingerprint: dict[str, Any],
        init: int,
        best: RunState | None,
        best_lb: float,
        data: DataCheck | None,
    ) -> Any:
        def after_iteration(info: IterationInfo) -> None:
            if data is not None:
                save_checkpoint(
                    data.checkpoint,
                    Checkpoint(
                        fingerprint,
                        init,
                        RunState(info.params, info.lower_bounds, info.converged),
                        best,
                        best_lb,
                        extra=data.record(),
                    ),
                )
            if self.verbose and info.n_iter % self.verbose_interval == 0:
                if self.verbose == 1:
                    print(f"  Iteration {info.n_iter}")
                else:
                    rate = info.n_rows / info.seconds if info.seconds > 0 else math.inf
                    print(
                        f"  Iteration {info.n_iter}\t time lapse {info.seconds:.5f}s"
                        f"\t ll change {info.change:.5f}\t ll {info.lower_bound:.6f}"
                        f"\t {rate:,.0f} rows/s"
                    )

        return after_iteration

    def _set_params(self, params: Params) -> None:
        self.weights_ = np.array(params.weights)
        self.means_ = np.array(params.means)
        self.covariances_ = np.array(params.covariances)
        self.precisions_cholesky_ = np.array(params.precisions_cholesky)
        self.precisions_ = np.array(params.precisions)

    def _params(self) -> Params:
        check_is_fitted(self, "precisions_cholesky_")
        return Params(
            self.covariance_type,  # type: ignore[arg-type]
            self.weights_,
            self.means_,
            self.covariances_,
            self.precisions_cholesky_,
        )

    # -- model files ----------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the fitted model to ``path``: an ``.npz`` archive with a JSON header.

        No pickle; written atomically; read back with :func:`distmix.load`, which
        gives an estimator whose parameters, fitted attributes and model settings
        equal this one's to the last bit (the run-time settings below excepted).

        The file keeps the model: its parameters, fitted attributes and history,
        the estimator settings that define a fit (``n_components``,
        ``covariance_type``, ``tol``, ``reg_covar``, ``max_iter``, ``n_init``,
        ``init_params``, the ``*_init`` arrays, ``random_state`` when an integer,
        ``block_size``, ``split_every``, ``persist``, the stream settings) and, for
        a streamed model, its stream state. It does not keep how the fit that
        made it was run (``checkpoint``, ``resume``, ``warm_start``, ``verbose``,
        ``verbose_interval``): a loaded model has their defaults, so its ``fit``
        starts afresh and writes no checkpoint unless told to.

        An existing file at ``path`` is refused unless ``overwrite=True`` (and
        then only a distmix model file is replaced, atomically).
        """
        params = self._params()
        check_file_target(path, what="model file", kinds=(MODEL_FORMAT,), replace=overwrite)
        settings: dict[str, Any] = {}
        arrays: dict[str, Any] = {**params_arrays(params), "lower_bounds": self.lower_bounds_}
        for name, value in self.get_params().items():
            if name in _RUN_TIME_PARAMS:
                continue  # how that fit ran, not what the model is
            if name in _ARRAY_PARAMS:
                if value is not None:
                    arrays["init_" + name] = value
            elif isinstance(value, (np.integer, np.floating)):
                settings[name] = value.item()
            elif isinstance(value, (tuple, list)):
                settings[name] = [int(v) for v in value]
            elif isinstance(value, os.PathLike):
                settings[name] = os.fspath(value)
            elif value is None or isinstance(value, (bool, int, float, str)):
                settings[name] = value
            # anything else (a RandomState instance) is not stored: it cannot be re-created
        meta = {
            "format": MODEL_FORMAT,
            "version": FORMAT_VERSION,
            "covariance_type": self.covariance_type,
            "estimator_params": settings,
            "converged": bool(self.converged_),
            "n_iter": int(self.n_iter_),
            "lower_bound": float(self.lower_bound_),
            "n_features_in": int(self.n_features_in_),
        }
        state = getattr(self, "_stream_state", None)
        if state is not None:
            # a streamed model carries its stream: loaded with warm_start=True, it continues it
            stream_meta, stream_arrays_ = stream_arrays(state, self._stream_position)
            stream_meta["plan"] = self.__dict__.get("_stream_plan")
            stream_meta["data"] = self.__dict__.get("_stream_data")
            meta["stream"] = stream_meta
            arrays.update(stream_arrays_)
        write_archive(path, meta, arrays)

    # -- prediction ---------------------------------------------------------
    def _apply(self, X: Any, block_fn: Any, kind: str) -> Any:
        """Run a prediction kernel over the blocks of ``X``: NumPy in, NumPy out;
        dask in, lazy dask out."""
        params = self._params()
        engine = self._engine(X, reset=False)
        if isinstance(engine, DaskEngine):
            import dask

            k = self.n_components
            kwargs: dict[str, Any] = {
                "labels": {"drop_axis": 1, "dtype": np.int64},
                "samples": {"drop_axis": 1, "dtype": np.float64},
                "proba": {"chunks": (engine.X.chunks[0], (k,)), "dtype": np.float64},
            }[kind]
            return engine.X.map_blocks(
                _checked_block, block_fn, dask.delayed(params, pure=True), **kwargs
            )
        parts = engine.map_blocks(_checked_block, block_fn, params)
        return np.concatenate(parts, axis=0)

    def predict(self, X: Any) -> Any:
        """Most probable component of every row, shape (n_samples,)."""
        return self._apply(X, estep.predict_block, "labels")

    def predict_proba(self, X: Any) -> Any:
        """Responsibilities of every component for every row, shape (n_samples, K)."""
        return self._apply(X, estep.predict_proba_block, "proba")

    def score_samples(self, X: Any) -> Any:
        """Log-density ``log p(x)`` of every row, shape (n_samples,)."""
        return self._apply(X, estep.score_samples_block, "samples")

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (one pass; computed now, also for dask input)."""
        params = self._params()
        return mean_log_likelihood_of(self._engine(X, reset=False), params)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = X.shape[0]
        return -2 * self.score(X) * n + self._params().n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return -2 * self.score(X) * X.shape[0] + 2 * self._params().n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture; returns ``(X, labels)``."""
        check_is_fitted(self, "means_")
        if (
            isinstance(n_samples, bool)
            or not isinstance(n_samples, (int, np.integer))
            or n_samples < 1
        ):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.means_.shape[1]
        pieces = []
        for k, (mean, count) in enumerate(zip(self.means_, counts, strict=True)):
            if self.covariance_type == "full":
                pieces.append(rng.multivariate_normal(mean, self.covariances_[k], int(count)))
            elif self.covariance_type == "tied":
                pieces.append(rng.multivariate_normal(mean, self.covariances_, int(count)))
            else:
                scale = np.sqrt(self.covariances_[k])
                pieces.append(mean + rng.standard_normal(size=(int(count), d)) * scale)
        labels = np.repeat(np.arange(self.n_components), counts)
        return np.vstack(pieces), labels


def _checked_block(
    block: Any, block_fn: Any, params: Params, row_offset: int = 0, block_info: Any = None
) -> Any:
    """A prediction kernel behind a finiteness check that names the bad rows.

    Not a kernel itself: it may raise, so it looks at the values (host glue).
    """
    if block_info is not None:
        row_offset = block_info[0]["array-location"][0][0]
    xp = estep.namespace(block)
    bad = ~xp.all(xp.isfinite(block), axis=1)
    n_bad = int(xp.sum(xp.astype(bad, xp.int64)))
    if n_bad:
        first = int(xp.argmax(xp.astype(bad, xp.int8)))
        raise_if_nonfinite(n_bad, row_offset + first)
    return rowwise_in_pieces(block_fn, block, params)


def _dask_sample_weight(sample_weight: Any, X: Any) -> Any:
    """Row weights as a dask array chunked like ``X``'s rows, validated.

    Validated eagerly (one small compute over the weights, not the rows) so that
    a bad weight never reaches an E-step.
    """
    import dask
    import dask.array as da

    n = int(X.shape[0])
    if is_dask_array(sample_weight):
        w = sample_weight.astype(np.float64)
    else:
        w_np = np.asarray(sample_weight, dtype=np.float64)
        if w_np.shape != (n,):
            raise ValueError(
                f"sample_weight must have shape (n_samples,) = ({n},), got {w_np.shape}."
            )
        w = da.from_array(w_np, chunks=(X.chunks[0],))
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape (n_samples,) = ({n},), got {w.shape}.")
    finite, smallest = dask.compute(da.isfinite(w).all(), w.min())
    if not finite:
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if smallest < 0:
        raise ValueError(f"Negative values in data passed to sample_weight (smallest: {smallest}).")
    return w


_PLAN_KEYS = ("seed", "window", "n_passes", "shuffle")


def _check_fingerprint(
    path: Any, stored: dict[str, Any], current: dict[str, Any], what: str, hint: str
) -> None:
    """Refuse a checkpoint written by another fit or stream, naming every difference."""
    differences = [
        f"{key} {stored.get(key)!r} in the checkpoint, {value!r} now"
        for key, value in current.items()
        if stored.get(key) != value
    ]
    if differences:
        raise ValueError(
            f"checkpoint {path} was written by a different {what} ("
            + "; ".join(differences)
            + "). "
            + hint
        )


class _HeldOut:
    """The held-out rows of a stream, scored on demand (their engine made on first use)."""

    def __init__(self, model: GaussianMixture, validation: Any) -> None:
        self.model, self.validation = model, validation
        self._engine: LocalEngine | DaskEngine | None = None

    def record(self, state: StreamState) -> StreamState:
        """``state`` with the held-out log-likelihood of its model Params (if rows were given)."""
        if self.validation is None:
            return state
        if self._engine is None:
            self._engine = self.model._engine(self.validation, reset=False)
        return with_validation(state, mean_log_likelihood_of(self._engine, state.model_params))


def _keyed_by_place(place: int, rows: DataFingerprint) -> DataFingerprint:
    """A batch's fingerprint (rows numbered from 0) made specific to its ``place`` in
    the source, so that the same batch elsewhere in the stream counts differently."""
    return DataFingerprint(*_keyed_value(place, rows))


def _keyed_value(place: int, rows: DataFingerprint) -> tuple[int, int]:
    odd = int(block_fingerprint(np.array([[float(place)]])).value) | 1
    return (rows.value * odd + place) % 2**64, rows.n_rows


def _batch_fingerprint(place: int, item: Any) -> DataFingerprint:
    """The fingerprint of a batch of an iterable at ``place`` in the source, read anew
    (a resumed stream checks the batches it skips)."""
    X, w = item if isinstance(item, tuple) and len(item) == 2 else (item, None)
    weights = None if w is None else np.asarray(w, dtype=np.float64)
    return _keyed_by_place(place, block_fingerprint(np.asarray(X, dtype=np.float64), weights))


def _decode_stops(record: Any) -> tuple[int, ...] | None:
    """Block stops from their run-length record ``[[rows, count], ...]`` (or ``None``)."""
    if not isinstance(record, list):
        return None
    lengths = [int(rows) for rows, count in record for _ in range(int(count))]
    return tuple(int(s) for s in np.cumsum(lengths)) if lengths else ()


def _is_batch_iterable(source: Any) -> bool:
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


#: seconds the default window waits for a first worker to join a client's cluster
WORKER_WAIT_S = 60.0


def _default_window(X: Any) -> int:
    """Blocks per update: one per thread that can run them (workers' threads on a cluster).

    A cluster without any worker yet (a job-queue cluster whose jobs are still
    queued, say) is waited for, up to ``WORKER_WAIT_S``, until one joins;
    otherwise the window would be 1 on one run and the cluster's threads on the
    next. An adaptive cluster starts workers only once there is work, so it is
    not waited for. Still no worker: one block per update, with a warning. The
    window changes the fit: pass ``window=`` for a fit that does not depend on
    the cluster at all.
    """
    if is_dask_array(X):
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            pass
        else:
            adaptive = getattr(getattr(client, "cluster", None), "_adaptive", None) is not None
            if not client.nthreads() and not adaptive:
                with contextlib.suppress(TimeoutError):
                    client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            threads = sum(client.nthreads().values())
            if not threads:
                why = "is adaptive" if adaptive else f"had none within {WORKER_WAIT_S:g} s"
                warnings.warn(
                    f"the Dask cluster of {client.scheduler.address} has no worker yet (it "
                    f"{why}): streaming one block per update. Pass window= to choose.",
                    UserWarning,
                    stacklevel=4,
                )
            return max(1, threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def fit_stream(
    source: Any,
    model: GaussianMixture | None = None,
    *,
    sample_weight: Any = None,
    n_passes: int | None = None,
    window: int | None = None,
    shuffle: bool | None = None,
    validation: Any = None,
    report_every: int = 10,
    callback: Callable[[StreamRecord], None] | None = None,
    **params: Any,
) -> GaussianMixture:
    """Fit a Gaussian mixture by stepwise online EM, reading ``source`` once per pass.

    Memory stays bounded by a window of blocks whatever the number of rows.

    Parameters
    ----------
    source : Zarr path/URL or array, dask array, NumPy array, or iterable of batches
        Arrays are read in their row blocks (whole Zarr chunks; dask chunks;
        ``block_size`` rows for NumPy), ``window`` blocks per update, in a seeded
        shuffled order per pass. An iterable yields batches (arrays or
        ``(X, sample_weight)`` pairs), one update each, in its own order (a list
        is shuffled and can be read in several passes).
    model : GaussianMixture, optional
        The estimator to fit (default: ``GaussianMixture(**params)``). With
        ``warm_start=True``, a model that has streamed before continues its
        stream: over a Zarr array that has grown, only the rows appended since
        are read.
    sample_weight : array-like or dask array of shape (n_samples,), optional
    n_passes : int, default=1
    window : int, optional
        Blocks per update (default: one per thread that runs them, e.g. the
        workers' threads of the active distributed client, waiting for a first
        worker to join if it has none yet); each update reduces its window in
        one pass of the engine (a Dask compute for dask/Zarr input). The window
        shapes the fit: give it to make a fit independent of the machine.
    shuffle : bool, default=True
        Visit the blocks of each pass in a random order (seeded by ``random_state``).
        ``n_passes``, ``window`` and ``shuffle`` left at ``None`` continue the
        settings of the stream being continued (``warm_start``) or resumed.
    validation : array-like, dask array or Zarr source, optional
        Held-out rows: their mean log-likelihood is recorded every
        ``report_every`` updates and at the end.
    report_every : int, default=10
        Updates between progress lines (``verbose``), callbacks and validations.
    callback : callable, optional
        Called with the latest :class:`~distmix.engines.stream.StreamRecord`.
    **params
        Estimator parameters (``n_components``, ``learning_decay``, ``checkpoint``, ...).

    Returns
    -------
    GaussianMixture
        Fitted; ``n_steps_``, ``n_samples_seen_`` and ``stream_history_`` describe the stream.
    """
    if model is None:
        model = GaussianMixture(**params)
    elif params:
        model.set_params(**params)
    return model.fit_stream(
        source,
        sample_weight=sample_weight,
        n_passes=n_passes,
        window=window,
        shuffle=shuffle,
        validation=validation,
        report_every=report_every,
        callback=callback,
    )


_ARRAY_PARAMS = ("weights_init", "means_init", "precisions_init")
#: settings of how a fit is run, not of the model: model files neither keep nor restore them
_RUN_TIME_PARAMS = ("checkpoint", "resume", "warm_start", "verbose", "verbose_interval")


def load(path: str | os.PathLike[str]) -> GaussianMixture:
    """A fitted :class:`GaussianMixture` from a file written by ``save`` (or ``distmix fit --out``).

    The file is validated: format and version, shapes, finite values, weights
    summing to one and positive-definite covariances; anything else is refused
    with a :class:`distmix.persist.ModelFileError` naming the file and the array.
    """
    meta, arrays = read_archive(path, MODEL_FORMAT)
    covariance_type = meta.get("covariance_type")
    if covariance_type not in ("full", "tied", "diag", "spherical"):
        raise ModelFileError(f"{path}: unknown covariance_type {covariance_type!r}.")
    params = params_from_arrays(arrays, covariance_type, path)
    if meta.get("n_features_in") != params.n_features:
        raise ModelFileError(
            f"{path}: n_features_in {meta.get('n_features_in')!r} does not match the means' "
            f"{params.n_features} features."
        )
    settings = dict(meta.get("estimator_params", {}))
    for name in _RUN_TIME_PARAMS:
        settings.pop(name, None)  # older files stored them: never obeyed
    if isinstance(settings.get("block_size"), list):
        settings["block_size"] = tuple(settings["block_size"])
    for name in _ARRAY_PARAMS:
        settings[name] = arrays.get("init_" + name)
    try:
        model = GaussianMixture(**settings)
    except TypeError as error:
        raise ModelFileError(f"{path}: unknown estimator setting ({error}).") from error
    if settings.get("covariance_type") not in (None, covariance_type):
        raise ModelFileError(f"{path}: covariance_type disagrees between header and settings.")
    model.covariance_type = covariance_type
    history = np.asarray(arrays.get("lower_bounds", np.empty(0)), dtype=np.float64)
    stream = meta.get("stream")
    expected = meta.get("n_iter")
    if isinstance(stream, dict):  # a streamed model keeps the history of its newest updates
        expected = np.asarray(arrays.get("stream_history", np.empty((0, 0)))).shape[0]
    if history.ndim != 1 or history.size != expected:
        raise ModelFileError(f"{path}: lower_bounds does not hold n_iter={expected} values.")
    model._set_params(params)
    model.converged_ = bool(meta.get("converged"))
    model.n_iter_ = int(meta["n_iter"])
    model.lower_bound_ = float(meta["lower_bound"])
    model.lower_bounds_ = history.tolist()
    model.n_features_in_ = params.n_features
    if isinstance(stream, dict):
        state, position = stream_from_arrays(stream, arrays, covariance_type, path)
        if not state.model_params.allclose(params, rtol=0.0):
            raise ModelFileError(f"{path}: the stream state disagrees with the model's parameters.")
        model._set_stream(state, position)
        model._set_params(params)  # the stored bits
        if isinstance(stream.get("plan"), dict):
            model._stream_plan = {k: stream["plan"].get(k) for k in _PLAN_KEYS}
        if isinstance(stream.get("data"), dict):  # the rows it read: fingerprint, blocks
            model._stream_data = dict(stream["data"])
    return model
