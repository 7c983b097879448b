"""Initial Params, over any engine: k-means (k-means‖ + Lloyd), k-means++, random.

Every method only needs ``engine.map_reduce`` passes and a few
``engine.take_rows``, so it runs the same way on an in-memory array, on Dask
blocks or out of core. Random numbers that belong to rows (k-means‖ sampling,
random responsibilities) are drawn from streams keyed by ``(seed, purpose,
row // ROW_STREAM_ROWS)``, so the initialisation depends on the rows and the
seed only, never on how the rows are cut into blocks.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from distmix.chunks import NonFinite, raise_if_nonfinite
from distmix.engines.base import Engine
from distmix.estep import centre, device_kwargs, moments, namespace, prepare_block, resp_stats
from distmix.mstep import m_step
from distmix.params import Params, check_weights, covariance_shape
from distmix.suffstats import SuffStats, _to_numpy

ROW_STREAM_ROWS = 8192
KMEANS_PARALLEL_ROUNDS = 5
LLOYD_PASSES = 2

# purposes of the per-row random streams
_STREAM_RANDOM_RESP = 0
_STREAM_SAMPLING = 1  # + round number


def row_uniforms(
    seed: int, stream: int, start: int, stop: int, width: int | None = None
) -> np.ndarray:
    """Uniform [0, 1) numbers for rows ``start:stop`` that depend only on the row index."""
    size = ROW_STREAM_ROWS
    pieces = []
    for j in range(start // size, (stop - 1) // size + 1):
        gen = np.random.default_rng([seed, stream, j])
        draws = gen.random((size,) if width is None else (size, width))
        lo, hi = max(start, j * size) - j * size, min(stop, (j + 1) * size) - j * size
        pieces.append(draws[lo:hi])
    if not pieces:
        return np.empty((0,) if width is None else (0, width))
    return np.concatenate(pieces)


def _sq_distances(xp: Any, x: Any, centers: Any) -> Any:
    """Squared distances ``(n, m)`` by one matrix product (x and centers pre-shifted)."""
    cross = xp.matmul(x, xp.matrix_transpose(centers))
    d2 = xp.sum(x * x, axis=1)[:, None] - 2.0 * cross + xp.sum(centers * centers, axis=1)[None, :]
    return xp.clip(d2, 0.0, None)


def _shifted(
    xp: Any, block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray
) -> tuple:
    """Prepared block and centres, both moved by ``shift`` (a point near the data).

    Shifting first keeps ``‖x‖² − 2x·c + ‖c‖²`` free of cancellation for data far
    from the origin.
    """
    x, w, n_bad, first = prepare_block(xp, block, w, offset)
    dev = device_kwargs(x)
    s = xp.asarray(shift, dtype=xp.float64, **dev)
    c = xp.asarray(centers, dtype=xp.float64, **dev) - s[None, :]
    return x, x - s[None, :], c, w, n_bad, first


@dataclass(frozen=True)
class KMeansStats:
    """SuffStats of a hard assignment plus its inertia ``Σ w min_k ‖x − c_k‖²``."""

    stats: SuffStats
    inertia: float

    def __add__(self, other: KMeansStats) -> KMeansStats:
        return KMeansStats(self.stats + other.stats, self.inertia + other.inertia)

    def to_host(self) -> KMeansStats:
        return KMeansStats(self.stats.to_host(), float(_to_numpy(self.inertia)))


@dataclass(frozen=True)
class Candidates:
    """Rows drawn by k-means‖ sampling, in row order."""

    rows: np.ndarray
    index: np.ndarray

    def __add__(self, other: Candidates) -> Candidates:
        return Candidates(
            np.concatenate([self.rows, other.rows]), np.concatenate([self.index, other.index])
        )


# -- block functions: fn(block, w, offset, *args) ----------------------------
def kmeans_block(
    block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray, covariance_type: str
) -> KMeansStats:
    """Assign rows to their nearest centre; statistics of that hard assignment."""
    xp = namespace(block)
    x, xs, cs, w, n_bad, first = _shifted(xp, block, w, offset, centers, shift)
    d2 = _sq_distances(xp, xs, cs)
    labels = xp.argmin(d2, axis=1)
    k = cs.shape[0]
    onehot = xp.astype(labels[None, :] == xp.arange(k)[:, None], xp.float64) * w[None, :]
    ref = xp.asarray(centers, dtype=xp.float64, **device_kwargs(x))
    resp_sum, x_sum, second = moments(xp, centre(xp, x, ref), onehot, covariance_type)
    stats = SuffStats(
        covariance_type,  # type: ignore[arg-type]
        np.asarray(centers, dtype=np.float64),
        resp_sum,
        x_sum,
        second,
        float(x.shape[0]),
        0.0,
        n_bad,
        first,
    )
    return KMeansStats(stats, xp.sum(w * xp.min(d2, axis=1)))


def cost_block(
    block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """``[Σ w min_c d²(x, c)]`` over the block."""
    xp = namespace(block)
    _, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    return np.atleast_1d(_to_numpy(xp.sum(w * xp.min(_sq_distances(xp, xs, cs), axis=1))))


def sample_block(
    block: Any,
    w: Any,
    offset: int,
    centers: np.ndarray,
    shift: np.ndarray,
    phi: float,
    oversampling: float,
    seed: int,
    stream: int,
) -> Candidates:
    """k-means‖ draw: each row with probability ``min(1, ℓ·w·d²/φ)``."""
    xp = namespace(block)
    x, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    d2 = _to_numpy(xp.min(_sq_distances(xp, xs, cs), axis=1) * w)
    prob = np.minimum(1.0, oversampling * d2 / phi)
    chosen = np.flatnonzero(row_uniforms(seed, stream, offset, offset + d2.shape[0]) < prob)
    if not chosen.size:
        return Candidates(np.empty((0, x.shape[1])), chosen + offset)
    index = xp.asarray(chosen, **device_kwargs(x))
    rows = _to_numpy(xp.take(x, index, axis=0))  # only the drawn rows leave the device
    return Candidates(rows, chosen + offset)


def nearest_weight_block(
    block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """Total row weight nearest to each centre, shape ``(m,)``."""
    xp = namespace(block)
    _, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    labels = xp.argmin(_sq_distances(xp, xs, cs), axis=1)
    onehot = xp.astype(labels[None, :] == xp.arange(cs.shape[0])[:, None], xp.float64)
    return _to_numpy(xp.sum(onehot * w[None, :], axis=1))


def random_resp_block(
    block: Any, w: Any, offset: int, reference: np.ndarray, covariance_type: str, seed: int
) -> SuffStats:
    """Statistics for uniform random responsibilities (normalised per row)."""
    xp = namespace(block)
    k = reference.shape[0]
    u = row_uniforms(seed, _STREAM_RANDOM_RESP, offset, offset + block.shape[0], width=k)
    resp = u / u.sum(axis=1, keepdims=True)
    return resp_stats(
        block, xp.asarray(resp, **device_kwargs(block)), reference, covariance_type, w, offset
    )


def nonfinite_block(block: Any, w: Any, offset: int) -> NonFinite:
    """The block's non-finite rows (a validation-only pass)."""
    xp = namespace(block)
    _, _, n_bad, first = prepare_block(xp, block, w, offset)
    return NonFinite(float(_to_numpy(n_bad)), float(_to_numpy(first)))


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
        bad = engine.map_reduce(nonfinite_block)
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
    centers = engine.take_rows(np.array([rng.integers(engine.n_rows)]))
    shift = np.where(np.isfinite(centers[0]), centers[0], 0.0)
    first = engine.map_reduce(kmeans_block, centers, shift, "spherical")
    raise_if_nonfinite(first.stats.n_nonfinite, first.stats.first_nonfinite)
    phi = first.inertia
    ell = oversampling_factor * n_components
    for r in range(rounds):
        if not phi > 0:
            break
        drawn = engine.map_reduce(
            sample_block, centers, shift, phi, ell, seed, _STREAM_SAMPLING + r
        )
        centers = np.concatenate([centers, drawn.rows])
        if r < rounds - 1:
            phi = float(engine.map_reduce(cost_block, centers, shift)[0])
    if centers.shape[0] < n_components:
        extra = rng.choice(engine.n_rows, size=n_components - centers.shape[0], replace=True)
        centers = np.concatenate([centers, engine.take_rows(extra)])
    weights = engine.map_reduce(nearest_weight_block, centers, shift)
    seeds = weighted_kmeans_plusplus(centers, weights, n_components, rng)
    return weighted_lloyd(centers, weights, seeds)


def kmeans_init(
    engine: Engine, n_components: int, covariance_type: str, reg_covar: float, seed: int
) -> Params:
    """k-means‖ seeds, ``LLOYD_PASSES`` Lloyd passes, then the M-step of the labels."""
    centers = kmeans_parallel_centers(engine, n_components, seed)
    shift = centers.mean(axis=0)
    for _ in range(LLOYD_PASSES):
        result = engine.map_reduce(kmeans_block, centers, shift, "spherical")
        s = result.stats
        moved = s.x_sum / np.maximum(s.resp_sum, np.finfo(float).tiny)[:, None]
        centers = np.where((s.resp_sum > 0)[:, None], centers + moved, centers)
    final = engine.map_reduce(kmeans_block, centers, shift, covariance_type)
    return m_step(final.stats, reg_covar)


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
    """
    k = n_components
    if weights_init is not None and means_init is not None and precisions_init is not None:
        return Params.from_precisions(weights_init, means_init, precisions_init, covariance_type)
    rng = np.random.default_rng([seed, 11])
    if init_params == "kmeans":
        params = kmeans_init(engine, k, covariance_type, reg_covar, seed)
    elif init_params == "k-means++":
        params = _seeded_params(
            engine, kmeans_parallel_centers(engine, k, seed), covariance_type, reg_covar
        )
    elif init_params == "random_from_data":
        rows = np.sort(rng.choice(engine.n_rows, size=k, replace=False))
        params = _seeded_params(engine, engine.take_rows(rows), covariance_type, reg_covar)
    elif init_params == "random":
        reference = np.repeat(engine.take_rows(np.array([0])), k, axis=0)
        reference = np.where(np.isfinite(reference), reference, 0.0)
        stats = engine.map_reduce(random_resp_block, reference, covariance_type, seed)
        raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
        params = m_step(stats, reg_covar)
    else:
        raise ValueError(
            f"init_params={init_params!r} is not one of "
            "'kmeans', 'k-means++', 'random', 'random_from_data'."
        )
    weights = params.weights if weights_init is None else check_weights(weights_init, k)
    means = params.means if means_init is None else means_init
    if precisions_init is not None:
        return Params.from_precisions(weights, means, precisions_init, covariance_type)
    return Params.from_covariances(weights, means, params.covariances, covariance_type)
