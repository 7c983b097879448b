"""``distmix.GaussianMixture``: a scikit-learn estimator over every engine.

A leaf: it turns its input into an engine (NumPy → in-process blocks, dask or
Zarr → one Dask task per block), runs :mod:`distmix.init` and
:mod:`distmix.em`, and stores the result under scikit-learn's attribute names.
Nothing in distmix imports it.
"""

from __future__ import annotations

import math
import os
import time
import warnings
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
from distmix.em import EMResult, IterationInfo, mean_log_likelihood_of, run_em
from distmix.engines import DaskEngine, LocalEngine
from distmix.init import initial_params
from distmix.params import (
    Params,
    check_weights,
    covariance_shape,
    precision_cholesky_from_precisions,
)
from distmix.persist import (
    FORMAT_VERSION,
    MODEL_FORMAT,
    Checkpoint,
    ModelFileError,
    RunState,
    load_checkpoint,
    params_arrays,
    params_from_arrays,
    read_archive,
    save_checkpoint,
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
        self, X: Any, sample_weight: Any = None, *, reset: bool
    ) -> LocalEngine | DaskEngine:
        """Validate ``X`` (and weights) and wrap it in the engine that suits it."""
        k = self.n_components if reset else None
        if is_zarr_source(X):
            # a zarr.Array, path or URL: open_dataset validates it and reads whole chunks
            source, X = X, open_dataset(X)
            if self.block_size is not None:
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
                persist=self.persist if reset else False,
                persist_fraction=self.persist_fraction,
            )
        if hasattr(X, "dtype") and getattr(X.dtype, "kind", "f") not in "biufcO":
            check_dtype(X.dtype)
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
        saved = dict(self.__dict__)
        try:
            self._fit(X, sample_weight)
        except BaseException:
            # a failed fit leaves the estimator exactly as it was
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then the most probable component of every row (lazy for dask input)."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def _fit(self, X: Any, sample_weight: Any) -> None:
        self._check_parameters()
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
                    callback=self._iteration_callback(start, fingerprint, init, best, best_lb),
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
            if self.checkpoint is not None:
                save_checkpoint(
                    self.checkpoint,
                    Checkpoint(
                        fingerprint, init + 1, None, best, best_lb, finished=init == n_init - 1
                    ),
                )
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
        differences = [
            f"{key} {state.fingerprint.get(key)!r} in the checkpoint, {value!r} now"
            for key, value in fingerprint.items()
            if state.fingerprint.get(key) != value
        ]
        if differences:
            raise ValueError(
                f"checkpoint {self.checkpoint} was written by a different fit ("
                + "; ".join(differences)
                + "). Fit with resume=False to start over, or use another checkpoint path."
            )
        return state

    def _iteration_callback(
        self,
        start: float,
        fingerprint: dict[str, Any],
        init: int,
        best: RunState | None,
        best_lb: float,
    ) -> Any:
        def after_iteration(info: IterationInfo) -> None:
            if self.checkpoint is not None:
                save_checkpoint(
                    self.checkpoint,
                    Checkpoint(
                        fingerprint,
                        init,
                        RunState(info.params, info.lower_bounds, info.converged),
                        best,
                        best_lb,
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
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted model to ``path``: an ``.npz`` archive with a JSON header.

        No pickle; written atomically; read back with :func:`distmix.load`, which
        gives an estimator equal to this one to the last bit.
        """
        params = self._params()
        settings: dict[str, Any] = {}
        arrays: dict[str, Any] = {**params_arrays(params), "lower_bounds": self.lower_bounds_}
        for name, value in self.get_params().items():
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
    return block_fn(block, params)


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


_ARRAY_PARAMS = ("weights_init", "means_init", "precisions_init")


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
    if history.ndim != 1 or history.size != meta.get("n_iter"):
        raise ModelFileError(
            f"{path}: lower_bounds does not hold n_iter={meta.get('n_iter')} values."
        )
    model._set_params(params)
    model.converged_ = bool(meta.get("converged"))
    model.n_iter_ = int(meta["n_iter"])
    model.lower_bound_ = float(meta["lower_bound"])
    model.lower_bounds_ = history.tolist()
    model.n_features_in_ = params.n_features
    return model
