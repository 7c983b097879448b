"""Fused compiled E-step kernels for NumPy blocks (numba): one pass per tile of rows.

Layer: a kernel, beside :mod:`distmix.estep` (which stays the reference these
are tested against, and the kernel of every other array namespace). Pure: arrays
in, arrays out; no engine, no Dask, no file.

Where the array-API kernel makes several passes over ``(K, n, D)`` temporaries,
these kernels read each tile of rows (64 to 256) once into a transposed ``(D, tile)``
buffer that stays in cache, and for each component compute the Mahalanobis
terms, then the log-sum-exp and responsibilities of the tile, then the
responsibility-weighted sums ``S0``, ``S1`` and the second moment, all about the
component's mean (never ``Σ x xᵀ − N μ μᵀ``: data far from the origin lose
nothing). Statistics accumulate in float64 whatever the input dtype.

Threads: one layer of parallelism at a time, and it is the engine's. A kernel
runs serially on its block and releases the GIL, so the local engine's thread
pool and a Dask worker's threads run blocks side by side, each kernel on one
core (as BLAS is held to one thread there), and the engine adds the blocks'
results in block order: results do not depend on the number of threads. Numba's
own parallel loops are not used: its default threading layer (workqueue, the
one pip wheels have) aborts when parallel kernels are launched from several
threads at once, which is exactly what engines do.

``fastmath`` allows contraction and reassociation only (the sums over a tile's
rows vectorise): results are deterministic for a given build, not necessarily
bit-identical across CPUs or LLVM versions.

Semantics match :func:`distmix.estep.chunk_stats`: rows holding NaN or ±inf add
nothing and are counted (and the first one's global index kept); a row whose
every density underflows adds nothing to the moments and ``−inf`` to the
log-likelihood if its weight is positive; rows of weight 0 add exactly 0.

Measured design choices (tile transposed, components outer, sums over rows as
reductions) are those of ``shared/notes/fused-kernel.md``.
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import numba
import numpy as np

from distmix.nonfinite import NonFinite
from distmix.params import Params
from distmix.results import KMeansStats, LogLikelihoodTotal, Totals
from distmix.suffstats import SuffStats

TILE_BYTES = 32 * 1024  # a tile's transposed rows (D4 × tile float64) held in L1


def _tile_rows(d4: int) -> int:
    """Rows per tile: the most (a power of two, 64 to 256) whose transposed rows take
    ``TILE_BYTES`` (D = 16: 256 rows). Measured, one thread, ns/row against 64-row
    tiles: 1,000,000 × 16, K = 8: diag 101 → 80, spherical 88 → 69, full 262 → 220;
    at D = 64 longer tiles were slower (diag 501 → 550), so 64 there."""
    tile = 256
    while tile > 64 and d4 * tile * 8 > TILE_BYTES:
        tile //= 2
    return tile


_FASTMATH = {"contract", "reassoc"}
_LOG_2PI = math.log(2.0 * math.pi)
_FULL, _TIED, _DIAG, _SPHERICAL = 0, 1, 2, 3
COVARIANCE_CODES = {"full": _FULL, "tied": _TIED, "diag": _DIAG, "spherical": _SPHERICAL}
#: the k-means passes without moments (cost, counts): none of the types' code compiled
_NO_MOMENTS = 4


@numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _load_tile(x, w, start, stop, xt, wt, n_bad, first):  # pragma: no cover (compiled)
    """Rows ``start:stop`` transposed into ``xt (D, tile)``, weights into ``wt``;
    non-finite rows zeroed with weight 0. Returns the running ``(bad rows, first
    bad row)``, given them so far."""
    tile = xt.shape[1]
    d = x.shape[1]
    for t in range(tile):
        row = start + t
        if row >= stop:
            for j in range(d):
                xt[j, t] = 0.0
            wt[t] = 0.0
            continue
        check = 0.0  # v · 0 is 0 for finite v, NaN for NaN and ±inf: no branch per value
        for j in range(d):
            v = np.float64(x[row, j])
            xt[j, t] = v
            check += v * 0.0
        if check == 0.0:
            wt[t] = w[row]
        else:
            for j in range(d):
                xt[j, t] = 0.0
            wt[t] = 0.0
            n_bad += 1
            if first < 0:
                first = row
    return n_bad, first


@numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _maha(kind, k, xt, mu, prec, diff, acc, out):  # pragma: no cover (compiled)
    """``out[t] = ‖(x_t − μ_k) U_k‖²`` for the tile; ``diff`` gets ``x − μ_k``."""
    d, tile = xt.shape
    for t in range(tile):
        out[t] = 0.0
    if kind == _FULL or kind == _TIED:
        for j in range(d):
            m = mu[k, j]
            for t in range(tile):
                diff[j, t] = xt[j, t] - m
        # two columns of U by four of its rows per sweep over the tile (U and the
        # centred tile are zero-padded to a multiple of 4, so no bound is checked)
        c = k if kind == _FULL else 0
        for j in range(0, d, 4):
            for t in range(tile):
                acc[0, t] = 0.0
                acc[1, t] = 0.0
                acc[2, t] = 0.0
                acc[3, t] = 0.0
            for i in range(0, j + 4, 4):
                a0 = prec[c, i, j]
                a1 = prec[c, i + 1, j]
                a2 = prec[c, i + 2, j]
                a3 = prec[c, i + 3, j]
                b0 = prec[c, i, j + 1]
                b1 = prec[c, i + 1, j + 1]
                b2 = prec[c, i + 2, j + 1]
                b3 = prec[c, i + 3, j + 1]
                e0 = prec[c, i, j + 2]
                e1 = prec[c, i + 1, j + 2]
                e2 = prec[c, i + 2, j + 2]
                e3 = prec[c, i + 3, j + 2]
                f0 = prec[c, i, j + 3]
                f1 = prec[c, i + 1, j + 3]
                f2 = prec[c, i + 2, j + 3]
                f3 = prec[c, i + 3, j + 3]
                for t in range(tile):
                    v0 = diff[i, t]
                    v1 = diff[i + 1, t]
                    v2 = diff[i + 2, t]
                    v3 = diff[i + 3, t]
                    acc[0, t] += v0 * a0 + v1 * a1 + v2 * a2 + v3 * a3
                    acc[1, t] += v0 * b0 + v1 * b1 + v2 * b2 + v3 * b3
                    acc[2, t] += v0 * e0 + v1 * e1 + v2 * e2 + v3 * e3
                    acc[3, t] += v0 * f0 + v1 * f1 + v2 * f2 + v3 * f3
            for t in range(tile):
                out[t] += (acc[0, t] * acc[0, t] + acc[1, t] * acc[1, t]) + (
                    acc[2, t] * acc[2, t] + acc[3, t] * acc[3, t]
                )
    else:  # diag and spherical: centring and distance in one sweep per feature (the
        # centred values are not kept: the moments centre them again, from cache)
        # four features per sweep (the tile, means and precisions are zero-padded)
        for j in range(0, d, 4):
            m0 = mu[k, j]
            m1 = mu[k, j + 1]
            m2 = mu[k, j + 2]
            m3 = mu[k, j + 3]
            if kind == _DIAG:
                u0 = prec[k, 0, j] * prec[k, 0, j]
                u1 = prec[k, 0, j + 1] * prec[k, 0, j + 1]
                u2 = prec[k, 0, j + 2] * prec[k, 0, j + 2]
                u3 = prec[k, 0, j + 3] * prec[k, 0, j + 3]
                for t in range(tile):
                    v0 = xt[j, t] - m0
                    v1 = xt[j + 1, t] - m1
                    v2 = xt[j + 2, t] - m2
                    v3 = xt[j + 3, t] - m3
                    out[t] += v0 * v0 * u0 + v1 * v1 * u1 + v2 * v2 * u2 + v3 * v3 * u3
            else:  # spherical: ‖x − μ_k‖² (the caller scales it, and keeps it for S2)
                for t in range(tile):
                    v0 = xt[j, t] - m0
                    v1 = xt[j + 1, t] - m1
                    v2 = xt[j + 2, t] - m2
                    v3 = xt[j + 3, t] - m3
                    out[t] += v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3


# exp(a) for a <= 0 in a loop LLVM can vectorise (numba's exp is a scalar call):
# Cody and Waite's reduction a = n ln 2 + r, |r| <= ln 2 / 2, the Taylor polynomial
# of degree 13 (truncation below 1e-17 relative), times 2**n built from its bits
# (measured 2.4 ns per value against 4.8 for a scalar call).
# Below -708 (2**n subnormal) the result is 0. No reassociation here: it would undo
# the two-part reduction.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_INV_LN2 = 1.44269504088896338700e00
_EXP_FLOOR = -708.0
_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(14))
_EXPONENT_MAGIC = 1023.0 + 1.5 * 2.0**52


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _exp_shifted(a, shift, out):  # pragma: no cover (compiled)
    """``out[t] = exp(a[t] − shift[t])`` (arguments <= 0; 0 below −708).

    2**n without a float-to-integer conversion (which AVX2 cannot vectorise): the
    float ``n + 1023 + 1.5·2**52`` holds ``n + 1023`` in its low mantissa bits, and
    shifting its bits left by 52 leaves exactly the bits of ``2.0**n``.
    """
    c = _TAYLOR
    for t in range(a.shape[0]):
        x = a[t] - shift[t]
        keep = x >= _EXP_FLOOR
        x = max(x, _EXP_FLOOR)
        n = math.floor(x * _INV_LN2 + 0.5)
        r = (x - n * _LN2_HI) - n * _LN2_LO
        p = c[13]
        p = p * r + c[12]
        p = p * r + c[11]
        p = p * r + c[10]
        p = p * r + c[9]
        p = p * r + c[8]
        p = p * r + c[7]
        p = p * r + c[6]
        p = p * r + c[5]
        p = p * r + c[4]
        p = p * r + c[3]
        p = p * r + c[2]
        p = p * r + c[1]
        p = p * r + c[0]
        power = np.int64(np.float64(n + _EXPONENT_MAGIC).view(np.int64) << 52).view(np.float64)
        out[t] = p * power if keep else 0.0


# log(a) for a >= 0 in a loop LLVM can vectorise (numba's log is a scalar call, ~9 ns
# per row of a tile at K = 8): a = 2**e · m with m in [√½, √2), read from the bits,
# then log m = 2 atanh(s), s = (m − 1)/(m + 1), |s| <= 0.1716, by its odd series to
# s**23 (truncation below 1e-18 relative). 0 gives −inf. The totals it is used on
# are normal numbers (1 <= total <= K, or 0).
_SQRT2 = math.sqrt(2.0)
_ATANH = tuple(2.0 / (2 * i + 1) for i in range(12))
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52
_TWO52 = 2.0**52
_TWO52_BITS = 0x4330000000000000  # the bits of 2**52: OR-ing in an integer < 2**52 adds it


@numba.njit(cache=True, error_model="numpy", fastmath={"contract"}, inline="always")
def _log_positive(a, out):  # pragma: no cover (compiled)
    """``out[t] = log(a[t])`` for ``a[t]`` normal and positive, or 0 (gives −inf)."""
    c = _ATANH
    for t in range(a.shape[0]):
        bits = np.float64(a[t]).view(np.int64)
        # the exponent as a float without an integer-to-float conversion (not in AVX2)
        e = np.int64((bits >> 52) | _TWO52_BITS).view(np.float64) - (_TWO52 + 1023.0)
        m = np.int64((bits & _MANTISSA) | _ONE_BITS).view(np.float64)
        big = m > _SQRT2
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        z = s * s
        p = c[11]
        p = p * z + c[10]
        p = p * z + c[9]
        p = p * z + c[8]
        p = p * z + c[7]
        p = p * z + c[6]
        p = p * z + c[5]
        p = p * z + c[4]
        p = p * z + c[3]
        p = p * z + c[2]
        p = p * z + c[1]
        p = p * z + c[0]
        value = e * _LN2_HI + (s * p + e * _LN2_LO)
        out[t] = value if a[t] > 0.0 else -np.inf


@numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _tile_densities(  # pragma: no cover (compiled)
    kind, xt, mu, prec, log_const, diffs, acc4, lp, sq, peak, total_t, ework
):
    """Each component's density of each row of the tile, relative to the row's
    largest (``lp[k, t] = exp(log p_k(x_t) − peak[t])``), and their sums ``total_t``.
    Full/tied keep each component's centred tile in ``diffs``; spherical keeps the
    squared distances in ``sq``.
    """
    tile = xt.shape[1]
    k_count = mu.shape[0]
    for k in range(k_count):
        _maha(kind, k, xt, mu, prec, diffs[min(k, diffs.shape[0] - 1)], acc4, lp[k])
        if kind == _SPHERICAL:  # S2 is Σ r ‖x − μ_k‖²: kept from here
            u2 = prec[k, 0, 0] * prec[k, 0, 0]
            for t in range(tile):
                sq[k, t] = lp[k, t]
                lp[k, t] = log_const[k] - 0.5 * u2 * lp[k, t]
        else:
            for t in range(tile):
                lp[k, t] = log_const[k] - 0.5 * lp[k, t]
    # log-sum-exp over components; lp becomes the responsibilities (times w)
    for t in range(tile):
        peak[t] = -np.inf
    for k in range(k_count):
        for t in range(tile):
            peak[t] = max(peak[t], lp[k, t])
    for t in range(tile):
        if not math.isfinite(peak[t]):
            peak[t] = 0.0
        total_t[t] = 0.0
    for k in range(k_count):
        # into a buffer of its own: in place, the loop would not vectorise (the
        # compiler's overlap check sends aliased arrays down the scalar path)
        _exp_shifted(lp[k], peak, ework)
        for t in range(tile):
            lp[k, t] = ework[t]
            total_t[t] += ework[t]


@numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _tile_moments(kind, xt, mu, diffs, lp, sq, rd4, s0, s1, s2):  # pragma: no cover (compiled)
    """Add the tile's moments about each component's mean, ``lp[k, t]`` being the
    weight of row t in component k (responsibility times row weight): ``S0``,
    ``S1`` and the second moment (full/tied from the centred tiles in ``diffs``,
    diag from ``xt``, spherical from the squared distances in ``sq``)."""
    tile = xt.shape[1]
    d4 = xt.shape[0]
    d = s1.shape[1]
    k_count = mu.shape[0]
    for k in range(k_count):
        total = 0.0
        for t in range(tile):
            total += lp[k, t]
        s0[k] += total
        if kind == _SPHERICAL:
            # S2 from the squared distances (r > 0 only: a far row's may be inf)
            second = 0.0
            for t in range(tile):
                r = lp[k, t]
                second += r * sq[k, t] if r > 0.0 else 0.0
            s2[k, 0, 0] += second
        if kind == _DIAG or kind == _SPHERICAL:
            # the first (and diag's second) moments, four features per sweep (padded
            # features add exact zeros); r · x first (r = 0 must meet a finite value,
            # never the square of a far row's difference)
            for j in range(0, d4, 4):
                m0 = mu[k, j]
                m1 = mu[k, j + 1]
                m2 = mu[k, j + 2]
                m3 = mu[k, j + 3]
                f0 = f1 = f2 = f3 = 0.0
                q0 = q1 = q2 = q3 = 0.0
                if kind == _DIAG:
                    for t in range(tile):
                        r = lp[k, t]
                        v0 = xt[j, t] - m0
                        v1 = xt[j + 1, t] - m1
                        v2 = xt[j + 2, t] - m2
                        v3 = xt[j + 3, t] - m3
                        r0 = r * v0
                        r1 = r * v1
                        r2 = r * v2
                        r3 = r * v3
                        f0 += r0
                        f1 += r1
                        f2 += r2
                        f3 += r3
                        q0 += r0 * v0
                        q1 += r1 * v1
                        q2 += r2 * v2
                        q3 += r3 * v3
                    s2[k, j, 0] += q0
                    s2[k, j + 1, 0] += q1
                    s2[k, j + 2, 0] += q2
                    s2[k, j + 3, 0] += q3
                else:
                    for t in range(tile):
                        r = lp[k, t]
                        f0 += r * (xt[j, t] - m0)
                        f1 += r * (xt[j + 1, t] - m1)
                        f2 += r * (xt[j + 2, t] - m2)
                        f3 += r * (xt[j + 3, t] - m3)
                s1[k, j] += f0
                s1[k, j + 1] += f1
                s1[k, j + 2] += f2
                s1[k, j + 3] += f3
            continue
        tk = 0 if kind == _TIED else k
        diff = diffs[k]
        # four rows by four columns of the (upper) second moment per sweep over the
        # tile, and the first moments with the rows' r · x; r · x first (r = 0 meets
        # finite values only)
        for a in range(0, d, 4):
            f0 = f1 = f2 = f3 = 0.0
            for t in range(tile):
                r = lp[k, t]
                q0 = r * diff[a, t]
                q1 = r * diff[a + 1, t]
                q2 = r * diff[a + 2, t]
                q3 = r * diff[a + 3, t]
                rd4[0, t] = q0
                rd4[1, t] = q1
                rd4[2, t] = q2
                rd4[3, t] = q3
                f0 += q0
                f1 += q1
                f2 += q2
                f3 += q3
            s1[k, a] += f0
            s1[k, a + 1] += f1
            s1[k, a + 2] += f2
            s1[k, a + 3] += f3
            for b in range(a, d4, 4):
                c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = 0.0
                c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = 0.0
                for t in range(tile):
                    e0 = diff[b, t]
                    e1 = diff[b + 1, t]
                    e2 = diff[b + 2, t]
                    e3 = diff[b + 3, t]
                    g0 = rd4[0, t]
                    g1 = rd4[1, t]
                    g2 = rd4[2, t]
                    g3 = rd4[3, t]
                    c00 += g0 * e0
                    c01 += g0 * e1
                    c02 += g0 * e2
                    c03 += g0 * e3
                    c10 += g1 * e0
                    c11 += g1 * e1
                    c12 += g1 * e2
                    c13 += g1 * e3
                    c20 += g2 * e0
                    c21 += g2 * e1
                    c22 += g2 * e2
                    c23 += g2 * e3
                    c30 += g3 * e0
                    c31 += g3 * e1
                    c32 += g3 * e2
                    c33 += g3 * e3
                s2[tk, a, b] += c00
                s2[tk, a, b + 1] += c01
                s2[tk, a, b + 2] += c02
                s2[tk, a, b + 3] += c03
                s2[tk, a + 1, b] += c10
                s2[tk, a + 1, b + 1] += c11
                s2[tk, a + 1, b + 2] += c12
                s2[tk, a + 1, b + 3] += c13
                s2[tk, a + 2, b] += c20
                s2[tk, a + 2, b + 1] += c21
                s2[tk, a + 2, b + 2] += c22
                s2[tk, a + 2, b + 3] += c23
                s2[tk, a + 3, b] += c30
                s2[tk, a + 3, b + 1] += c31
                s2[tk, a + 3, b + 2] += c32
                s2[tk, a + 3, b + 3] += c33


@numba.njit(cache=True, error_model="numpy", inline="always")
def _work_buffers(kind, k_count, d4, tile):  # pragma: no cover (compiled)
    """A kernel's per-tile buffers: the transposed rows (padded features stay zero),
    their weights, every component's centred tile (full/tied: kept from the
    distances to the moments), the blocked sums' rows, the log-densities (then
    responsibilities), spherical's squared distances, and per-row scratch."""
    xt = np.zeros((d4, tile))
    wt = np.empty(tile)
    diffs = np.zeros((k_count if kind == _FULL or kind == _TIED else 1, d4, tile))
    acc4 = np.empty((4, tile))
    rd4 = np.empty((4, tile))
    lp = np.empty((k_count, tile))
    sq = np.empty((k_count if kind == _SPHERICAL else 1, tile))
    return (
        xt,
        wt,
        diffs,
        acc4,
        rd4,
        lp,
        sq,
        np.empty(tile),
        np.empty(tile),
        np.empty(tile),
        np.empty(tile),
    )


SCORE, PROBA, PREDICT = 0, 1, 2
KMEANS_COST, KMEANS_COUNTS, KMEANS_STATS = 0, 1, 2


def _make_kernels(tile: int, covariance: int) -> tuple:
    """The three kernels for tiles of ``tile`` rows: a compile-time constant (LLVM
    then knows every inner loop's trip count; a tile length read at run time cost
    10 % at D = 64, K = 16, full). One set per tile length, compiled on first use
    and cached on disk like the rest (numba caches closures by their constants)."""

    @numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, nogil=True)
    def _estep(kind, x, w, mu, prec, log_const, moments):  # pragma: no cover (compiled)
        """The statistics of a block, tile by tile (serial; the GIL is released).

        ``prec``: (K, D4, D4) full and (1, D4, D4) tied (zero-padded to D4, a multiple
        of 4), (K, 1, D) diag, (K, 1, 1) spherical.
        ``moments=False`` stops after the log-likelihood (the ``log_likelihood`` task).
        Returns ``(S0 (K,), S1 (K, D), S2, log-likelihood, Σ w of the finite rows,
        n_bad, first bad row)`` with
        ``S2`` of shape (K, D4, D4) for full and tied (D4: D rounded up to a multiple
        of 4; tied: summed into [0]; read the upper triangle of [:D, :D]), (K, D4, 1)
        for diag, (K, 1, 1) for spherical.
        """
        kind = covariance  # a compile-time constant: the other types' code is dropped
        n, d = x.shape
        k_count = mu.shape[0]
        d4 = (d + 3) // 4 * 4  # rows of the centred tiles, zero-padded for blocked sums
        s2_rows = d4 if kind != _SPHERICAL else 1
        s2_cols = d4 if kind == _FULL or kind == _TIED else 1
        s0 = np.zeros(k_count)
        s1 = np.zeros((k_count, d4))
        s2 = np.zeros((k_count, s2_rows, s2_cols))
        loglik = 0.0
        weight_total = 0.0
        n_bad = 0
        first_bad = -1
        xt, wt, diffs, acc4, rd4, lp, sq, peak, total_t, ework, logt = _work_buffers(
            kind, k_count, d4, tile
        )
        for start in range(0, n, tile):
            n_bad, first_bad = _load_tile(x, w, start, n, xt, wt, n_bad, first_bad)
            _tile_densities(
                kind, xt, mu, prec, log_const, diffs, acc4, lp, sq, peak, total_t, ework
            )
            _log_positive(total_t, logt)
            smallest = np.inf
            for t in range(tile):  # vectorised (no call, no branch)
                total = total_t[t]
                weight = wt[t]
                smallest = min(smallest, total)
                # a row whose every density underflows (total 0) adds −inf if it is weighted;
                # a row of weight 0 adds nothing (not 0 · −inf)
                term = weight * (peak[t] + logt[t])
                loglik += term if weight > 0.0 else 0.0
                weight_total += weight
                total_t[t] = weight / total if total > 0.0 else 0.0
            if not moments:
                continue
            if smallest == 0.0:  # rare: a row whose every density underflows adds nothing
                for t in range(tile):  # to the moments: its values neither, so that no
                    if total_t[t] == 0.0:  # overflowed difference meets a zero (0 · inf)
                        for j in range(d):
                            xt[j, t] = 0.0
                        for k in range(diffs.shape[0]):
                            for j in range(d):
                                diffs[k, j, t] = 0.0
            for k in range(k_count):
                for t in range(tile):
                    lp[k, t] *= total_t[t]
            _tile_moments(kind, xt, mu, diffs, lp, sq, rd4, s0, s1, s2)
        if kind == _FULL or kind == _TIED:  # the lower triangle from the upper
            for k in range(s2.shape[0] if kind == _FULL else 1):
                for a in range(d):
                    for b in range(a):
                        s2[k, a, b] = s2[k, b, a]
        return s0, s1, s2, loglik, weight_total, n_bad, first_bad

    @numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, nogil=True)
    def _rowwise(kind, x, mu, prec, log_const, mode, out):  # pragma: no cover (compiled)
        """One output row per row of ``x`` (finite rows: the prediction tasks check
        first), tile by tile: ``mode`` SCORE writes ``log p(x)`` into ``out[:, 0]``,
        PROBA the responsibilities into ``out (n, K)``, PREDICT the most probable
        component (the first of equals, as ``argmax``) into ``out[:, 0]``. One output
        type for the three, so one compiled specialisation serves them."""
        kind = covariance  # a compile-time constant: the other types' code is dropped
        n, d = x.shape
        k_count = mu.shape[0]
        d4 = (d + 3) // 4 * 4
        ones = np.ones(n)
        xt, wt, diffs, acc4, _, lp, sq, peak, total_t, ework, logt = _work_buffers(
            kind, k_count, d4, tile
        )
        for start in range(0, n, tile):
            _load_tile(x, ones, start, n, xt, wt, 0, -1)
            _tile_densities(
                kind, xt, mu, prec, log_const, diffs, acc4, lp, sq, peak, total_t, ework
            )
            rows = min(tile, n - start)
            if mode == SCORE:
                _log_positive(total_t, logt)
                for t in range(rows):
                    out[start + t, 0] = peak[t] + logt[t]
            elif mode == PROBA:
                for t in range(tile):  # 0 / 0 = NaN where every density underflows
                    total_t[t] = 1.0 / total_t[t]
                for t in range(rows):
                    for k in range(k_count):
                        out[start + t, k] = lp[k, t] * total_t[t]
            else:
                for t in range(rows):
                    best = 0
                    for k in range(1, k_count):
                        if lp[k, t] > lp[best, t]:
                            best = k
                    out[start + t, 0] = best
        return out

    @numba.njit(cache=True, error_model="numpy", fastmath=_FASTMATH, nogil=True)
    def _kmeans(kind, x, w, centers, mode):  # pragma: no cover (compiled)
        """Each row assigned to its nearest centre (exact ``‖x − c‖²``, never the
        expansion ``‖x‖² − 2x·c + ‖c‖²``; the first of equals, as ``argmin``), tile by
        tile. Returns ``(S0, S1, S2, Σ w min d², n_bad, first bad row)``: ``mode``
        KMEANS_COST fills the cost only, KMEANS_COUNTS also ``S0`` (the row weight
        nearest each centre), KMEANS_STATS all of the assignment's moments about the
        centres for covariance ``kind`` (shapes as :func:`_estep`'s)."""
        kind = covariance  # a compile-time constant: the other types' code is dropped
        n, d = x.shape
        m = centers.shape[0]
        d4 = (d + 3) // 4 * 4
        keep_diffs = mode == KMEANS_STATS and (kind == _FULL or kind == _TIED)
        s0 = np.zeros(m)
        s1 = np.zeros((m, d4))
        s2 = np.zeros(
            (m, d4 if kind != _SPHERICAL else 1, d4 if kind == _FULL or kind == _TIED else 1)
        )
        cost = 0.0
        n_bad = 0
        first_bad = -1
        xt = np.zeros((d4, tile))
        wt = np.empty(tile)
        diffs = np.zeros((m if keep_diffs else 1, d4, tile))
        d2 = np.empty((m, tile))
        lp = np.empty((m, tile))
        rd4 = np.empty((4, tile))
        nearest = np.empty(tile)
        label = np.empty(tile)
        for start in range(0, n, tile):
            n_bad, first_bad = _load_tile(x, w, start, n, xt, wt, n_bad, first_bad)
            for c in range(m):
                for t in range(tile):
                    d2[c, t] = 0.0
                for j in range(0, d4, 4):
                    m0 = centers[c, j]
                    m1 = centers[c, j + 1]
                    m2 = centers[c, j + 2]
                    m3 = centers[c, j + 3]
                    for t in range(tile):
                        v0 = xt[j, t] - m0
                        v1 = xt[j + 1, t] - m1
                        v2 = xt[j + 2, t] - m2
                        v3 = xt[j + 3, t] - m3
                        d2[c, t] += v0 * v0 + v1 * v1 + v2 * v2 + v3 * v3
                if keep_diffs:
                    for j in range(d4):
                        mj = centers[c, j]
                        for t in range(tile):
                            diffs[c, j, t] = xt[j, t] - mj
            for t in range(tile):
                nearest[t] = d2[0, t]
                label[t] = 0.0
            for c in range(1, m):
                for t in range(tile):
                    closer = d2[c, t] < nearest[t]
                    nearest[t] = d2[c, t] if closer else nearest[t]
                    label[t] = c if closer else label[t]
            for t in range(tile):
                cost += wt[t] * nearest[t] if wt[t] > 0.0 else 0.0
            if mode == KMEANS_COST:
                continue
            for c in range(m):
                for t in range(tile):
                    lp[c, t] = wt[t] if label[t] == c else 0.0
            if mode == KMEANS_COUNTS:
                for c in range(m):
                    total = 0.0
                    for t in range(tile):
                        total += lp[c, t]
                    s0[c] += total
                continue
            if kind != _NO_MOMENTS:
                _tile_moments(kind, xt, centers, diffs, lp, d2, rd4, s0, s1, s2)
        if kind == _FULL or kind == _TIED:
            for c in range(s2.shape[0]):
                for a in range(d):
                    for b in range(a):
                        s2[c, a, b] = s2[c, b, a]
        return s0, s1, s2, cost, n_bad, first_bad

    return _estep, _rowwise, _kmeans


#: the kernels per tile length (:func:`_tile_rows`), compiled on first use
_KERNELS = {
    (tile, code): _make_kernels(tile, code)
    for tile in (64, 128, 256)
    for code in (*COVARIANCE_CODES.values(), _NO_MOMENTS)
}


def _kernels_for(d: int, covariance_type: str | None) -> tuple:
    """The kernels for ``d`` features and ``covariance_type`` (``None``: the k-means
    passes without moments)."""
    code = _NO_MOMENTS if covariance_type is None else COVARIANCE_CODES[covariance_type]
    return _KERNELS[_tile_rows((d + 3) // 4 * 4), code]


def _readonly(array: np.ndarray) -> np.ndarray:
    """A read-only view: numba compiles one specialisation per dtype, whether the
    caller's array is writable or not (a memory-mapped file, Params' arrays)."""
    view = array.view()
    view.setflags(write=False)
    return view


class _Prepared(NamedTuple):
    """What the kernel reads of a Params: means and precision factors zero-padded
    to a multiple of 4 features (the blocked sweeps; padded features are exact
    zeros everywhere) and each component's log-density constant."""

    code: int
    means: np.ndarray
    prec: np.ndarray
    log_const: np.ndarray


# Params are immutable (read-only arrays): prepared once per Params object, not per
# block (the preparation cost ~40 µs a block, 5 % of a 1 MiB block at D = 16).
_PREPARED: weakref.WeakKeyDictionary[Params, _Prepared] = weakref.WeakKeyDictionary()


def _prepare(params: Params) -> _Prepared:
    prepared = _PREPARED.get(params)
    if prepared is not None:
        return prepared
    cov = params.covariance_type
    k, d = params.n_components, params.n_features
    d4 = (d + 3) // 4 * 4
    chol = params.precisions_cholesky
    means = np.zeros((k, d4))
    means[:, :d] = params.means
    if cov in ("full", "tied"):
        square = chol if cov == "full" else chol[None]
        prec = np.zeros((square.shape[0], d4, d4))
        prec[:, :d, :d] = square
    elif cov == "diag":
        prec = np.zeros((k, 1, d4))
        prec[:, 0, :d] = chol
    else:
        prec = np.ascontiguousarray(chol[:, None, None])
    log_const = params.log_det_cholesky + np.log(params.weights) - 0.5 * d * _LOG_2PI
    prepared = _Prepared(
        COVARIANCE_CODES[cov], _readonly(means), _readonly(prec), _readonly(log_const)
    )
    _PREPARED[params] = prepared
    return prepared


def _as_rows(block: np.ndarray) -> np.ndarray:
    """The block as the kernels read it: C-contiguous float32 or float64, read-only."""
    x = np.ascontiguousarray(block)
    return _readonly(x if x.dtype in (np.float32, np.float64) else x.astype(np.float64))


def _weights(sample_weight: np.ndarray | None, n: int) -> np.ndarray:
    w = np.ones(n) if sample_weight is None else np.ascontiguousarray(sample_weight, np.float64)
    return _readonly(w)


def _estep_of(
    block: np.ndarray, params: Params, sample_weight: np.ndarray | None, moments: bool
) -> tuple[int, tuple]:
    """``(D, the E-step kernel's outputs)`` for a block (``moments=False``: stop after
    the log-likelihood)."""
    x = _as_rows(block)
    prep = _prepare(params)
    kernel = _kernels_for(x.shape[1], params.covariance_type)[0]
    w = _weights(sample_weight, x.shape[0])
    return x.shape[1], kernel(prep.code, x, w, prep.means, prep.prec, prep.log_const, moments)


def chunk_stats(
    block: np.ndarray, params: Params, sample_weight: np.ndarray | None = None, row_offset: int = 0
) -> SuffStats:
    """:func:`distmix.estep.chunk_stats` for a NumPy block, by the fused kernel."""
    d, (s0, s1, s2, loglik, _, n_bad, first) = _estep_of(block, params, sample_weight, True)
    cov = params.covariance_type
    if cov == "full":
        second = s2[:, :d, :d]
    elif cov == "tied":
        second = s2[0, :d, :d]
    elif cov == "diag":
        second = s2[:, :d, 0]
    else:
        second = s2[:, 0, 0]
    return SuffStats(
        cov,
        params.means,
        s0,
        s1[:, :d],
        second,
        float(np.shape(block)[0]),
        float(loglik),
        float(n_bad),
        float(first + row_offset) if first >= 0 else math.inf,
    )


def log_likelihood(
    block: np.ndarray, params: Params, sample_weight: np.ndarray | None = None, row_offset: int = 0
) -> LogLikelihoodTotal:
    """The ``log_likelihood`` task's result for a NumPy block (the E-step pass
    without the moments)."""
    _, (_, _, _, loglik, weight, n_bad, first) = _estep_of(block, params, sample_weight, False)
    return LogLikelihoodTotal(
        float(loglik),
        float(weight),
        NonFinite(float(n_bad), float(first + row_offset) if first >= 0 else math.inf),
    )


def _rowwise_of(block: np.ndarray, params: Params, mode: int) -> np.ndarray:
    x = _as_rows(block)
    prep = _prepare(params)
    out = np.empty((x.shape[0], params.n_components if mode == PROBA else 1))
    rowwise = _kernels_for(x.shape[1], params.covariance_type)[1]
    return rowwise(prep.code, x, prep.means, prep.prec, prep.log_const, mode, out)


def score_samples_block(block: np.ndarray, params: Params) -> np.ndarray:
    """``log p(x)`` per row, shape (n,) (rows checked finite by the caller)."""
    return _rowwise_of(block, params, SCORE)[:, 0]


def predict_proba_block(block: np.ndarray, params: Params) -> np.ndarray:
    """Responsibilities, shape (n, K)."""
    return _rowwise_of(block, params, PROBA)


def predict_block(block: np.ndarray, params: Params) -> np.ndarray:
    """Most probable component per row, shape (n,), int64."""
    return _rowwise_of(block, params, PREDICT)[:, 0].astype(np.int64)


def _kmeans_of(
    block: np.ndarray,
    w: np.ndarray | None,
    centers: np.ndarray,
    covariance_type: str | None,
    mode: int,
) -> tuple:
    x = _as_rows(block)
    n, d = x.shape
    weights = _weights(w, n)
    padded = np.zeros((centers.shape[0], (d + 3) // 4 * 4))
    padded[:, :d] = centers
    kernel = _kernels_for(d, covariance_type)[2]
    code = _NO_MOMENTS if covariance_type is None else COVARIANCE_CODES[covariance_type]
    return kernel(code, x, weights, padded, mode)  # type: ignore[no-any-return]


def kmeans_block(
    block: np.ndarray,
    w: np.ndarray | None,
    offset: int,
    centers: np.ndarray,
    shift: np.ndarray,
    covariance_type: str,
) -> KMeansStats:
    """:func:`distmix.init_kernels.kmeans_block` for a NumPy block (``shift`` is not
    needed: the distances are exact differences)."""
    centers = np.asarray(centers, dtype=np.float64)
    s0, s1, s2, cost, n_bad, first = _kmeans_of(block, w, centers, covariance_type, KMEANS_STATS)
    d = centers.shape[1]
    second = {
        "full": lambda: s2[:, :d, :d],
        "tied": lambda: s2[0, :d, :d],
        "diag": lambda: s2[:, :d, 0],
        "spherical": lambda: s2[:, 0, 0],
    }[covariance_type]()
    stats = SuffStats(
        covariance_type,  # type: ignore[arg-type]
        centers,
        s0,
        s1[:, :d],
        second,
        float(np.shape(block)[0]),
        0.0,
        float(n_bad),
        float(first + offset) if first >= 0 else math.inf,
    )
    return KMeansStats(stats, float(cost))


def cost_block(
    block: np.ndarray, w: np.ndarray | None, offset: int, centers: np.ndarray, shift: np.ndarray
) -> Totals:
    """:func:`distmix.init_kernels.cost_block` for a NumPy block."""
    centers = np.asarray(centers, dtype=np.float64)
    cost = _kmeans_of(block, w, centers, None, KMEANS_COST)[3]
    return Totals(np.array([cost]))


def nearest_weight_block(
    block: np.ndarray, w: np.ndarray | None, offset: int, centers: np.ndarray, shift: np.ndarray
) -> Totals:
    """:func:`distmix.init_kernels.nearest_weight_block` for a NumPy block."""
    centers = np.asarray(centers, dtype=np.float64)
    return Totals(_kmeans_of(block, w, centers, None, KMEANS_COUNTS)[0])
