"""E-step kernels: (block of rows, Params) → SuffStats.

Layering rule: this module is pure. Its functions take arrays and return
arrays or SuffStats; they never see an engine, Dask, a client, a file or a
logger, and never branch on an array's values. The array namespace ``xp`` is
taken once from the block (array-api-compat) and passed down, so the same code
runs on NumPy, CuPy, torch or ``array_api_strict`` arrays.

Every component is handled at once. A block of ``n`` rows is centred about all
``K`` reference points in one broadcast, ``Xc = X[None] − c[:, None]`` of shape
``(K, n, D)``, and the Mahalanobis terms and second moments are batched matrix
products over that stack. Centring before any product is what keeps data far
from the origin exact: no ``Σ x xᵀ − N μ μᵀ`` is ever formed.

The log-density uses the upper-triangular precision Cholesky factor ``U``
(``Σ⁻¹ = U Uᵀ``): ``log N(x | μ, Σ) = −½ (D log 2π + ‖(x − μ) U‖²) + log det U``,
and responsibilities come from a log-sum-exp, so they never overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np  # the per-component fast path of NumPy blocks only

from distmix.params import KernelParams, Params
from distmix.suffstats import SuffStats

LOG_2PI = math.log(2.0 * math.pi)


# NumPy path. On NumPy, ``full`` and ``tied`` go component by component,
# recomputing each component's centred block instead of materialising the
# (K, n, D) stack: the working set of every matrix product is then one (n, D)
# block that stays in cache, and ``xcᵀ xc`` lets NumPy call BLAS syrk. NumPy's
# matmul releases the GIL, so blocks also run side by side on threads. Other
# namespaces (CuPy, torch, ...) take the batched path, one call for all
# components. The two agree to rounding; a test compares them through
# ``array_api_strict``.
PER_COMPONENT_TYPES = ("full", "tied")


def _per_component(xp: Any, covariance_type: str) -> bool:
    return covariance_type in PER_COMPONENT_TYPES and array_api_compat.is_numpy_namespace(xp)


def _per_component_mahalanobis(x: Any, means: Any, u: Any) -> Any:
    """``‖(x − μ_k) U_k‖²`` per component, shape (K, n)."""
    k, n = means.shape[0], x.shape[0]
    out = np.empty((k, n))
    for j in range(k):
        y = (x - means[j]) @ (u if u.ndim == 2 else u[j])
        np.einsum("nd,nd->n", y, y, out=out[j])
    return out


def _per_component_moments(x: Any, means: Any, resp: Any, tied: bool) -> tuple[Any, Any]:
    """``(Σ r xc, Σ r xc xcᵀ)`` per component (the second summed over k if tied)."""
    k, d = means.shape
    x_sum = np.empty((k, d))
    second = np.zeros((d, d)) if tied else np.empty((k, d, d))
    sqrt_resp = np.sqrt(resp)
    for j in range(k):
        xc = x - means[j]
        x_sum[j] = resp[j] @ xc
        xc *= sqrt_resp[j][:, None]
        if tied:
            second += xc.T @ xc
        else:
            second[j] = xc.T @ xc
    return x_sum, second


# -- what each covariance type's formulas read from the centred stack xc --
# full and tied: xc itself; diag: its squares (K, n, D); spherical: the squared
# norms (K, n). Computed once per block and shared by the distance and the
# second moment.
def _features_diag(xp: Any, xc: Any) -> Any:
    return xc * xc


def _features_spherical(xp: Any, xc: Any) -> Any:
    return xp.sum(xc * xc, axis=-1)


FEATURES: dict[str, Callable[[Any, Any], Any]] = {
    "full": lambda xp, xc: xc,
    "tied": lambda xp, xc: xc,
    "diag": _features_diag,
    "spherical": _features_spherical,
}


# -- squared Mahalanobis distance, per covariance type: features → (K, n) --
def _mahalanobis_full(xp: Any, xc: Any, u: Any) -> Any:
    y = xp.matmul(xc, u)  # (K, n, D) @ (K, D, D)
    return xp.sum(y * y, axis=-1)


def _mahalanobis_tied(xp: Any, xc: Any, u: Any) -> Any:
    y = xp.matmul(xc, u)  # (K, n, D) @ (D, D), broadcast over K
    return xp.sum(y * y, axis=-1)


def _mahalanobis_diag(xp: Any, squares: Any, u: Any) -> Any:
    return xp.matmul(squares, (u * u)[:, :, None])[:, :, 0]


def _mahalanobis_spherical(xp: Any, sq_norms: Any, u: Any) -> Any:
    return sq_norms * (u * u)[:, None]


MAHALANOBIS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "full": _mahalanobis_full,
    "tied": _mahalanobis_tied,
    "diag": _mahalanobis_diag,
    "spherical": _mahalanobis_spherical,
}


# -- second moment about the reference, per covariance type ----------------
# Each takes the type's features (above) and responsibilities resp (K, n).
def _second_full(xp: Any, xc: Any, resp: Any) -> Any:
    return xp.matmul(xp.matrix_transpose(xc * resp[:, :, None]), xc)  # (K, D, D)


def _second_tied(xp: Any, xc: Any, resp: Any) -> Any:
    k, n, d = xc.shape
    weighted = xp.reshape(xc * resp[:, :, None], (k * n, d))
    return xp.matmul(xp.matrix_transpose(weighted), xp.reshape(xc, (k * n, d)))  # (D, D)


def _second_diag(xp: Any, squares: Any, resp: Any) -> Any:
    return xp.matmul(resp[:, None, :], squares)[:, 0, :]  # (K, D)


def _second_spherical(xp: Any, sq_norms: Any, resp: Any) -> Any:
    return xp.sum(resp * sq_norms, axis=1)  # (K,)


SECOND_MOMENT: dict[str, Callable[[Any, Any, Any], Any]] = {
    "full": _second_full,
    "tied": _second_tied,
    "diag": _second_diag,
    "spherical": _second_spherical,
}


# -- building blocks ---------------------------------------------------------
def namespace(block: Any) -> Any:
    """The array namespace of ``block`` (array-api-compat wraps NumPy/CuPy/torch)."""
    return array_api_compat.array_namespace(block)


def device_kwargs(block: Any) -> dict[str, Any]:
    """``{"device": ...}`` of ``block``, for creating arrays next to it."""
    return {"device": array_api_compat.device(block)}


def prepare_block(
    xp: Any, block: Any, sample_weight: Any | None, row_offset: int
) -> tuple[Any, Any, Any, Any]:
    """Cast to float64 and mask non-finite rows.

    Returns ``(X, w, n_nonfinite, first_nonfinite)``: rows holding NaN or ±inf
    are replaced by zeros and given weight 0, so they add exact zeros to every
    statistic (and no floating-point warning is raised); their count and the
    first one's global index ride along in the statistics, where the caller
    turns them into an error after the single pass. ``sample_weight`` may be of
    another namespace than ``block`` (NumPy weights of CuPy rows): it is copied
    to the block's namespace and device, the rows never leave theirs.
    """
    x = xp.astype(block, xp.float64)
    n = x.shape[0]
    dev = device_kwargs(x)
    finite = xp.all(xp.isfinite(x), axis=1)
    x = xp.where(finite[:, None], x, xp.zeros((), dtype=xp.float64, **dev))
    if sample_weight is None:
        w = xp.ones((n,), dtype=xp.float64, **dev)
    else:  # weights kept on the host (a dask array's chunks of them) move next to the block
        w = xp.asarray(sample_weight, dtype=xp.float64, **dev)
    w = xp.where(finite, w, xp.zeros((), dtype=xp.float64, **dev))
    rows = xp.arange(n, dtype=xp.float64, **dev) + float(row_offset)
    inf = xp.asarray(math.inf, dtype=xp.float64, **dev)
    first = xp.min(xp.where(finite, inf, rows)) if n else inf
    n_bad = xp.sum(xp.astype(~finite, xp.float64))
    return x, w, n_bad, first


def centre(xp: Any, x: Any, reference: Any) -> Any:
    """``(K, n, D)`` stack of ``x − c_k``."""
    return x[None, :, :] - reference[:, None, :]


def weighted_log_prob(
    xp: Any, x: Any, kp: KernelParams, covariance_type: str, features: Any | None = None
) -> Any:
    """``log w_k + log N(x_i | μ_k, Σ_k)``, shape ``(K, n)``.

    ``features`` are the type's features of the centred stack when the caller
    has them (the generic path; see ``FEATURES``).
    """
    d = x.shape[-1]
    if _per_component(xp, covariance_type):
        maha = _per_component_mahalanobis(x, kp.means, kp.precisions_cholesky)
    else:
        if features is None:
            features = FEATURES[covariance_type](xp, centre(xp, x, kp.means))
        maha = MAHALANOBIS[covariance_type](xp, features, kp.precisions_cholesky)
    return -0.5 * (d * LOG_2PI + maha) + (kp.log_det + kp.log_weights)[:, None]


def log_sum_exp(xp: Any, a: Any, axis: int) -> Any:
    """``log Σ exp(a)`` along ``axis`` without overflow."""
    return _normalise(xp, a, axis)[2]


def _normalise(xp: Any, a: Any, axis: int) -> tuple[Any, Any, Any]:
    """``(exp(a − peak), Σ exp(a − peak), log Σ exp(a))`` along ``axis``.

    ``exp(a − peak) / Σ`` are the normalised weights (responsibilities when
    ``a`` holds the weighted log-densities), so they need no second ``exp``.
    Where every ``a`` is −inf (a finite row so far out that its distance to
    every component overflows) the sum is 0 and ``log Σ exp(a)`` is −inf,
    without a floating-point warning.
    """
    peak = xp.max(a, axis=axis, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, xp.zeros_like(peak))
    e = xp.exp(a - peak)
    total = xp.sum(e, axis=axis)
    some = total > 0
    log_total = xp.log(xp.where(some, total, xp.ones_like(total)))
    log_norm = xp.where(some, xp.squeeze(peak, axis=axis) + log_total, -math.inf)
    return e, total, log_norm


def weighted_sum(xp: Any, w: Any, values: Any) -> Any:
    """``Σ w · values`` where rows of weight 0 add exactly 0 (even at ±inf)."""
    return xp.sum(w * xp.where(w > 0, values, xp.zeros_like(values)))


def moments(
    xp: Any, xc: Any, resp: Any, covariance_type: str, features: Any | None = None
) -> tuple[Any, Any, Any]:
    """``(Σ r, Σ r xc, second moment)`` for responsibilities ``resp`` of shape (K, n).

    ``features``: ``FEATURES[covariance_type](xp, xc)`` when the caller has them.
    """
    if features is None:
        features = FEATURES[covariance_type](xp, xc)
    return (
        xp.sum(resp, axis=1),
        xp.matmul(resp[:, None, :], xc)[:, 0, :],
        SECOND_MOMENT[covariance_type](xp, features, resp),
    )


#: the types whose features are squares, which overflow to inf where x − c does not
SQUARED_FEATURES = ("diag", "spherical")


def _rows_with_density(xp: Any, features: Any, has_density: Any) -> Any:
    """``features`` (K, n, ...) with the rows of no density (``has_density`` (n,) false)
    set to exact zeros.

    Such a row is so far from every component that its squared distances
    overflowed: the squares of ``diag`` and the squared norms of ``spherical``
    may hold ``inf`` there, and its responsibilities of 0 times ``inf`` would
    put NaN in the second moments. Every block of those types takes this
    ``where``, the rows of density unchanged, instead of first asking whether
    any row needs it: ``bool(xp.any(...))`` waits for the device to finish the
    block (CuPy, torch) and computes the graph (dask), once per block. The
    statistics are those of the rows of density alone, as when the question was
    asked: a row whose responsibilities are 0 adds exact zeros either way. The
    price is one more pass over the block's ``(K, n, D)`` squares (``(K, n)``
    for ``spherical``). ``full`` and ``tied`` read the centred rows themselves,
    finite wherever ``x − c`` is, so ``0 · xc`` is 0 and they need no pass (as
    NumPy's per-component path, which never masked them).
    """
    keep = xp.reshape(has_density, (1, -1) + (1,) * (features.ndim - 2))
    return xp.where(keep, features, xp.zeros((), dtype=features.dtype, **device_kwargs(features)))


def _kernel_params(xp: Any, x: Any, params: Params | KernelParams) -> KernelParams:
    if isinstance(params, KernelParams):
        return params
    return params.kernel_arrays(xp, array_api_compat.device(x))


# -- the E-step kernel -------------------------------------------------------
def chunk_stats(
    block: Any,
    params: Params,
    sample_weight: Any | None = None,
    row_offset: int = 0,
) -> SuffStats:
    """E-step of one block: its SuffStats about ``params.means``.

    Parameters
    ----------
    block : array of shape (n, D), float32 or float64, any array-API namespace
    params : Params
        The current parameters; their means are the reference point.
    sample_weight : array of shape (n,), optional
        Non-negative row weights (responsibilities are multiplied by them).
    row_offset : int
        Global index of the block's first row (for naming non-finite rows).

    Returns
    -------
    SuffStats
        In the block's namespace and on its device; ``to_host`` moves it.
    """
    xp = namespace(block)
    x, w, n_bad, first = prepare_block(xp, block, sample_weight, row_offset)
    kp = _kernel_params(xp, x, params)
    cov = params.covariance_type
    xc = None if _per_component(xp, cov) else centre(xp, x, kp.means)
    features = None if xc is None else FEATURES[cov](xp, xc)
    log_prob = weighted_log_prob(xp, x, kp, cov, features)
    e, total, log_norm = _normalise(xp, log_prob, axis=0)  # (K, n), (n,), (n,)
    # a row whose every density underflows (sum 0) has responsibilities 0, not NaN
    has_density = total != 0
    resp = e * (w / xp.where(has_density, total, xp.ones_like(total)))[None, :]
    if xc is None:
        resp_sum = xp.sum(resp, axis=1)
        x_sum, second = _per_component_moments(x, kp.means, resp, tied=cov == "tied")
    else:
        if cov in SQUARED_FEATURES:
            features = _rows_with_density(xp, features, has_density)
        resp_sum, x_sum, second = moments(xp, xc, resp, cov, features)
    return SuffStats(
        params.covariance_type,
        params.means,
        resp_sum,
        x_sum,
        second,
        float(x.shape[0]),
        weighted_sum(xp, w, log_norm),
        n_bad,
        first,
    )


def resp_stats(
    block: Any,
    resp: Any,
    reference: Any,
    covariance_type: str,
    sample_weight: Any | None = None,
    row_offset: int = 0,
) -> SuffStats:
    """SuffStats of a block for given responsibilities ``resp`` of shape (n, K).

    Used by initialisation (hard k-means labels, random responsibilities); the
    log-likelihood field is left at 0.
    """
    xp = namespace(block)
    x, w, n_bad, first = prepare_block(xp, block, sample_weight, row_offset)
    ref = xp.asarray(reference, dtype=xp.float64, **device_kwargs(x))
    xc = centre(xp, x, ref)
    r = xp.matrix_transpose(xp.astype(resp, xp.float64)) * w[None, :]
    resp_sum, x_sum, second = moments(xp, xc, r, covariance_type)
    return SuffStats(
        covariance_type,  # type: ignore[arg-type]
        reference,
        resp_sum,
        x_sum,
        second,
        float(x.shape[0]),
        0.0,
        n_bad,
        first,
    )


# -- prediction kernels ------------------------------------------------------
def log_resp_and_norm(block: Any, params: Params) -> tuple[Any, Any]:
    """``(log responsibilities (n, K), log p(x) (n,))`` of a block."""
    xp = namespace(block)
    x = xp.astype(block, xp.float64)
    kp = _kernel_params(xp, x, params)
    log_prob = weighted_log_prob(xp, x, kp, params.covariance_type)
    log_norm = log_sum_exp(xp, log_prob, axis=0)
    return xp.matrix_transpose(log_prob - log_norm[None, :]), log_norm


def score_samples_block(block: Any, params: Params) -> Any:
    """``log p(x)`` per row, shape (n,)."""
    return log_resp_and_norm(block, params)[1]


def predict_proba_block(block: Any, params: Params) -> Any:
    """Responsibilities, shape (n, K)."""
    xp = namespace(block)
    return xp.exp(log_resp_and_norm(block, params)[0])


def predict_block(block: Any, params: Params) -> Any:
    """Most probable component per row, shape (n,)."""
    xp = namespace(block)
    return xp.argmax(log_resp_and_norm(block, params)[0], axis=1)
