"""Initial Params, over any engine: k-means (k-means‖ + Lloyd), k-means++, random.

Every method only needs named block tasks (``engine.reduce``; the kernels are
in :mod:`distmix.init_kernels`), so it runs the same way on an in-memory array,
on Dask blocks or out of core. Random numbers that belong to rows (k-means‖
sampling, random responsibilities) are drawn from streams keyed by ``(seed,
purpose, row // ROW_STREAM_ROWS)``, so the initialisation depends on the rows
and the seed only, never on how the rows are cut into blocks. Every method but
``"moments"`` takes a few rows to the caller (the ``take_rows`` and
``kmeans_sample`` tasks), so an engine that refuses those tasks (a federation)
starts from ``"moments"`` or from user-given means.

k-means‖ follows Bahmani, Moseley, Vattani, Kumar & Vassilvitskii, "Scalable
K-Means++", PVLDB 5(7), 2012, Algorithm 2:

1. ``C`` ← one row drawn uniformly at random; ``ψ = φ_X(C)``.
2. For a fixed number of rounds (5, as the paper finds enough in practice):
   draw every row independently with probability ``min(1, ℓ·w·d²(x, C)/φ_X(C))``
   (oversampling ``ℓ = 2K``) and add the draws to ``C``; recompute ``φ_X(C)``.
3. Weight every candidate by the weight of the rows nearest to it.
4. Recluster the weighted candidates into ``K`` centres in memory (weighted
   k-means++ seeding of Arthur & Vassilvitskii 2007, then Lloyd).

The centres are then refined by a few Lloyd passes over all rows, and the last
pass gives the statistics of the hard assignment, whose M-step is the initial
Params (as scikit-learn initialises from k-means labels).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distmix.engines.base import Engine, rows_at
from distmix.init_kernels import STREAM_SAMPLING
from distmix.mstep import m_step
from distmix.nonfinite import raise_if_nonfinite
from distmix.params import Params, check_weights, covariance_shape

KMEANS_PARALLEL_ROUNDS = 5
LLOYD_PASSES = 2
#: candidate seeds drawn per component by ``init_params="moments"`` (at least 64)
MOMENT_CANDIDATES_PER_COMPONENT = 16
#: Lloyd passes over the rows after the seeds of ``"moments"`` (coarser than k-means‖'s)
MOMENT_LLOYD_PASSES = 5
#: the methods that take rows to the caller (through ``take_rows`` or ``kmeans_sample``)
NEEDS_ROWS = ("kmeans", "k-means++", "random", "random_from_data")


# -- host-side pieces ---------------------------------------------------------
def weighted_kmeans_plusplus(
    points: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Weighted k-means++ seeding (greedy, with ``2 + ln k`` local trials)."""
    m = points.shape[0]
    weights = np.asarray(weights, dtype=np.float64)
    n_trials = 2 + int(math.log(k))
    total = weights.sum()
    first = rng.choice(m, p=weights / total) if total > 0 else rng.integers(m)
    chosen = [first]
    closest = np.sum((points - points[first]) ** 2, axis=1)
    for _ in range(1, k):
        potential = weights * closest
        pot_total = potential.sum()
        if pot_total > 0:
            trials = np.searchsorted(np.cumsum(potential), rng.random(n_trials) * pot_total)
            trials = np.minimum(trials, m - 1)
        else:
            trials = rng.integers(m, size=n_trials)
        dist = np.sum((points[trials][:, None, :] - points[None, :, :]) ** 2, axis=2)
        candidate_closest = np.minimum(closest[None, :], dist)
        best = int(np.argmin(candidate_closest @ weights))
        chosen.append(int(trials[best]))
        closest = candidate_closest[best]
    return points[np.asarray(chosen)].copy()


def weighted_lloyd(
    points: np.ndarray, weights: np.ndarray, centers: np.ndarray, max_iter: int = 100
) -> np.ndarray:
    """Weighted Lloyd iterations in memory; an empty cluster keeps its centre."""
    centers = centers.copy()
    labels = None
    for _ in range(max_iter):
        d2 = np.sum((points[:, None, :] - centers[None, :, :]) ** 2, axis=2)
        new_labels = np.argmin(d2, axis=1)
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
        for j in range(centers.shape[0]):
            member = labels == j
            mass = weights[member].sum()
            if mass > 0:
                centers[j] = centers[j] + (weights[member] @ (points[member] - centers[j])) / mass
    return centers


def _check_rows_finite(engine: Engine, rows: np.ndarray) -> None:
    """Rows drawn as means must be finite; if not, name the input's bad rows."""
    if not np.all(np.isfinite(rows)):
        bad = engine.reduce("nonfinite")
        raise_if_nonfinite(bad.count, bad.first)


def kmeans_parallel_centers(
    engine: Engine,
    n_components: int,
    seed: int,
    rounds: int = KMEANS_PARALLEL_ROUNDS,
    oversampling_factor: float = 2.0,
) -> np.ndarray:
    """k-means‖ seeding over an engine: ``(K, D)`` centres (see module docstring)."""
    rng = np.random.default_rng([seed, 7])
    centers = rows_at(engine, [rng.integers(engine.n_rows)])
    shift = np.where(np.isfinite(centers[0]), centers[0], 0.0)
    first = engine.reduce("kmeans", centers, shift, "spherical")
    raise_if_nonfinite(first.stats.n_nonfinite, first.stats.first_nonfinite)
    phi = first.inertia
    ell = oversampling_factor * n_components
    for r in range(rounds):
        if not phi > 0:
            break
        drawn = engine.reduce("kmeans_sample", centers, shift, phi, ell, seed, STREAM_SAMPLING + r)
        centers = np.concatenate([centers, drawn.rows])
        if r < rounds - 1:
            phi = float(engine.reduce("kmeans_cost", centers, shift).values[0])
    if centers.shape[0] < n_components:
        extra = rng.choice(engine.n_rows, size=n_components - centers.shape[0], replace=True)
        centers = np.concatenate([centers, rows_at(engine, extra)])
    weights = engine.reduce("nearest_weight", centers, shift).values
    seeds = weighted_kmeans_plusplus(centers, weights, n_components, rng)
    return weighted_lloyd(centers, weights, seeds)


def kmeans_init(
    engine: Engine, n_components: int, covariance_type: str, reg_covar: float, seed: int
) -> Params:
    """k-means‖ seeds, ``LLOYD_PASSES`` Lloyd passes, then the M-step of the labels."""
    centers = kmeans_parallel_centers(engine, n_components, seed)
    return lloyd_params(engine, centers, covariance_type, reg_covar, LLOYD_PASSES)


def lloyd_params(
    engine: Engine, centers: np.ndarray, covariance_type: str, reg_covar: float, passes: int
) -> Params:
    """``passes`` Lloyd passes from ``centers`` over all rows, then the M-step of the
    hard assignment (an empty cluster keeps its centre)."""
    centers = np.asarray(centers, dtype=np.float64)
    shift = centers.mean(axis=0)
    for _ in range(passes):
        result = engine.reduce("kmeans", centers, shift, "spherical")
        s = result.stats
        moved = s.x_sum / np.maximum(s.resp_sum, np.finfo(float).tiny)[:, None]
        centers = np.where((s.resp_sum > 0)[:, None], centers + moved, centers)
    final = engine.reduce("kmeans", centers, shift, covariance_type)
    raise_if_nonfinite(final.stats.n_nonfinite, final.stats.first_nonfinite)
    return m_step(final.stats, reg_covar)


def data_moments(engine: Engine, reference: np.ndarray | None = None) -> Params:
    """The rows' mean and covariance (a one-component full model, no ``reg_covar``
    added), from two passes: the mean about ``reference`` (default the origin),
    then the covariance about the mean, so data far from the origin lose nothing."""
    d = engine.n_features
    ref = np.zeros(d) if reference is None else np.asarray(reference, dtype=np.float64)
    unit = Params.from_covariances(np.ones(1), ref[None, :], np.eye(d)[None], "full")
    first = engine.reduce("estep", unit).to_host()
    raise_if_nonfinite(first.n_nonfinite, first.first_nonfinite)
    if not first.resp_sum[0] > 0:
        raise ValueError("the rows' total weight is zero: no mean or covariance to start from.")
    mean = ref + first.x_sum[0] / first.resp_sum[0]
    centred = Params.from_covariances(np.ones(1), mean[None, :], np.eye(d)[None], "full")
    second = engine.reduce("estep", centred).to_host()
    covariance = second.second[0] / second.resp_sum[0]
    # a tiny ridge keeps the Cholesky factor of a degenerate (e.g. one-row) covariance
    ridge = 1e-10 * max(float(np.trace(covariance)) / d, np.finfo(float).tiny)
    return Params.from_covariances(
        np.ones(1), mean[None, :], (covariance + ridge * np.eye(d))[None], "full"
    )


def moments_centers(
    engine: Engine, n_components: int, seed: int, reference: np.ndarray | None = None
) -> np.ndarray:
    """k-means seeds that move no row: candidates drawn from the Gaussian of the rows'
    mean and covariance, weighted by the row weight nearest to each (one secure sum),
    reclustered in memory (weighted k-means++, then Lloyd)."""
    rng = np.random.default_rng([seed, 13])
    moments = data_moments(engine, reference)
    m = max(64, MOMENT_CANDIDATES_PER_COMPONENT * n_components)
    chol = np.linalg.cholesky(moments.covariances[0])
    candidates = moments.means[0] + rng.standard_normal((m, engine.n_features)) @ chol.T
    weights = engine.reduce("nearest_weight", candidates, moments.means[0]).values
    seeds = weighted_kmeans_plusplus(candidates, weights, n_components, rng)
    return weighted_lloyd(candidates, weights, seeds)


def _refuses_rows(engine: Engine) -> bool:
    refused: frozenset[str] = getattr(engine, "refused_tasks", frozenset())
    return "take_rows" in refused or "kmeans_sample" in refused


def _seeded_params(
    engine: Engine, means: np.ndarray, covariance_type: str, reg_covar: float
) -> Params:
    """scikit-learn's start from single rows: equal weights, covariance reg_covar·I."""
    _check_rows_finite(engine, means)
    k, d = means.shape
    shape = covariance_shape(covariance_type, k, d)
    if covariance_type == "full":
        cov = np.broadcast_to(reg_covar * np.eye(d), shape).copy()
    elif covariance_type == "tied":
        cov = reg_covar * np.eye(d)
    else:
        cov = np.full(shape, float(reg_covar))
    return Params.from_covariances(np.full(k, 1.0 / k), means, cov, covariance_type)


def initial_params(
    engine: Engine,
    init_params: str,
    n_components: int,
    covariance_type: str,
    reg_covar: float,
    seed: int,
    weights_init: Any = None,
    means_init: Any = None,
    precisions_init: Any = None,
) -> Params:
    """Params to start EM from; user-given parts replace the computed ones.

    ``init_params``: ``"kmeans"`` (k-means‖ + Lloyd), ``"k-means++"`` (the
    k-means‖ seeds themselves as means), ``"random"`` (random responsibilities)
    or ``"random_from_data"`` (``K`` distinct random rows as means). The last two
    start, as in scikit-learn, from equal weights and covariance ``reg_covar·I``.
    ``"moments"`` moves no row (:func:`moments_centers`, then Lloyd passes);
    with ``means_init`` it starts from the hard assignment of the rows to those
    means (one pass). On an engine that refuses to move rows (a federation), the
    methods that need rows are refused, unless ``means_init`` is given: the start
    is then that same hard assignment.
    """
    k = n_components
    if weights_init is not None and means_init is not None and precisions_init is not None:
        return Params.from_precisions(weights_init, means_init, precisions_init, covariance_type)
    rng = np.random.default_rng([seed, 11])
    if init_params == "moments" and means_init is not None:
        # the user's means: no seeding needed, only the rows' assignment to them
        init_params = "user_means"
    if init_params in NEEDS_ROWS and _refuses_rows(engine):
        if means_init is None:
            raise ValueError(
                f"init_params={init_params!r} takes rows of the data to the caller, which "
                "this engine refuses (a federation's rows never leave its sites): use "
                "init_params='moments', or give means_init (with or without weights_init "
                "and precisions_init)."
            )
        # the user's means: weights and covariances of the rows nearest to each
        init_params = "user_means"
    if init_params == "user_means":
        params = lloyd_params(engine, np.asarray(means_init), covariance_type, reg_covar, 0)
    elif init_params == "moments":
        reference = getattr(engine, "public_centre", None)
        centers = moments_centers(engine, k, seed, reference)
        params = lloyd_params(engine, centers, covariance_type, reg_covar, MOMENT_LLOYD_PASSES)
    elif init_params == "kmeans":
        params = kmeans_init(engine, k, covariance_type, reg_covar, seed)
    elif init_params == "k-means++":
        params = _seeded_params(
            engine, kmeans_parallel_centers(engine, k, seed), covariance_type, reg_covar
        )
    elif init_params == "random_from_data":
        rows = np.sort(rng.choice(engine.n_rows, size=k, replace=False))
        params = _seeded_params(engine, rows_at(engine, rows), covariance_type, reg_covar)
    elif init_params == "random":
        reference = np.repeat(rows_at(engine, [0]), k, axis=0)
        reference = np.where(np.isfinite(reference), reference, 0.0)
        stats = engine.reduce("random_resp", reference, covariance_type, seed)
        raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
        params = m_step(stats, reg_covar)
    else:
        raise ValueError(
            f"init_params={init_params!r} is not one of "
            "'kmeans', 'k-means++', 'random', 'random_from_data', 'moments'."
        )
    weights = params.weights if weights_init is None else check_weights(weights_init, k)
    means = params.means if means_init is None else means_init
    if precisions_init is not None:
        return Params.from_precisions(weights, means, precisions_init, covariance_type)
    return Params.from_covariances(weights, means, params.covariances, covariance_type)
