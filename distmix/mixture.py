"""``BaseMixture``: what every distmix mixture estimator shares.

The estimator layer, split as scikit-learn splits ``BaseMixture`` from
``GaussianMixture``: this class checks the settings (:mod:`distmix.settings`),
has :func:`~distmix.engines.factory.make_engine` build the engine of the input
(NumPy → in-process blocks, dask or Zarr → one Dask task per block), hands the
fit to the EM loop (:func:`distmix.em.fit_em`) or the online driver
(:mod:`distmix.online`), runs predictions as the engine's map tasks, and keeps
results under scikit-learn's attribute names; model files are
:mod:`distmix.persist`'s. A mixture (:class:`distmix.GaussianMixture`) adds its
parameters, their documentation, and how its fitted attributes map to and from
:class:`~distmix.params.Params`. Only :mod:`distmix.estimator` imports this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Self

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import validate_data

from distmix import online
from distmix.em import FitSettings, fit_em, mean_log_likelihood_of
from distmix.engines.factory import make_engine
from distmix.online import OnlineSettings, StreamOptions
from distmix.params import Params
from distmix.persist import (
    CHECKPOINT_FORMAT,
    STREAM_CHECKPOINT_FORMAT,
    ModelFile,
    check_file_target,
    write_model,
)
from distmix.privacy import Privacy
from distmix.private_em import data_free_start, fit_private
from distmix.progress import verbose_logging
from distmix.settings import check_settings
from distmix.stepwise import Stream, StreamRecord

if TYPE_CHECKING:  # types only
    from distmix.engines.base import WindowedEngine
    from distmix.tasks import TaskName

#: seeds of the runs are drawn below this bound (scikit-learn's)
SEEDS = np.iinfo(np.int32).max


class BaseMixture(DensityMixin, BaseEstimator):
    """The scikit-learn surface of a mixture fitted by EM over row blocks.

    A subclass gives ``__init__`` with the settings :func:`~distmix.settings.check_settings`
    reads, :meth:`_params`/:meth:`_set_params` (its fitted attributes to and from
    Params), :meth:`_check_initial_parameters` (its user-given start) and
    ``_fitted_attribute`` (an attribute only a fitted model has).
    """

    lower_bound_: float
    #: an attribute that only a fitted model has
    _fitted_attribute = "lower_bound_"

    # -- what a mixture gives -----------------------------------------------
    def _params(self) -> Params:
        raise NotImplementedError

    def _set_params(self, params: Params) -> None:
        raise NotImplementedError

    def _check_initial_parameters(self, n_features: int) -> dict[str, Any]:
        raise NotImplementedError

    # -- validation ---------------------------------------------------------
    def _check_parameters(self) -> None:
        check_settings(self.get_params())

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
            kernel=self.kernel,
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
    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> Self:
        """Estimate the parameters by EM (``n_init`` runs, the best kept).

        Parameters
        ----------
        X : array-like, dask array, Zarr array, or the path/URL of a Zarr array
            Shape (n_samples, n_features). An array of another array-API
            namespace than NumPy (a CuPy array, a dask array of CuPy chunks)
            stays where it is: its blocks run the E-step on its device and only
            their statistics come to the host; no NumPy copy of it is made.
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights: an integer weight counts as that many
            copies of the row, and weight 0 drops it. NumPy weights of device
            rows are copied to the rows' device.

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
        if getattr(self, "privacy", None) is not None or _private_input(X):
            self._fit_private(X, sample_weight)
            return
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
        seeds = [int(random_state.randint(SEEDS)) for _ in range(n_init)]
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

    def _fit_private(self, X: Any, sample_weight: Any) -> None:
        """A differentially private fit (``privacy=``): see :mod:`distmix.private_em`."""
        privacy = self.privacy
        if sample_weight is not None:
            raise ValueError(
                "a private fit takes no sample_weight: its sensitivities are for rows of "
                "weight 1 (a row of weight w moves the statistics w times as far)."
            )
        if self.n_init != 1:
            raise ValueError(
                f"a private fit runs one start, got n_init={self.n_init}: "
                "every start would spend the budget again."
            )
        if self.checkpoint is not None:
            raise ValueError("checkpoint= is not supported for private fits yet.")
        if self.max_iter < 1:
            raise ValueError(
                "a private fit needs max_iter >= 1: the number of its noisy iterations, "
                f"fixed in advance; got {self.max_iter}."
            )
        fitted_before = hasattr(self, self._fitted_attribute)
        engine = self._engine(X, None, reset=True)
        plan = getattr(engine, "privacy_plan", None)
        if plan is not None:  # a private federation: its manifest's budget
            privacy = _same_privacy(privacy, X.__distmix_privacy__)
            if self.max_iter > plan.releases:
                raise ValueError(
                    f"max_iter={self.max_iter} is more private iterations than the "
                    f"federation's manifest allows (dp_iterations={plan.releases})."
                )
        else:
            plan = privacy.plan(int(self.max_iter))
        ball = privacy.ball
        if ball.n_features != engine.n_features:
            raise ValueError(
                f"privacy.centre has {ball.n_features} features but X has {engine.n_features}."
            )
        n_components = int(self.n_components)
        covariance_type = str(self.covariance_type)
        seed = int(check_random_state(self.random_state).randint(SEEDS))
        start: Params | None = None
        if self.warm_start and fitted_before:
            start = self._params()  # a released model: public
        else:
            user = self._check_initial_parameters(engine.n_features)
            if user:  # what the user gave, the rest drawn from the seed
                drawn = data_free_start(ball, n_components, covariance_type, seed)
                weights = user.get("weights_init", drawn.weights)
                means = user.get("means_init", drawn.means)
                if "precisions_init" in user:
                    start = Params.from_precisions(
                        weights, means, user["precisions_init"], covariance_type
                    )
                else:
                    start = Params.from_covariances(
                        weights, means, drawn.covariances, covariance_type
                    )
        fit = fit_private(
            engine,
            plan,
            start,
            float(self.reg_covar),
            privacy.min_count,
            int(self.max_iter),
            privacy.average_last,
            n_components=n_components,
            covariance_type=covariance_type,
            seed=seed,
        )
        # every attribute is assigned only now, after the whole fit succeeded
        self._set_params(fit.params)
        self.converged_ = False  # no convergence test: it would look at the rows
        self.n_iter_ = fit.n_iter
        self.lower_bound_ = math.nan  # not released
        self.lower_bounds_ = []
        self.privacy_ = fit.report()
        self._forget_stream()

    def _refuse_private(self, what: str, X: Any = None) -> None:
        if getattr(self, "privacy", None) is not None or _private_input(X):
            raise ValueError(
                f"{what} is not supported for private fits (privacy=, or a private federation) yet."
            )

    # -- streaming ----------------------------------------------------------
    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> Self:
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
        self._refuse_private("partial_fit", X)
        fitted = self._params() if hasattr(self, self._fitted_attribute) else None
        engine = self._engine(X, sample_weight, reset=fitted is None, many_passes=False)
        stream = self.__dict__.get("_stream")
        self._set_stream(online.partial_update(engine, stream, fitted, self._online_settings()))

    def _online_settings(self) -> OnlineSettings:
        random_state = self.random_state
        return OnlineSettings.from_params(
            self.get_params(),
            self._check_initial_parameters,
            lambda: int(check_random_state(random_state).randint(SEEDS)),
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
    ) -> Self:
        """Stepwise online EM over ``source`` in batches: see :func:`distmix.fit_stream`."""
        with self._unchanged_on_error(), verbose_logging(self.verbose):
            self._check_parameters()
            self._refuse_private("fit_stream", source)
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
                privacy_report=getattr(self, "privacy_", None),
            ),
            overwrite=overwrite,
        )

    # -- prediction ---------------------------------------------------------
    def _apply(self, X: Any, task: TaskName) -> Any:
        """Run a prediction task over the blocks of ``X``: NumPy in, NumPy out; CuPy
        (any array-API namespace) in, CuPy out on the same device; dask in, lazy dask
        out, in the namespace of its chunks."""
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


def _private_input(X: Any) -> bool:
    """Whether ``X`` asks for a private fit itself (a private federation)."""
    return getattr(X, "__distmix_privacy__", None) is not None


def _same_privacy(given: Privacy | None, pinned: Privacy) -> Privacy:
    """The settings of a private federation's manifest; ``given`` (the estimator's
    ``privacy=``), if any, must be the same budget and ball."""
    if given is None:
        return pinned
    for name in ("epsilon", "delta", "clip_radius"):
        if float(getattr(given, name)) != float(getattr(pinned, name)):
            raise ValueError(
                f"privacy.{name}={getattr(given, name)!r} differs from the federation "
                f"manifest's ({getattr(pinned, name)!r}): its sites enforce their manifest's."
            )
    if not np.array_equal(given.centre, pinned.centre):
        raise ValueError(
            "privacy.centre differs from the federation manifest's centre: its sites clip "
            "about their manifest's."
        )
    return dataclasses.replace(pinned, min_count=given.min_count, average_last=given.average_last)
