"""SuffStats: the sufficient statistics of a Gaussian mixture over some rows.

Everything that moves between a chunk and the M-step is a SuffStats. Per
component ``k`` and about a reference point ``c_k`` (the means of the Params
used in the E-step), with responsibilities ``r_ik`` already multiplied by the
row weights ``w_i``:

========== ================================ ==========================
field      value                            shape
========== ================================ ==========================
resp_sum   Σ_i r_ik                         (K,)
x_sum      Σ_i r_ik (x_i − c_k)             (K, D)
second     Σ_i r_ik (x_i − c_k)(x_i − c_k)ᵀ (K, D, D) full
           the same summed over k           (D, D)     tied
           its diagonal                     (K, D)     diag
           its trace                        (K,)       spherical
n_rows     number of rows read              scalar
log_lik    Σ_i w_i log p(x_i)               scalar
n_nonfinite rows holding NaN or ±inf         scalar
first_nonfinite the smallest such row index  scalar (+inf when none)
========== ================================ ==========================

Addition is exact elementwise addition (``min`` for ``first_nonfinite``), so
it is associative and commutative: any tree, any chunking and any order of
sites give the same total up to float rounding. Two SuffStats add only when
they were computed about the same reference; :meth:`SuffStats.recentre` moves
statistics to another reference exactly (the parallel-axis theorem).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import array_api_compat
import numpy as np

from distmix._typing import COVARIANCE_TYPES, CovarianceType, check_covariance_type

PACK_MAGIC = 0x6D78  # "mx": marks a packed SuffStats vector, version 1
_HEADER = 4  # magic, covariance type code, K, D
_MOMENTS = ("resp_sum", "x_sum", "second")
_SCALARS = ("n_rows", "log_lik", "n_nonfinite", "first_nonfinite")


def second_moment_shape(
    covariance_type: str, n_components: int, n_features: int
) -> tuple[int, ...]:
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[check_covariance_type(covariance_type)]


class ReferenceMismatchError(ValueError):
    """Two SuffStats computed about different reference points were added."""


@dataclass(frozen=True, eq=False)
class SuffStats:
    """Sufficient statistics over some rows; see the module docstring."""

    covariance_type: CovarianceType
    reference: np.ndarray
    resp_sum: Any
    x_sum: Any
    second: Any
    n_rows: Any
    log_lik: Any
    n_nonfinite: Any
    first_nonfinite: Any

    # -- construction -------------------------------------------------------
    @classmethod
    def zeros(cls, covariance_type: str, reference: np.ndarray) -> SuffStats:
        reference = np.asarray(reference, dtype=np.float64)
        k, d = reference.shape
        return cls(
            covariance_type,  # type: ignore[arg-type]
            reference,
            np.zeros(k),
            np.zeros((k, d)),
            np.zeros(second_moment_shape(covariance_type, k, d)),
            0.0,
            0.0,
            0.0,
            np.inf,
        )

    @property
    def n_components(self) -> int:
        return int(self.reference.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.reference.shape[1])

    @property
    def weight_sum(self) -> float:
        """Total row weight (the number of finite rows when unweighted)."""
        return float(np.sum(self.to_host().resp_sum))

    # -- algebra ------------------------------------------------------------
    def __add__(self, other: SuffStats) -> SuffStats:
        if not isinstance(other, SuffStats):
            return NotImplemented
        self._check_compatible(other)
        return replace(
            self,
            resp_sum=self.resp_sum + other.resp_sum,
            x_sum=self.x_sum + other.x_sum,
            second=self.second + other.second,
            n_rows=self.n_rows + other.n_rows,
            log_lik=self.log_lik + other.log_lik,
            n_nonfinite=self.n_nonfinite + other.n_nonfinite,
            first_nonfinite=_smaller(self.first_nonfinite, other.first_nonfinite),
        )

    def _check_compatible(self, other: SuffStats) -> None:
        if self.covariance_type != other.covariance_type:
            raise ValueError(
                f"cannot add SuffStats of covariance_type {self.covariance_type!r} "
                f"and {other.covariance_type!r}."
            )
        if self.reference is not other.reference and not np.array_equal(
            self.reference, other.reference
        ):
            raise ReferenceMismatchError(
                "cannot add SuffStats computed about different reference points: "
                "every block of one EM iteration must use the same Params "
                "(use SuffStats.recentre to move statistics to a common reference)."
            )

    def scale(self, factor: float) -> SuffStats:
        """Multiply every additive statistic by ``factor`` (running averages)."""
        return replace(
            self,
            resp_sum=self.resp_sum * factor,
            x_sum=self.x_sum * factor,
            second=self.second * factor,
            log_lik=self.log_lik * factor,
        )

    def recentre(self, reference: np.ndarray) -> SuffStats:
        """The same statistics about a new reference point, exactly.

        With ``δ_k = c_k − c'_k``: ``Σ r (x − c') = S1 + S0 δ`` and
        ``Σ r (x−c')(x−c')ᵀ = S2 + S1 δᵀ + δ S1ᵀ + S0 δ δᵀ``.
        """
        new = np.asarray(reference, dtype=np.float64)
        host = self.to_host()
        delta = host.reference - new
        s0, s1 = host.resp_sum, host.x_sum
        x_sum = s1 + s0[:, None] * delta
        cross = s1[:, :, None] * delta[:, None, :]
        full = (
            cross
            + np.swapaxes(cross, 1, 2)
            + s0[:, None, None] * delta[:, :, None] * delta[:, None, :]
        )
        extra = {
            "full": lambda: full,
            "tied": lambda: full.sum(axis=0),
            "diag": lambda: np.diagonal(full, axis1=1, axis2=2),
            "spherical": lambda: np.trace(full, axis1=1, axis2=2),
        }[self.covariance_type]()
        return replace(host, reference=new, x_sum=x_sum, second=host.second + extra)

    # -- host / wire --------------------------------------------------------
    def second_values(self) -> np.ndarray:
        """The second moment as it is sent (host, float64, flat): the symmetric
        ``full`` and ``tied`` matrices once, as their upper triangles (row by row)."""
        second = np.asarray(self.to_host().second, dtype=np.float64)
        if self.covariance_type in ("full", "tied"):
            i, j = np.triu_indices(self.n_features)
            return second[..., i, j].reshape(-1)
        return second.reshape(-1)

    def second_from_values(self, values: np.ndarray) -> np.ndarray:
        """A second moment of this one's shape from :meth:`second_values`'s layout
        (``full`` and ``tied`` rebuilt symmetric from their upper triangles)."""
        shape = np.shape(self.second)
        if self.covariance_type in ("full", "tied"):
            i, j = np.triu_indices(self.n_features)
            out = np.zeros(shape)
            upper = np.asarray(values, dtype=np.float64).reshape(shape[:-2] + (i.size,))
            out[..., i, j] = upper
            out[..., j, i] = upper
            return out
        return np.asarray(values, dtype=np.float64).reshape(shape).copy()

    def to_host(self) -> SuffStats:
        """The same statistics as float64 NumPy arrays and Python floats.

        Statistics on a device come over in one copy: the fields of one namespace
        are joined into one vector there first, so that a block's statistics wait
        for the device once, not once per field (seven times).
        """
        if all(isinstance(getattr(self, f), np.ndarray) for f in _MOMENTS) and all(
            isinstance(getattr(self, f), float) for f in _SCALARS
        ):
            return self
        values: dict[str, Any] = _on_host({f: getattr(self, f) for f in _MOMENTS + _SCALARS})
        values.update({f: float(values[f]) for f in _SCALARS})
        return replace(self, **values)

    def pack(self) -> np.ndarray:
        """One flat float64 vector: a 4-value header, the moments, the scalars."""
        host = self.to_host()
        header = [
            PACK_MAGIC,
            COVARIANCE_TYPES.index(self.covariance_type),
            self.n_components,
            self.n_features,
        ]
        parts = [np.asarray(header, dtype=np.float64)]
        parts += [np.ravel(getattr(host, f)) for f in _MOMENTS]
        parts.append(np.asarray([getattr(host, f) for f in _SCALARS], dtype=np.float64))
        return np.concatenate(parts)

    @classmethod
    def unpack(cls, vector: Any, covariance_type: str, reference: np.ndarray) -> SuffStats:
        """Inverse of :meth:`pack`; the header must match the expected schema."""
        vector = np.asarray(vector, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        k, d = reference.shape
        expected = cls.packed_size(covariance_type, k, d)
        if vector.ndim != 1 or vector.size != expected:
            raise ValueError(
                f"packed SuffStats for covariance_type={covariance_type!r}, K={k}, D={d} "
                f"has {expected} values, got an array of shape {vector.shape}."
            )
        header = (PACK_MAGIC, COVARIANCE_TYPES.index(covariance_type), k, d)
        if tuple(vector[:_HEADER]) != header:
            raise ValueError(
                f"packed SuffStats header {tuple(vector[:_HEADER])} does not match the "
                f"expected schema {header} (magic, covariance type code, K, D)."
            )
        values: dict[str, Any] = {}
        offset = _HEADER
        for name, shape in (
            ("resp_sum", (k,)),
            ("x_sum", (k, d)),
            ("second", second_moment_shape(covariance_type, k, d)),
        ):
            size = int(np.prod(shape))
            values[name] = vector[offset : offset + size].reshape(shape).copy()
            offset += size
        for name in _SCALARS:
            values[name] = float(vector[offset])
            offset += 1
        return cls(covariance_type, reference, **values)  # type: ignore[arg-type]

    def schema(self) -> dict[str, Any]:
        """How to read :meth:`pack`'s vector back (:meth:`from_schema`); the reference is
        the one array in it (the caller of an E-step knows it: the means it sent)."""
        return {
            "type": "SuffStats",
            "covariance_type": self.covariance_type,
            "n_components": self.n_components,
            "n_features": self.n_features,
            "reference": self.reference,
        }

    @classmethod
    def from_schema(cls, vector: Any, schema: dict[str, Any]) -> SuffStats:
        """:meth:`unpack` with the covariance type and reference of a :meth:`schema`."""
        return cls.unpack(vector, schema["covariance_type"], schema["reference"])

    @staticmethod
    def packed_size(covariance_type: str, n_components: int, n_features: int) -> int:
        second = int(np.prod(second_moment_shape(covariance_type, n_components, n_features)))
        return _HEADER + n_components + n_components * n_features + second + len(_SCALARS)

    def allclose(self, other: SuffStats, rtol: float = 1e-12, atol: float = 0.0) -> bool:
        a, b = self.to_host(), other.to_host()
        return all(
            np.allclose(getattr(a, f.name), getattr(b, f.name), rtol=rtol, atol=atol)
            for f in fields(self)
            if f.name != "covariance_type"
        )


def _smaller(a: Any, b: Any) -> Any:
    """``min(a, b)`` of two scalars: Python floats on the host, else a 0-d array of
    their namespace, so that adding statistics still on a device (the pieces of a
    block, say) does not wait for the device to hand over a Python float."""
    if isinstance(a, (float, int, np.generic)) and isinstance(b, (float, int, np.generic)):
        return min(float(a), float(b))
    xp = array_api_compat.array_namespace(a, b)
    return xp.minimum(a, b)


def _on_host(arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every value of ``arrays`` as a float64 NumPy array of its shape; those not on
    the host, when they share a namespace, in one copy (one concatenation there)."""
    host_types = (np.ndarray, np.generic, float, int)
    away = {name: a for name, a in arrays.items() if not isinstance(a, host_types)}
    out = {name: _to_numpy(a) for name, a in arrays.items() if name not in away}
    try:
        xp = array_api_compat.array_namespace(*away.values()) if len(away) > 1 else None
    except TypeError:  # several namespaces: each field on its own
        xp = None
    if xp is None:
        out.update({name: _to_numpy(a) for name, a in away.items()})
        return out
    flat = _to_numpy(
        xp.concat([xp.reshape(xp.astype(a, xp.float64), (-1,)) for a in away.values()])
    )
    offset = 0
    for name, a in away.items():
        shape = tuple(int(s) for s in a.shape)
        size = math.prod(shape)
        out[name] = flat[offset : offset + size].reshape(shape)
        offset += size
    return out


def _to_numpy(array: Any) -> np.ndarray:
    """Move an array of any namespace and device to host float64 NumPy."""
    if isinstance(array, (np.ndarray, np.generic, float, int)):
        return np.asarray(array, dtype=np.float64)
    if hasattr(array, "get"):  # CuPy
        return np.asarray(array.get(), dtype=np.float64)
    if hasattr(array, "cpu") and hasattr(array, "numpy"):  # torch
        return np.asarray(array.detach().cpu().numpy(), dtype=np.float64)
    try:
        return np.asarray(np.from_dlpack(array), dtype=np.float64)
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(array, dtype=np.float64)
