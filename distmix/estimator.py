"""``distmix.GaussianMixture``: a scikit-learn estimator over every engine.

A leaf, and thin: the scikit-learn surface shared by mixtures (settings
checked, engines made, fits handed to the EM loop or the online driver,
predictions, model files) is :class:`~distmix.mixture.BaseMixture`'s; this
module holds what is Gaussian: the parameters and their documentation, the
fitted attributes as :class:`~distmix.params.Params`, the user-given start,
sampling, and the package's :func:`fit_stream` and :func:`load`. Nothing in
distmix imports it but the package.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from distmix.mixture import SEEDS, BaseMixture
from distmix.params import Params, check_initial_parameters, sample_mixture
from distmix.persist import ModelFileError, read_model
from distmix.privacy import Privacy
from distmix.selection import Candidate, choose, fit_grid, format_table
from distmix.stepwise import StreamRecord


class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM over row blocks, in memory or on Dask.

    The constructor takes scikit-learn's ``GaussianMixture`` parameters, with
    the same meaning and defaults, plus ``block_size`` and ``split_every``.

    Input stays where it is: a CuPy array (or another array-API namespace's, or a
    dask array of CuPy chunks) is fitted block by block on its device, and only
    the blocks' statistics come to the host. The fitted attributes are float64
    NumPy arrays on the host whatever the input: the M-step runs there (a few
    K × D² numbers), and model files and scikit-learn read them as they are.
    Predictions are in the input's namespace: CuPy ``X`` gives CuPy labels,
    responsibilities and log-densities on its device.

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
    init_params : {"kmeans", "k-means++", "random", "random_from_data", "moments"}, default="kmeans"
        ``"kmeans"`` runs scalable k-means‖ seeding (Bahmani et al. 2012) and
        Lloyd passes over the blocks; ``"k-means++"`` uses the seeds as means.
        Both depend only on the rows and ``random_state``, not on the blocks.
        ``"moments"`` moves no row (the start of a federated fit): k-means seeds
        drawn from the data's mean and covariance, weighted by the rows nearest
        to them, then Lloyd passes. ``"kmeans"``, ``"k-means++"`` and
        ``"random_from_data"`` take a few rows to the caller, which a
        federation refuses.
    weights_init, means_init, precisions_init : array-like, optional
        User-given initial parameters (shapes as in scikit-learn).
    random_state : int, RandomState or None
    warm_start : bool, default=False
    verbose : int, default=0
    verbose_interval : int, default=10
    block_size : int, tuple of int or None, default=None
        Rows per block for in-memory input (``None``: sized so that each
        block's ``(K, rows, D)`` temporaries take about 4 MiB, 128 MiB for a
        device array such as CuPy's), or the length of every block. For dask
        input, rechunk the rows to this size (``None``: keep the input's chunks).
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
    warmup_rows : int or "auto", default="auto"
        Streaming over an array (:func:`fit_stream`): the stream begins with batch
        EM (up to ``max_iter`` iterations, to ``tol``) on its first batches, as
        many as hold ``warmup_rows`` rows, read as one window; the stepwise
        updates follow, the warm-up counting as those batches' updates. It
        carries a poor start (or large batches, few updates a pass) to where
        batch EM goes. With 3 batches or more, EM also runs on each third of them
        from a start made there, and the end that fits all the warm-up's rows
        best is kept (where EM goes from a poor start turns on the sample).
        ``"auto"``: 60 rows per free parameter of the mixture, at most 256 MiB
        of rows; 0: stepwise from the first batch. ``partial_fit`` and streams
        of separate batches have no warm-up (fit a first sample, then continue
        with them).
    kernel : {"auto", "compiled", "array-api"} or None, default=None
        The block kernels of this model's fits, scores and predictions:
        ``"compiled"`` the fused compiled kernels (NumPy blocks only),
        ``"array-api"`` the reference kernels of any array namespace, ``"auto"``
        compiled for NumPy blocks when numba is installed. ``None``: the choice
        of whichever process runs the blocks (``DISTMIX_KERNEL``, default
        ``"auto"``). The choice travels with each block task, to the local
        engine's threads and to Dask workers alike; results agree to ~1e-12.
    privacy : distmix.Privacy or None, default=None
        Fit with differential privacy for the individuals whose rows are fitted: every
        row clipped to the public ball, ``max_iter`` noisy EM iterations (fixed in
        advance: no convergence test), from ``means_init`` (with ``weights_init`` and
        ``precisions_init`` where given) or a start drawn from ``random_state`` alone,
        never from the rows. The fit releases only the noisy statistics: its
        log-likelihood is not computed (``lower_bound_`` is NaN). One start
        (``n_init=1``), unit row weights, no checkpoint; the noise comes from the
        operating system's secure source, so two private fits differ. Needs the
        optional extra ``distmix[privacy]`` (OpenDP).

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
    privacy_ : dict
        Private fits only: the budget, what the fit spent (``rho``, ``epsilon`` at
        ``delta``), the releases and each field's noise scale.
    n_steps_ : int
        Streaming only: online-EM updates made (one per batch).
    n_samples_seen_ : int
        Streaming only: rows read by those updates (every pass counts).
    stream_history_ : list of dict
        Streaming only: per update (the newest 10,000), rows seen, step size,
        the batch's mean log-likelihood before the update, the running average,
        and the held-out log-likelihood where one was computed.
    """

    _fitted_attribute = "precisions_cholesky_"

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
        warmup_rows: int | str = "auto",
        kernel: str | None = None,
        privacy: Privacy | None = None,
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
        self.warmup_rows = warmup_rows
        self.kernel = kernel
        self.privacy = privacy

    def _check_initial_parameters(self, n_features: int) -> dict[str, Any]:
        return check_initial_parameters(
            self.n_components,
            n_features,
            self.covariance_type,
            weights_init=self.weights_init,
            means_init=self.means_init,
            precisions_init=self.precisions_init,
        )

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
    settings = dict(stored.settings)
    if settings.get("privacy") is not None:
        try:
            settings["privacy"] = Privacy.from_record(settings["privacy"])
        except (TypeError, ValueError, OverflowError) as error:
            raise ModelFileError(f"{path}: invalid privacy settings ({error})") from None
    try:
        model = GaussianMixture(**settings)
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
    if stored.privacy_report is not None:
        model.privacy_ = dict(stored.privacy_report)
    return model


@dataclass
class Selection:
    """What :func:`select` chose: the fitted model, every candidate, and why.

    ``best_estimator_`` is a fitted :class:`GaussianMixture`; ``candidates`` the
    table's rows (:class:`distmix.selection.Candidate`), in the grid's order;
    ``explanation`` one line on the choice; ``table()`` the table as text.
    """

    best_estimator_: GaussianMixture
    candidates: list[Candidate]
    criterion: str
    explanation: str

    def table(self) -> str:
        chosen = next(
            c
            for c in self.candidates
            if c.fitted
            and c.n_components == self.best_estimator_.n_components
            and c.covariance_type == self.best_estimator_.covariance_type
        )
        return format_table(self.candidates, chosen)

    def __str__(self) -> str:
        return f"{self.table()}\n{self.explanation}"


def select(
    X: Any,
    n_components: Any = range(1, 9),
    covariance_types: Any = ("full", "diag"),
    *,
    criterion: str = "bic",
    sample_weight: Any = None,
    **params: Any,
) -> Selection:
    """Fit every candidate of a grid - ``n_components`` × ``covariance_types``, each with
    ``n_init`` restarts - sharing every pass over ``X``, and keep the best by
    ``criterion`` ("bic", also "aic" or "icl"; lower is better).

    Each EM iteration reads every block once for all the candidates still going
    (:mod:`distmix.selection`); each candidate is exactly the model
    ``GaussianMixture(n_components=K, covariance_type=t, **params).fit(X)`` gives.
    A candidate that cannot be fitted (more components than rows, no start) is
    marked in the table, not fatal. ``params`` are the estimator's other settings
    (``n_init``, ``tol``, ``max_iter``, ``init_params``, ``random_state``, ...).
    """
    grid = [(int(k), str(t)) for t in _as_list(covariance_types) for k in _as_list(n_components)]
    if not grid:
        raise ValueError("select needs at least one number of components and covariance type.")
    for name in ("n_components", "covariance_type"):
        if name in params:
            raise TypeError(f"give {name} as select's grid, not as a setting.")
    base = GaussianMixture(**params)
    for k, t in grid:
        base.set_params(n_components=k, covariance_type=t)._check_parameters()
    if base.privacy is not None or base.checkpoint is not None or base.warm_start:
        raise ValueError("select does not take privacy, checkpoint or warm_start.")
    base.set_params(n_components=1)
    engine = base._engine(X, sample_weight, reset=True)
    random_state = check_random_state(base.random_state)
    seeds = [int(random_state.randint(SEEDS)) for _ in range(int(base.n_init))]
    fit = fit_grid(
        engine,
        grid,
        seeds,
        init_params=str(base.init_params),
        tol=float(base.tol),
        max_iter=int(base.max_iter),
        reg_covar=float(base.reg_covar),
    )
    chosen, explanation = choose(fit.candidates, criterion)
    run = fit.runs[(chosen.n_components, chosen.covariance_type)]
    model = GaussianMixture(
        **{
            **base.get_params(),
            "n_components": chosen.n_components,
            "covariance_type": chosen.covariance_type,
        }
    )
    model._set_params(run.params)
    model.converged_ = run.converged
    model.n_iter_ = run.n_iter
    model.lower_bound_ = run.lower_bound if run.n_iter else -math.inf
    model.lower_bounds_ = list(run.lower_bounds)
    for name in ("n_features_in_", "feature_names_in_"):
        if hasattr(base, name):
            setattr(model, name, getattr(base, name))
    return Selection(model, fit.candidates, criterion, explanation)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, int, np.integer)):
        return [value]
    return list(value)
