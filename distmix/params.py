"""Params: the parameters of a Gaussian mixture, small, immutable and validated.

Params live on the host in float64 NumPy arrays. The E-step kernels do not read
them directly: :meth:`Params.kernel_arrays` hands them the few arrays they need,
already moved to the data's array namespace and device.

Conventions follow scikit-learn so that fitted attributes mean the same thing:
``precisions_cholesky`` is the upper-triangular ``U`` with ``precision = U Uᵀ``
(shape ``(K, D, D)`` for ``full``, ``(D, D)`` for ``tied``, ``(K, D)`` for
``diag`` and ``(K,)`` for ``spherical``, the last two holding ``1/sqrt(var)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from distmix._typing import CovarianceType, check_covariance_type

WEIGHTS_ATOL = 1e-6


class KernelParams(NamedTuple):
    """The arrays an E-step kernel needs, in the data's namespace, float64.

    Attributes
    ----------
    means : (K, D)
    precisions_cholesky : (K, D, D) | (D, D) | (K, D) | (K,)
    log_det : (K,)
        ``log det U`` per component (the log-density's normalising term).
    log_weights : (K,)
    """

    means: Any
    precisions_cholesky: Any
    log_det: Any
    log_weights: Any


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple[int, ...]:
    """Shape of a covariance (or precision) array for ``covariance_type``."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[check_covariance_type(covariance_type)]


def full_covariances(
    covariances: Any, covariance_type: str, n_components: int, n_features: int
) -> np.ndarray:
    """Every component's covariance as a (K, D, D) stack, whatever the covariance type."""
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return cov
    if covariance_type == "tied":
        return np.broadcast_to(cov, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return cov[:, :, None] * np.eye(n_features)
    return cov[:, None, None] * np.eye(n_features)


def _singular_message(what: str) -> str:
    return (
        f"{what} is not positive-definite, so the Gaussian density is undefined. "
        "This happens when a component collapses onto too few or identical rows. "
        "Remedies: increase reg_covar, decrease n_components, or scale the input data."
    )


# LAPACK's own routines, called directly: what scipy.linalg.cholesky and
# solve_triangular call, with the same results, less their checks and wrappers (a
# stream makes Params at every update: K = 8, D = 16 took 180 µs, now 55 µs)
def _cholesky_lower(matrix: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} contains NaN or infinity.")
    factor, info = scipy.linalg.lapack.dpotrf(matrix, lower=1, clean=1)
    if info != 0:
        raise ValueError(_singular_message(what))
    return np.asarray(factor)


def _solve_triangular(factor: np.ndarray, rhs: np.ndarray, lower: bool, what: str) -> np.ndarray:
    solution, info = scipy.linalg.lapack.dtrtrs(factor, rhs, lower=int(lower))
    if info != 0:
        raise ValueError(_singular_message(what))
    return np.asarray(solution)


def precision_cholesky_from_covariances(
    covariances: np.ndarray, covariance_type: str
) -> np.ndarray:
    """``U`` with ``U Uᵀ = Σ⁻¹`` from covariances: ``U = L⁻ᵀ`` where ``Σ = L Lᵀ``."""
    covariances = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        stack = covariances if covariance_type == "full" else covariances[None]
        out = np.empty_like(stack)
        eye = np.eye(stack.shape[-1])
        for k, cov in enumerate(stack):
            what = f"covariances_[{k}]" if covariance_type == "full" else "covariances_"
            chol = _cholesky_lower(cov, what)
            out[k] = _solve_triangular(chol, eye, True, what).T
        return out if covariance_type == "full" else out[0]
    bad = ~(covariances > 0) | ~np.isfinite(covariances)
    if np.any(bad):
        k = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise ValueError(_singular_message(f"covariances_[{k}]"))
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(
    precisions: np.ndarray, covariance_type: str, name: str = "precisions_init"
) -> np.ndarray:
    """Upper-triangular ``U`` with ``U Uᵀ = P``.

    The Cholesky factor of the row-and-column-reversed matrix, reversed back,
    is upper triangular and satisfies ``U Uᵀ = P`` (the exchange-matrix identity
    ``J P J = L Lᵀ ⇒ P = (J L J)(J L J)ᵀ``).
    """
    precisions = np.asarray(precisions, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        stack = precisions if covariance_type == "full" else precisions[None]
        out = np.empty_like(stack)
        for k, prec in enumerate(stack):
            what = f"{name}[{k}]" if covariance_type == "full" else name
            if not np.allclose(prec, prec.T, rtol=1e-8, atol=1e-12 * np.abs(prec).max()):
                raise ValueError(f"{what} is not symmetric.")
            out[k] = _cholesky_lower(prec[::-1, ::-1], what)[::-1, ::-1]
        return out if covariance_type == "full" else out[0]
    bad = ~(precisions > 0) | ~np.isfinite(precisions)
    if np.any(bad):
        k = int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise ValueError(f"{name}[{k}] is not positive: diag and spherical precisions must be > 0.")
    return np.sqrt(precisions)


def covariances_from_precision_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """``Σ = (U Uᵀ)⁻¹ = U⁻ᵀ U⁻¹`` for each component."""
    if covariance_type in ("full", "tied"):
        stack = prec_chol if covariance_type == "full" else prec_chol[None]
        eye = np.eye(stack.shape[-1])
        out = np.empty_like(stack)
        for k, u in enumerate(stack):
            u_inv = scipy.linalg.solve_triangular(u, eye, lower=False, check_finite=False)
            out[k] = u_inv.T @ u_inv
        return out if covariance_type == "full" else out[0]
    return 1.0 / prec_chol**2


@dataclass(frozen=True, eq=False)
class Params:
    """Parameters of a Gaussian mixture (host, float64, validated on creation).

    Build with :meth:`from_covariances` or :meth:`from_precisions`; the
    constructor itself only checks what it is given.
    """

    covariance_type: CovarianceType
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    def __post_init__(self) -> None:
        check_covariance_type(self.covariance_type)
        for field in ("weights", "means", "covariances", "precisions_cholesky"):
            arr = np.array(getattr(self, field), dtype=np.float64, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, field, arr)
        k, d = self.means.shape if self.means.ndim == 2 else (None, None)
        if k is None:
            raise ValueError(
                f"means must have shape (n_components, n_features), got {self.means.shape}."
            )
        check_weights(self.weights, k, "weights")
        if not np.all(np.isfinite(self.means)):
            raise ValueError("means contain NaN or infinity.")
        shape = covariance_shape(self.covariance_type, k, d)
        for field in ("covariances", "precisions_cholesky"):
            if getattr(self, field).shape != shape:
                raise ValueError(
                    f"{field} for covariance_type={self.covariance_type!r} must have shape "
                    f"{shape}, got {getattr(self, field).shape}."
                )
        if not np.all(np.isfinite(self.precisions_cholesky)):
            raise ValueError(_singular_message("a precision Cholesky factor"))

    # -- construction -------------------------------------------------------
    @classmethod
    def from_covariances(
        cls, weights: Any, means: Any, covariances: Any, covariance_type: str
    ) -> Params:
        covariances = np.asarray(covariances, dtype=np.float64)
        return cls(
            covariance_type,  # type: ignore[arg-type]
            weights,
            means,
            covariances,
            precision_cholesky_from_covariances(covariances, covariance_type),
        )

    @classmethod
    def from_precisions(
        cls, weights: Any, means: Any, precisions: Any, covariance_type: str
    ) -> Params:
        prec_chol = precision_cholesky_from_precisions(precisions, covariance_type)
        return cls(
            covariance_type,  # type: ignore[arg-type]
            weights,
            means,
            covariances_from_precision_cholesky(prec_chol, covariance_type),
            prec_chol,
        )

    # -- derived ------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.means.shape[1])

    @property
    def precisions(self) -> np.ndarray:
        u = self.precisions_cholesky
        if self.covariance_type == "full":
            return u @ np.swapaxes(u, -1, -2)
        if self.covariance_type == "tied":
            return u @ u.T
        return u**2

    @property
    def log_det_cholesky(self) -> np.ndarray:
        """``log det U`` per component, shape ``(K,)``."""
        u = self.precisions_cholesky
        k, d = self.n_components, self.n_features
        if self.covariance_type == "full":
            return np.sum(np.log(np.diagonal(u, axis1=1, axis2=2)), axis=1)
        if self.covariance_type == "tied":
            return np.full(k, np.sum(np.log(np.diag(u))))
        if self.covariance_type == "diag":
            return np.sum(np.log(u), axis=1)
        return d * np.log(u)

    def n_parameters(self) -> int:
        """Number of free parameters (for BIC/AIC)."""
        k, d = self.n_components, self.n_features
        cov = {
            "full": k * d * (d + 1) / 2,
            "tied": d * (d + 1) / 2,
            "diag": k * d,
            "spherical": k,
        }[self.covariance_type]
        return int(cov + k * d + k - 1)

    def kernel_arrays(self, xp: Any = None, device: Any = None) -> KernelParams:
        """The arrays the E-step needs, in namespace ``xp`` on ``device``."""
        with np.errstate(divide="ignore"):
            log_weights = np.log(self.weights)
        arrays = (self.means, self.precisions_cholesky, self.log_det_cholesky, log_weights)
        if xp is None or _is_numpy(xp):
            return KernelParams(*arrays)
        kwargs = {} if device is None else {"device": device}
        return KernelParams(
            *(xp.asarray(np.ascontiguousarray(a), dtype=xp.float64, **kwargs) for a in arrays)
        )

    def allclose(self, other: Params, rtol: float = 1e-10, atol: float = 0.0) -> bool:
        return self.covariance_type == other.covariance_type and all(
            np.allclose(getattr(self, f), getattr(other, f), rtol=rtol, atol=atol)
            for f in ("weights", "means", "covariances")
        )

    def __repr__(self) -> str:
        return (
            f"Params(covariance_type={self.covariance_type!r}, "
            f"n_components={self.n_components}, n_features={self.n_features})"
        )

    def __dask_tokenize__(self) -> tuple:
        return (
            type(self).__name__,
            self.covariance_type,
            *(a.tobytes() for a in (self.weights, self.means, self.covariances)),
        )


def _is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "") in ("numpy", "array_api_compat.numpy")


def check_weights(weights: np.ndarray, n_components: int, name: str = "weights_init") -> np.ndarray:
    """Validate mixture weights: shape ``(K,)``, in ``[0, 1]``, summing to 1."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_components,):
        raise ValueError(
            f"{name} must have shape (n_components,) = ({n_components},), got {weights.shape}."
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or np.any(weights > 1):
        raise ValueError(f"{name} must lie in [0, 1], got {weights}.")
    if not math.isclose(float(np.sum(weights)), 1.0, abs_tol=WEIGHTS_ATOL):
        raise ValueError(f"{name} must sum to 1, but they sum to {float(np.sum(weights)):.10g}.")
    return weights


def check_initial_parameters(
    n_components: int,
    n_features: int,
    covariance_type: str,
    *,
    weights_init: Any = None,
    means_init: Any = None,
    precisions_init: Any = None,
) -> dict[str, Any]:
    """The user-given initial parameters that are not ``None``, validated as float64
    arrays (shapes as in scikit-learn; precisions positive-definite)."""
    k, cov = n_components, covariance_type
    out: dict[str, Any] = {}
    if weights_init is not None:
        out["weights_init"] = check_weights(weights_init, k)
    if means_init is not None:
        means = np.asarray(means_init, dtype=np.float64)
        if means.shape != (k, n_features):
            raise ValueError(
                f"means_init must have shape (n_components, n_features) = ({k}, {n_features}), "
                f"got {means.shape}."
            )
        if not np.all(np.isfinite(means)):
            raise ValueError("means_init contains NaN or infinity.")
        out["means_init"] = means
    if precisions_init is not None:
        prec = np.asarray(precisions_init, dtype=np.float64)
        shape = covariance_shape(cov, k, n_features)
        if prec.shape != shape:
            raise ValueError(
                f"precisions_init for covariance_type={cov!r} must have shape {shape}, "
                f"got {prec.shape}."
            )
        precision_cholesky_from_precisions(prec, cov)  # raises if not positive-definite
        out["precisions_init"] = prec
    return out


def sample_mixture(
    params: Params, n_samples: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """``n_samples`` rows drawn from the mixture and their components, ``(X, labels)``."""
    counts = rng.multinomial(n_samples, params.weights)
    d = params.n_features
    pieces = []
    for k, (mean, count) in enumerate(zip(params.means, counts, strict=True)):
        if params.covariance_type == "full":
            pieces.append(rng.multivariate_normal(mean, params.covariances[k], int(count)))
        elif params.covariance_type == "tied":
            pieces.append(rng.multivariate_normal(mean, params.covariances, int(count)))
        else:
            scale = np.sqrt(params.covariances[k])
            pieces.append(mean + rng.standard_normal(size=(int(count), d)) * scale)
    labels = np.repeat(np.arange(params.n_components), counts)
    return np.vstack(pieces), labels
