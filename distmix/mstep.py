"""M-step: total SuffStats → new Params, on the host in float64.

Pure: no engine, no I/O. With ``S0 = Σ r``, ``S1 = Σ r (x − c)`` and
``S2 = Σ r (x − c)(x − c)ᵀ`` about the reference ``c`` (the means the E-step
used), the new mean is ``μ = c + δ`` with ``δ = S1 / S0`` and the covariance is
``S2 / S0 − δ δᵀ + reg_covar·I``. Because ``c`` is the previous mean, ``δ`` is
small and the subtraction loses nothing, wherever the data sit.

Empty components
----------------
A component whose responsibility sum falls below ``EMPTY_RESP * (total weight)``
carries no information to estimate a mean or a covariance from. Its mean and
covariance are kept as they were (the previous Params; at initialisation, the
reference point and the pooled covariance of all rows), its weight becomes its
tiny responsibility share, and an :class:`EmptyComponentWarning` names it. No
parameter is ever NaN. As in scikit-learn, ``10·eps`` is added to every
responsibility sum so that weights and log-weights stay finite.
"""

from __future__ import annotations

import warnings

import numpy as np

from distmix._blas import one_blas_thread
from distmix.params import Params
from distmix.suffstats import SuffStats

EPS = float(np.finfo(np.float64).eps)
EMPTY_RESP = 1e-12


class EmptyComponentWarning(UserWarning):
    """A mixture component received (almost) no responsibility in an M-step."""


def _pooled_full(s2: np.ndarray, s1: np.ndarray, nk: np.ndarray, total: float) -> np.ndarray:
    """Within-component scatter of all rows about their component means, / total."""
    scatter = s2 - s1[:, :, None] * s1[:, None, :] / nk[:, None, None]
    return scatter.sum(axis=0) / total


def _covariances(
    stats: SuffStats, nk: np.ndarray, delta: np.ndarray, reg_covar: float
) -> np.ndarray:
    s0_total = float(nk.sum())
    s2 = stats.second
    d = stats.n_features
    if stats.covariance_type == "full":
        cov = s2 / nk[:, None, None] - delta[:, :, None] * delta[:, None, :]
        cov = 0.5 * (cov + np.swapaxes(cov, 1, 2))
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return cov
    if stats.covariance_type == "tied":
        cov = (s2 - np.einsum("k,ki,kj->ij", nk, delta, delta)) / s0_total
        cov = 0.5 * (cov + cov.T)
        cov[np.arange(d), np.arange(d)] += reg_covar
        return cov
    if stats.covariance_type == "diag":
        return s2 / nk[:, None] - delta**2 + reg_covar
    return (s2 / nk - np.sum(delta**2, axis=1)) / d + reg_covar


def _fallback_covariances(stats: SuffStats, nk: np.ndarray, reg_covar: float) -> np.ndarray:
    """Pooled covariance of all rows, in the shape of the covariance type."""
    if stats.covariance_type == "tied":
        return _covariances(stats, nk, stats.x_sum / nk[:, None], reg_covar)
    k, d = stats.n_components, stats.n_features
    s1 = stats.x_sum
    total = float(nk.sum())
    if stats.covariance_type == "full":
        pooled = _pooled_full(stats.second, s1, nk, total) + reg_covar * np.eye(d)
        return np.broadcast_to(pooled, (k, d, d)).copy()
    if stats.covariance_type == "diag":
        pooled = (stats.second - s1**2 / nk[:, None]).sum(axis=0) / total + reg_covar
        return np.broadcast_to(pooled, (k, d)).copy()
    pooled = (stats.second - np.sum(s1**2, axis=1) / nk).sum() / total / d + reg_covar
    return np.full(k, pooled)


def m_step(stats: SuffStats, reg_covar: float, previous: Params | None = None) -> Params:
    """New Params from total statistics.

    Parameters
    ----------
    stats : SuffStats
        Sum over all rows, about ``previous.means`` (or any reference).
    reg_covar : float
        Non-negative regularisation added to the covariances' diagonals.
    previous : Params, optional
        The Params of the E-step; an empty component keeps its mean and
        covariance from them.

    Returns
    -------
    Params

    Notes
    -----
    Runs with BLAS held to one thread (see :mod:`distmix._blas`).
    """
    with one_blas_thread():
        return _m_step(stats.to_host(), reg_covar, previous)


def _m_step(stats: SuffStats, reg_covar: float, previous: Params | None) -> Params:
    """:func:`m_step` on host statistics."""
    total = float(np.sum(stats.resp_sum))
    if not total > 0:
        raise ValueError(
            "the total weight of the rows is zero: every row has sample_weight 0, "
            "so there is nothing to fit."
        )
    nk = stats.resp_sum + 10 * EPS
    delta = stats.x_sum / nk[:, None]
    weights = nk / nk.sum()
    means = stats.reference + delta
    covariances = _covariances(stats, nk, delta, reg_covar)

    empty = stats.resp_sum < EMPTY_RESP * total
    if np.any(empty):
        which = np.flatnonzero(empty)
        if previous is not None:
            means[which] = previous.means[which]
            fallback = previous.covariances
        else:
            means[which] = stats.reference[which]
            fallback = _fallback_covariances(stats, nk, reg_covar)
        if stats.covariance_type != "tied":
            covariances[which] = fallback[which]
        warnings.warn(
            f"mixture component(s) {which.tolist()} received a responsibility sum below "
            f"{EMPTY_RESP:g} of the total weight; they keep their previous mean and "
            "covariance. Consider fewer components or another initialisation.",
            EmptyComponentWarning,
            stacklevel=3,  # _m_step, m_step, its caller
        )
    return Params.from_covariances(weights, means, covariances, stats.covariance_type)
