"""What a site sends for each task: the named, bounded values of its result.

Layer: result types, the task registry and the manifest; nothing of sites,
masks or transports.

A site's result of a reduce task is turned into a flat float64 vector of
*fields* (:class:`~distmix.federated.codec.Field`), each with the bound of its
kind in the manifest; the coordinator turns the decoded sum back into a result
of the same type. What never leaves a site is left out: the header of a packed
result (public: the coordinator knows the task and its arguments), and the
non-finite-row count and first index (a site with such rows refuses every
request instead, naming itself and no row). Symmetric second moments (full,
tied) travel as their upper triangle.

The coordinator knows the shape of every result before asking for it: a
task run on zero rows of the right width (:func:`template`) is the result's
zero, with the reference point the arguments give.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from distmix.federated.codec import Field
from distmix.federated.manifest import Manifest
from distmix.fingerprint import DataFingerprint
from distmix.nonfinite import NonFinite
from distmix.results import FingerprintedStats, KMeansStats, LogLikelihoodTotal, Totals
from distmix.suffstats import SuffStats
from distmix.tasks import TASKS, run_block

#: tasks a federation does not run yet: several models' E-steps in one round need a wire
#: form for a list of Params (a federation runs its restarts one after another)
_NOT_YET = frozenset({"estep_many", "scores"})
#: the tasks a site runs: every reduce task of the registry that moves no rows
SITE_TASKS: tuple[str, ...] = tuple(
    name
    for name, task in TASKS.items()
    if task.kind == "reduce" and not task.moves_rows and name not in _NOT_YET
)
#: the tasks of a private federation: only their clipped, noised fields travel (no row
#: count, no log-likelihood), each bounded with room for its noise
PRIVATE_TASKS = frozenset({"private_estep", "private_moments"})
_PRIVATE_KINDS = {"resp_sum": "dp_weight", "x_sum": "dp_first", "second": "dp_second"}
#: the field kind of a Totals result, by task
_TOTALS_KIND = {"kmeans_cost": "second", "nearest_weight": "weight"}


class Slot(NamedTuple):
    """A named run of ``size`` values whose bound is the manifest's for ``kind``."""

    name: str
    size: int
    kind: str


def template(task: str, n_features: int, args: tuple) -> Any:
    """The task's result over zero rows: its type, shape and reference, all sums zero."""
    return run_block(task, np.empty((0, n_features)), None, 0, args)


def _stats_slots(stats: SuffStats, prefix: str = "") -> list[Slot]:
    k, d = stats.n_components, stats.n_features
    return [
        Slot(prefix + "resp_sum", k, "weight"),
        Slot(prefix + "x_sum", k * d, "first"),
        Slot(prefix + "second", stats.second_values().size, "second"),
        Slot(prefix + "n_rows", 1, "count"),
        Slot(prefix + "log_lik", 1, "log_lik"),
    ]


def _stats_values(stats: SuffStats) -> list[np.ndarray]:
    host = stats.to_host()
    return [
        np.ravel(host.resp_sum),
        np.ravel(host.x_sum),
        host.second_values(),
        np.asarray([host.n_rows]),
        np.asarray([host.log_lik]),
    ]


def _stats_from(values: np.ndarray, like: SuffStats) -> tuple[SuffStats, np.ndarray]:
    k, d = like.n_components, like.n_features
    n_second = like.second_values().size
    parts = np.split(values, np.cumsum([k, k * d, n_second, 1, 1]))
    stats = SuffStats(
        like.covariance_type,
        like.reference,
        parts[0].copy(),
        parts[1].reshape(k, d).copy(),
        like.second_from_values(parts[2]),
        float(parts[3][0]),
        float(parts[4][0]),
        0.0,
        np.inf,
    )
    return stats, parts[5]


def _fingerprint_values(fp: DataFingerprint) -> np.ndarray:
    return fp.pack()


def _fingerprint_from(values: np.ndarray) -> DataFingerprint:
    return DataFingerprint.unpack(values, {})


_FINGERPRINT_SLOTS = [Slot("fingerprint_limbs", 4, "limb"), Slot("fingerprint_rows", 1, "count")]


# -- per result type: slots, values, rebuild ------------------------------------
def slots(task: str, like: Any) -> list[Slot]:
    """The named runs of values a site sends for ``task`` (``like``: its template)."""
    if task in PRIVATE_TASKS:
        return [Slot(s.name, s.size, _PRIVATE_KINDS[s.name]) for s in _stats_slots(like)[:3]]
    if isinstance(like, SuffStats):
        return _stats_slots(like)
    if isinstance(like, KMeansStats):
        return [*_stats_slots(like.stats), Slot("inertia", 1, "second")]
    if isinstance(like, FingerprintedStats):
        return [*_stats_slots(like.stats), *_FINGERPRINT_SLOTS]
    if isinstance(like, LogLikelihoodTotal):
        return [Slot("log_lik", 1, "log_lik"), Slot("weight", 1, "weight")]
    if isinstance(like, Totals):
        return [Slot("totals", int(np.size(like.values)), _TOTALS_KIND[task])]
    if isinstance(like, DataFingerprint):
        return list(_FINGERPRINT_SLOTS)
    if isinstance(like, NonFinite):
        return []
    raise TypeError(f"a site does not send {type(like).__name__} results.")


def bounded_fields(task: str, like: Any, manifest: Manifest) -> list[Field]:
    """The codec fields of :func:`slots`: each with the manifest's bound of its kind."""
    return [Field(s.name, s.size, manifest.bound_exponent(s.kind)) for s in slots(task, like)]


def nonfinite_count(result: Any) -> float:
    """The non-finite rows a result counted (a site refuses to send any)."""
    if isinstance(result, NonFinite):
        return float(result.count)
    if isinstance(result, LogLikelihoodTotal):
        return float(result.nonfinite.count)
    stats = getattr(result, "stats", result)
    if isinstance(stats, SuffStats):
        return float(stats.to_host().n_nonfinite)
    return 0.0


def values(result: Any, task: str = "") -> np.ndarray:
    """The flat float64 vector of a result's fields, in :func:`slots` order."""
    if task in PRIVATE_TASKS:
        parts = _stats_values(result)[:3]
    elif isinstance(result, SuffStats):
        parts = _stats_values(result)
    elif isinstance(result, KMeansStats):
        parts = [*_stats_values(result.stats), np.asarray([float(result.inertia)])]
    elif isinstance(result, FingerprintedStats):
        parts = [*_stats_values(result.stats), _fingerprint_values(result.fingerprint)]
    elif isinstance(result, LogLikelihoodTotal):
        parts = [np.asarray([result.log_lik, result.weight])]
    elif isinstance(result, Totals):
        parts = [np.ravel(result.to_host().values)]
    elif isinstance(result, DataFingerprint):
        parts = [_fingerprint_values(result)]
    elif isinstance(result, NonFinite):
        parts = []
    else:
        raise TypeError(f"a site does not send {type(result).__name__} results.")
    if not parts:
        return np.empty(0)
    return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts])


def rebuild(like: Any, summed: np.ndarray, task: str = "") -> Any:
    """The result of ``like``'s type whose field values are ``summed`` (no non-finite
    rows; a private task's without row count or log-likelihood: both zero)."""
    summed = np.asarray(summed, dtype=np.float64)
    if task in PRIVATE_TASKS:
        summed = np.concatenate([summed, np.zeros(2)])
    if isinstance(like, (KMeansStats, FingerprintedStats)):
        stats, rest = _stats_from(summed, like.stats)
        if isinstance(like, KMeansStats):
            return KMeansStats(stats, float(rest[0]))
        return FingerprintedStats(stats, _fingerprint_from(rest))
    builders: dict[type, Callable[[], Any]] = {
        SuffStats: lambda: _stats_from(summed, like)[0],
        LogLikelihoodTotal: lambda: LogLikelihoodTotal(
            float(summed[0]), float(summed[1]), NonFinite(0.0, np.inf)
        ),
        Totals: lambda: Totals(summed.reshape(np.shape(like.values)).copy()),
        DataFingerprint: lambda: _fingerprint_from(summed),
        NonFinite: lambda: NonFinite(0.0, np.inf),
    }
    build = builders.get(type(like))
    if build is None:
        raise TypeError(f"no wire form for {type(like).__name__} results.")
    return build()
