"""``distmix.GaussianMixture``: a scikit-learn estimator over every engine.

A leaf, and thin: it checks its settings (:mod:`distmix.settings`), has
:func:`~distmix.engines.factory.make_engine` build the engine of its input
(NumPy → in-process blocks, dask or Zarr → one Dask task per block), hands the
fit to the EM loop (:func:`distmix.em.fit_em`) or the online driver
(:mod:`distmix.online`), and keeps the result under scikit-learn's attribute
names; model files are :mod:`distmix.persist`'s. Nothing in distmix imports it.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from distmix import online
from distmix.em import (
    FitSettings,
    fit_em,
    mean_log_likelihood_of,
)
from distmix.engines.factory import make_engine
from distmix.online import OnlineSettings, StreamOptions
from distmix.params import Params, check_initial_parameters, sample_mixture
from distmix.persist import (
    CHECKPOINT_FORMAT,
    STREAM_CHECKPOINT_FORMAT,
    ModelFile,
    ModelFileError,
    check_file_target,
    read_model,
    write_model,
)
from distmix.progress import verbose_logging
from distmix.settings import check_settings
from distmix.stepwise import Stream, StreamRecord

if TYPE_CHECKING:  # types only
    from distmix.engines.base import WindowedEngine
    from distmix.tasks import TaskName

#: seeds of the runs are drawn below this bound (scikit-learn's)
_SEEDS = np.iinfo(np.int32).max


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
        check_settings(self.get_params())

    def _check_initial_parameters(self, n_features: int) -> dict[str, Any]:
        return check_initial_parameters(
            self.n_components,
            n_features,
            self.covariance_type,
            weights_init=self.weights_init,
            means_init=self.means_init,
            precisions_init=self.precisions_init,
        )

    def _engine(
        self, X: Any, sample_weight: Any = None, *, reset: bool, many_passes: bool | None = None
    ) -> WindowedEngine:
        """Validate ``X`` (and weights) and build its engine (:func:`make_engine`).

        ``many_passes`` (default: ``reset``) lets dask input be persisted.
        """
        many_passes = reset if many_passes is None else many_passes

        def check_features(n_features: int, in_memory: Any) -> None:
            if in_memory is None:  # dask or Zarr
                self._check_n_features(n_features, reset=reset)
            else:  # scikit-learn's checks of the feature count and names
                validate_data(self, in_memory, skip_check_array=True, reset=reset)

        return make_engine(
            X,
            sample_weight,
            block_size=self.block_size,
            split_every=self.split_every,
            passes="many" if many_passes else "one",
            persist=self.persist,
            persist_fraction=self.persist_fraction,
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            min_components=self.n_components if reset else None,
            min_rows=2 if reset else 1,
            check_features=check_features,
            check_memory=True if reset or many_passes else "cached",
        )

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
        with self._unchanged_on_error(), verbose_logging(self.verbose):
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
        warm = self.warm_start and fitted_before
        n_init = 1 if warm else self.n_init
        random_state = check_random_state(self.random_state)
        seeds = [int(random_state.randint(_SEEDS)) for _ in range(n_init)]
        fitted = fit_em(
            engine,
            FitSettings.from_params(self.get_params()),
            seeds=seeds,
            user_init=user_init,
            start=(self._params(), float(self.lower_bound_)) if warm else None,
            weighted=sample_weight is not None,
            checkpoint=self.checkpoint,
            resume=self.resume,
        )
        best, best_lb = fitted.best, fitted.lower_bound
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
        fitted = self._params() if hasattr(self, "precisions_cholesky_") else None
        engine = self._engine(X, sample_weight, reset=fitted is None, many_passes=False)
        stream = self.__dict__.get("_stream")
        self._set_stream(online.partial_update(engine, stream, fitted, self._online_settings()))

    def _online_settings(self) -> OnlineSettings:
        random_state = self.random_state
        return OnlineSettings.from_params(
            self.get_params(),
            self._check_initial_parameters,
            lambda: int(check_random_state(random_state).randint(_SEEDS)),
        )

    def _set_stream(self, stream: Stream) -> None:
        """Keep ``stream`` and expose its state under the estimator's attribute names."""
        self._stream = stream
        state = stream.state
        self._set_params(state.model_params)
        self.converged_ = False  # online EM has no convergence test
        self.n_steps_ = self.n_iter_ = state.n_steps
        self.n_samples_seen_ = state.n_samples_seen
        self.lower_bound_ = state.running_log_likelihood
        self.lower_bounds_ = [r.running_log_likelihood for r in state.history]
        self.stream_history_ = [asdict(r) for r in state.history]

    def _forget_stream(self) -> None:
        for name in ("_stream", "n_steps_", "n_samples_seen_", "stream_history_"):
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
        with self._unchanged_on_error(), verbose_logging(self.verbose):
            self._check_parameters()
            if self.checkpoint is not None:
                check_file_target(
                    self.checkpoint,
                    what="checkpoint",
                    kinds=(STREAM_CHECKPOINT_FORMAT,),
                    replace=True,
                )
            end = online.fit_stream(
                source,
                sample_weight,
                self._online_settings(),
                lambda X, w, first: self._engine(X, w, reset=first, many_passes=False),
                StreamOptions(n_passes, window, shuffle, validation, report_every, callback),
                previous=self.__dict__.get("_stream") if self.warm_start else None,
                random_state_given=self.random_state is not None,
            )
            if end is not None:  # else a continued stream had nothing new to read
                self._set_stream(end)
        return self

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
        write_model(
            path,
            ModelFile(
                params=self._params(),
                settings=self.get_params(),
                converged=bool(self.converged_),
                n_iter=int(self.n_iter_),
                lower_bound=float(self.lower_bound_),
                lower_bounds=tuple(self.lower_bounds_),
                stream=self.__dict__.get("_stream"),
            ),
            overwrite=overwrite,
        )

    # -- prediction ---------------------------------------------------------
    def _apply(self, X: Any, task: TaskName) -> Any:
        """Run a prediction task over the blocks of ``X``: NumPy in, NumPy out;
        dask in, lazy dask out."""
        params = self._params()
        return self._engine(X, reset=False).map_blocks(task, params)

    def predict(self, X: Any) -> Any:
        """Most probable component of every row, shape (n_samples,)."""
        return self._apply(X, "predict")

    def predict_proba(self, X: Any) -> Any:
        """Responsibilities of every component for every row, shape (n_samples, K)."""
        return self._apply(X, "predict_proba")

    def score_samples(self, X: Any) -> Any:
        """Log-density ``log p(x)`` of every row, shape (n_samples,)."""
        return self._apply(X, "score_samples")

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
        return sample_mixture(self._params(), n_samples, check_random_state(self.random_state))


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
        Called with the latest :class:`~distmix.stepwise.StreamRecord`.
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


def load(path: str | os.PathLike[str]) -> GaussianMixture:
    """A fitted :class:`GaussianMixture` from a file written by ``save`` (or ``distmix fit --out``).

    The file is validated: format and version, shapes, finite values, weights
    summing to one and positive-definite covariances; anything else is refused
    with a :class:`distmix.persist.ModelFileError` naming the file and the array.
    """
    stored = read_model(path)
    try:
        model = GaussianMixture(**stored.settings)
    except TypeError as error:
        raise ModelFileError(f"{path}: unknown estimator setting ({error}).") from error
    params = stored.params
    model._set_params(params)
    model.converged_ = stored.converged
    model.n_iter_ = stored.n_iter
    model.lower_bound_ = stored.lower_bound
    model.lower_bounds_ = list(stored.lower_bounds)
    model.n_features_in_ = params.n_features
    if stored.stream is not None:
        model._set_stream(stored.stream)
        model._set_params(params)  # the stored bits
    return model
