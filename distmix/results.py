"""The results of block tasks: each adds exactly and packs to a flat vector with a schema.

Layer: beside the kernels (imports NumPy and the other result types only).

Every named block task (:mod:`distmix.tasks`) returns one of these types, or
:class:`~distmix.suffstats.SuffStats`, :class:`~distmix.fingerprint.DataFingerprint`
or :class:`~distmix.nonfinite.NonFinite`, which follow the same contract:

* ``a + b`` combines the results of two runs of blocks (the tree sum of an
  engine adds them ``split_every`` at a time, in block order);
* ``a.pack()`` is one flat float64 vector and ``a.schema()`` a small
  JSON-friendly dict (plus, for SuffStats, its reference point) that says how
  to read it back; :func:`unpack_result` is the inverse and refuses a vector
  whose size or header disagrees with the schema. The packed vector is what
  crosses a network, gets masked for a secure sum, or gets noise.

The results of the tasks that move rows (:class:`Rows`) "add" by
concatenation in block order, which is associative but not commutative: an
engine keeps the blocks' order, as it does for every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from distmix.fingerprint import DataFingerprint
from distmix.nonfinite import NonFinite
from distmix.suffstats import SuffStats, _to_numpy


class BlockResult(Protocol):
    """What every block task returns."""

    def __add__(self, other: Any) -> Any: ...

    def pack(self) -> np.ndarray: ...

    def schema(self) -> dict[str, Any]: ...


def _vector(vector: Any, size: int, what: str) -> np.ndarray:
    out = np.asarray(vector, dtype=np.float64)
    if out.ndim != 1 or out.size != size:
        raise ValueError(
            f"packed {what} has {size} values by its schema, got an array of shape {out.shape}."
        )
    return out


@dataclass(frozen=True, eq=False)
class Totals:
    """A fixed-length vector of sums (k-means cost, weight nearest to each centre)."""

    values: np.ndarray

    def __add__(self, other: Totals) -> Totals:
        if not isinstance(other, Totals):
            return NotImplemented
        if self.values.shape != other.values.shape:
            raise ValueError(
                f"cannot add Totals of {self.values.size} and {other.values.size} values."
            )
        return Totals(self.values + other.values)

    def to_host(self) -> Totals:
        return Totals(_to_numpy(self.values).reshape(-1))

    def pack(self) -> np.ndarray:
        return np.asarray(_to_numpy(self.values), dtype=np.float64).reshape(-1).copy()

    def schema(self) -> dict[str, Any]:
        return {"type": "Totals", "size": int(np.size(self.values))}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> Totals:
        return cls(_vector(vector, int(schema["size"]), "Totals").copy())


@dataclass(frozen=True, eq=False)
class Rows:
    """Rows taken from the blocks, with their global indices, in block order.

    The result of the tasks that move rows to the caller (``take_rows``,
    ``kmeans_sample``): an engine that must keep rows where they are refuses
    those tasks by name.
    """

    index: np.ndarray  # (m,) int64
    rows: np.ndarray  # (m, D) float64

    @classmethod
    def empty(cls, n_features: int) -> Rows:
        return cls(np.empty(0, dtype=np.int64), np.empty((0, n_features)))

    def __add__(self, other: Rows) -> Rows:
        if not isinstance(other, Rows):
            return NotImplemented
        return Rows(
            np.concatenate([self.index, other.index]), np.concatenate([self.rows, other.rows])
        )

    def to_host(self) -> Rows:
        return self

    def pack(self) -> np.ndarray:
        return np.concatenate([self.index.astype(np.float64), self.rows.reshape(-1)])

    def schema(self) -> dict[str, Any]:
        m, d = self.rows.shape
        return {"type": "Rows", "n_rows": int(m), "n_features": int(d)}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> Rows:
        m, d = int(schema["n_rows"]), int(schema["n_features"])
        flat = _vector(vector, m * (1 + d), "Rows")
        return cls(flat[:m].astype(np.int64), flat[m:].reshape(m, d).copy())


@dataclass(frozen=True)
class LogLikelihoodTotal:
    """``Σ w log p(x)`` and ``Σ w`` over finite rows, and the non-finite rows."""

    log_lik: float
    weight: float
    nonfinite: NonFinite

    def __add__(self, other: LogLikelihoodTotal) -> LogLikelihoodTotal:
        return LogLikelihoodTotal(
            self.log_lik + other.log_lik,
            self.weight + other.weight,
            self.nonfinite + other.nonfinite,
        )

    def to_host(self) -> LogLikelihoodTotal:
        return self

    def pack(self) -> np.ndarray:
        return np.concatenate([np.asarray([self.log_lik, self.weight]), self.nonfinite.pack()])

    def schema(self) -> dict[str, Any]:
        return {"type": "LogLikelihoodTotal"}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> LogLikelihoodTotal:
        flat = _vector(vector, 4, "LogLikelihoodTotal")
        return cls(float(flat[0]), float(flat[1]), NonFinite.unpack(flat[2:], {}))


@dataclass(frozen=True)
class FingerprintedStats:
    """A block's SuffStats and the fingerprint of its values, added side by side."""

    stats: SuffStats
    fingerprint: DataFingerprint

    def __add__(self, other: FingerprintedStats) -> FingerprintedStats:
        return FingerprintedStats(self.stats + other.stats, self.fingerprint + other.fingerprint)

    def to_host(self) -> FingerprintedStats:
        return FingerprintedStats(self.stats.to_host(), self.fingerprint)

    def pack(self) -> np.ndarray:
        return np.concatenate([self.stats.pack(), self.fingerprint.pack()])

    def schema(self) -> dict[str, Any]:
        return {
            "type": "FingerprintedStats",
            "stats": self.stats.schema(),
            "fingerprint": self.fingerprint.schema(),
        }

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> FingerprintedStats:
        stats_schema = schema["stats"]
        n_stats = SuffStats.packed_size(
            stats_schema["covariance_type"],
            int(stats_schema["n_components"]),
            int(stats_schema["n_features"]),
        )
        flat = _vector(vector, n_stats + DataFingerprint.PACKED_SIZE, "FingerprintedStats")
        return cls(
            SuffStats.from_schema(flat[:n_stats], stats_schema),
            DataFingerprint.unpack(flat[n_stats:], schema["fingerprint"]),
        )


@dataclass(frozen=True)
class KMeansStats:
    """SuffStats of a hard assignment plus its inertia ``Σ w min_k ‖x − c_k‖²``."""

    stats: SuffStats
    inertia: float

    def __add__(self, other: KMeansStats) -> KMeansStats:
        return KMeansStats(self.stats + other.stats, self.inertia + other.inertia)

    def to_host(self) -> KMeansStats:
        return KMeansStats(self.stats.to_host(), float(_to_numpy(self.inertia)))

    def pack(self) -> np.ndarray:
        return np.concatenate([self.stats.pack(), np.asarray([float(self.inertia)])])

    def schema(self) -> dict[str, Any]:
        return {"type": "KMeansStats", "stats": self.stats.schema()}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> KMeansStats:
        stats_schema = schema["stats"]
        n_stats = SuffStats.packed_size(
            stats_schema["covariance_type"],
            int(stats_schema["n_components"]),
            int(stats_schema["n_features"]),
        )
        flat = _vector(vector, n_stats + 1, "KMeansStats")
        return cls(SuffStats.from_schema(flat[:n_stats], stats_schema), float(flat[n_stats]))


@dataclass(frozen=True)
class StatsBundle:
    """The E-step statistics of several models over the same rows, side by side (one
    read of a block serves every model): member ``i`` adds only to member ``i``."""

    members: tuple[SuffStats, ...]

    def __add__(self, other: StatsBundle) -> StatsBundle:
        if len(other.members) != len(self.members):
            raise ValueError(
                f"cannot add bundles of {len(self.members)} and {len(other.members)} models."
            )
        return StatsBundle(tuple(a + b for a, b in zip(self.members, other.members, strict=True)))

    def to_host(self) -> StatsBundle:
        return StatsBundle(tuple(member.to_host() for member in self.members))

    def pack(self) -> np.ndarray:
        return np.concatenate([member.pack() for member in self.members])

    def schema(self) -> dict[str, Any]:
        return {"type": "StatsBundle", "members": [member.schema() for member in self.members]}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> StatsBundle:
        sizes = [
            SuffStats.packed_size(
                m["covariance_type"], int(m["n_components"]), int(m["n_features"])
            )
            for m in schema["members"]
        ]
        flat = _vector(vector, sum(sizes), "StatsBundle")
        ends = np.cumsum(sizes)
        return cls(
            tuple(
                SuffStats.from_schema(flat[end - size : end], member)
                for size, end, member in zip(sizes, ends, schema["members"], strict=True)
            )
        )


#: every result type, by the name its schema gives
RESULT_TYPES: dict[str, Any] = {
    "SuffStats": SuffStats,
    "DataFingerprint": DataFingerprint,
    "NonFinite": NonFinite,
    "Totals": Totals,
    "Rows": Rows,
    "LogLikelihoodTotal": LogLikelihoodTotal,
    "FingerprintedStats": FingerprintedStats,
    "KMeansStats": KMeansStats,
    "StatsBundle": StatsBundle,
}


def unpack_result(vector: Any, schema: dict[str, Any]) -> Any:
    """The result a packed ``vector`` holds, read by its ``schema`` (inverse of ``pack``)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    cls = RESULT_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(
            f"unknown result type {kind!r} in a packed schema; known: "
            + ", ".join(sorted(RESULT_TYPES))
            + "."
        )
    if cls is SuffStats:
        return SuffStats.from_schema(vector, schema)
    return cls.unpack(vector, schema)
