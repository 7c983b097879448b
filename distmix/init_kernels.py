"""Per-block kernels of initialisation: hard k-means assignment, k-means‖ sampling,
random responsibilities.

Layer: pure kernels beside :mod:`distmix.estep` (array-API, NumPy or CuPy
blocks); they know nothing of engines. :mod:`distmix.init` drives them through
the named tasks of :mod:`distmix.tasks`.

Random numbers that belong to rows (k-means‖ sampling, random
responsibilities) are drawn from streams keyed by ``(seed, purpose,
row // ROW_STREAM_ROWS)``, so the initialisation depends on the rows and the
seed only, never on how the rows are cut into blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distmix.estep import centre, device_kwargs, moments, namespace, prepare_block, resp_stats
from distmix.nonfinite import NonFinite
from distmix.results import KMeansStats, Rows, Totals
from distmix.suffstats import SuffStats, _to_numpy

ROW_STREAM_ROWS = 8192

# purposes of the per-row random streams
STREAM_RANDOM_RESP = 0
STREAM_SAMPLING = 1  # + round number


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
    components = xp.arange(k, **device_kwargs(x))
    onehot = xp.astype(labels[None, :] == components[:, None], xp.float64) * w[None, :]
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


def cost_block(block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray) -> Totals:
    """``[Σ w min_c d²(x, c)]`` over the block."""
    xp = namespace(block)
    _, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    return Totals(np.atleast_1d(_to_numpy(xp.sum(w * xp.min(_sq_distances(xp, xs, cs), axis=1)))))


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
) -> Rows:
    """k-means‖ draw: each row with probability ``min(1, ℓ·w·d²/φ)``."""
    xp = namespace(block)
    x, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    d2 = _to_numpy(xp.min(_sq_distances(xp, xs, cs), axis=1) * w)
    prob = np.minimum(1.0, oversampling * d2 / phi)
    chosen = np.flatnonzero(row_uniforms(seed, stream, offset, offset + d2.shape[0]) < prob)
    if not chosen.size:
        return Rows(chosen + offset, np.empty((0, x.shape[1])))
    index = xp.asarray(chosen, **device_kwargs(x))
    rows = _to_numpy(xp.take(x, index, axis=0))  # only the drawn rows leave the device
    return Rows(chosen + offset, rows)


def nearest_weight_block(
    block: Any, w: Any, offset: int, centers: np.ndarray, shift: np.ndarray
) -> Totals:
    """Total row weight nearest to each centre, shape ``(m,)``."""
    xp = namespace(block)
    _, xs, cs, w, _, _ = _shifted(xp, block, w, offset, centers, shift)
    labels = xp.argmin(_sq_distances(xp, xs, cs), axis=1)
    centres = xp.arange(cs.shape[0], **device_kwargs(cs))
    onehot = xp.astype(labels[None, :] == centres[:, None], xp.float64)
    return Totals(_to_numpy(xp.sum(onehot * w[None, :], axis=1)))


def random_resp_block(
    block: Any, w: Any, offset: int, reference: np.ndarray, covariance_type: str, seed: int
) -> SuffStats:
    """Statistics for uniform random responsibilities (normalised per row)."""
    xp = namespace(block)
    k = reference.shape[0]
    u = row_uniforms(seed, STREAM_RANDOM_RESP, offset, offset + block.shape[0], width=k)
    resp = u / u.sum(axis=1, keepdims=True)
    return resp_stats(
        block, xp.asarray(resp, **device_kwargs(block)), reference, covariance_type, w, offset
    )


def nonfinite_block(block: Any, w: Any, offset: int) -> NonFinite:
    """The block's non-finite rows (a validation-only pass)."""
    xp = namespace(block)
    _, _, n_bad, first = prepare_block(xp, block, w, offset)
    return NonFinite(float(_to_numpy(n_bad)), float(_to_numpy(first)))


def take_rows_block(block: Any, w: Any, offset: int, indices: np.ndarray) -> Rows:
    """The block's rows among the global ``indices`` (sorted), as float64 host rows."""
    idx = np.asarray(indices, dtype=np.int64)
    n = int(block.shape[0])
    mine = idx[(idx >= offset) & (idx < offset + n)]
    if not mine.size:
        return Rows.empty(int(block.shape[1]))
    xp = namespace(block)
    local = xp.asarray(mine - offset, **device_kwargs(block))
    return Rows(mine, _to_numpy(xp.take(block, local, axis=0)).reshape(mine.size, -1))
