"""The federation manifest: the public bounds every site accepts before a fit.

Layer: the standard library, NumPy and :mod:`distmix.federated.codec`.

Secure sums are exact only if no sum wraps, so each statistic is bounded by a
power of two fixed before the fit from public numbers alone, never from the
sites' data:

==================  =================================================
field kind          bound (a site's value, ``|v|``)
==================  =================================================
``count``           ``N`` (rows per site)
``weight``          ``N·W`` (sums of row weights, responsibilities)
``first``           ``N·W·2R`` (Σ r (x − m): rows and means in the ball)
``second``          ``N·W·(2R)²`` (Σ r (x − m)(x − m)ᵀ, k-means costs)
``log_lik``         ``N·W·Λ`` (Σ w log p(x))
``limb``            ``2**16`` (a data fingerprint's 16-bit limbs)
==================  =================================================

with ``N = max_rows_per_site``, ``W = max_weight``, ``R = radius`` (of the
ball about ``centre`` that rows and means lie in) and ``Λ =
2**log_density_exponent`` (the largest ``|log p(x)|`` of one row). Values are
encoded down to the smallest float64 (:mod:`~distmix.federated.codec`), so a
generous bound costs a few bits, not precision; a site refuses to send a value
beyond its bound and names the field. ``max_sites`` sizes the digits so that
that many sites, all at their bounds, never wrap.

A manifest is identified by the SHA-256 of its canonical JSON
(:attr:`Manifest.digest`): sites refuse a session under any other manifest,
and every key is derived with the digest as salt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from distmix.federated.codec import digit_bits, words_per_value

MANIFEST_FORMAT = "distmix-federation-manifest/1"
Mode = Literal["threshold", "all-or-nothing"]
MODES: tuple[str, ...] = ("threshold", "all-or-nothing")
#: no sum over fewer sites is ever released
MIN_SITES = 3
FIELD_KINDS = ("count", "weight", "first", "second", "log_lik", "limb")


@dataclass(frozen=True)
class Manifest:
    """Public bounds and the roster of a federation (see the module docstring).

    Parameters
    ----------
    sites : tuple of str
        The sites' names, in the order their pairwise masks and shares use.
    n_features : int
        Columns of every site's rows.
    max_rows_per_site : int
        Bound on the rows (and on the summed weight, with ``max_weight``) of one site.
    radius, centre
        Rows and component means lie within ``radius`` of ``centre`` (a number, used
        for every feature, or one per feature); statistics about means are bounded by it.
    max_weight : float
        Largest row weight (1 for unweighted rows).
    log_density_exponent : int
        ``|log p(x)| ≤ 2**log_density_exponent`` for one row.
    max_sites : int
        The most sites a sum may hold (sizes the digits).
    mode : {"threshold", "all-or-nothing"}
        Threshold: ``threshold`` of the sites recover the survivors' sum after
        dropouts. All-or-nothing: one exchange per round, any missing site aborts it.
    threshold : int or None
        Shares needed to unmask (threshold mode): a strict majority of the sites, at
        least 3 (the default is the smallest such).
    max_components, max_centres : int
        The largest K of a model and the most k-means centres a request may carry.
    """

    sites: tuple[str, ...]
    n_features: int
    max_rows_per_site: int
    radius: float = float(2**32)
    centre: float | tuple[float, ...] = 0.0
    max_weight: float = 1.0
    log_density_exponent: int = 128
    max_sites: int = 1024
    mode: Mode = "threshold"
    threshold: int | None = None
    max_components: int = 256
    max_centres: int = 4096
    format: str = field(default=MANIFEST_FORMAT)

    def __post_init__(self) -> None:
        sites = tuple(str(s) for s in self.sites)
        object.__setattr__(self, "sites", sites)
        if len(set(sites)) != len(sites) or any(not s or len(s) > 64 for s in sites):
            raise ValueError("manifest sites must be distinct names of 1 to 64 characters.")
        if len(sites) < MIN_SITES:
            raise ValueError(
                f"a federation needs at least {MIN_SITES} sites (no sum over fewer is "
                f"released), the manifest names {len(sites)}."
            )
        if self.mode not in MODES:
            raise ValueError(f"manifest mode must be one of {MODES}, got {self.mode!r}.")
        if len(sites) > self.max_sites:
            raise ValueError(f"{len(sites)} sites exceed max_sites={self.max_sites}.")
        for name in ("n_features", "max_rows_per_site", "max_sites", "max_components"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"manifest {name} must be a positive integer, got {value!r}.")
        for name in ("radius", "max_weight"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"manifest {name} must be positive and finite, got {value!r}.")
            object.__setattr__(self, name, value)
        centre = self.centre
        if isinstance(centre, (list, tuple)):
            centre = tuple(float(c) for c in centre)
            if len(centre) != self.n_features:
                raise ValueError(
                    f"manifest centre has {len(centre)} values for {self.n_features} features."
                )
            finite = all(math.isfinite(c) for c in centre)
        else:
            centre = float(centre)
            finite = math.isfinite(centre)
        if not finite:
            raise ValueError("manifest centre must be finite.")
        object.__setattr__(self, "centre", centre)
        if self.mode == "threshold":
            t = (
                self.threshold
                if self.threshold is not None
                else max(MIN_SITES, len(sites) // 2 + 1)
            )
            # more than half: two disjoint groups of sites can never both reach it, so a
            # coordinator that tells some a site survived and others that it dropped
            # cannot collect both its seed and its mask key
            if not max(MIN_SITES, len(sites) // 2 + 1) <= int(t) <= len(sites):
                raise ValueError(
                    f"manifest threshold must be a strict majority of the {len(sites)} sites "
                    f"(at least {max(MIN_SITES, len(sites) // 2 + 1)}, at least {MIN_SITES}) "
                    f"and at most {len(sites)}, got {t}."
                )
            object.__setattr__(self, "threshold", int(t))
        if self.format != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {self.format!r}.")
        digit_bits(self.max_sites)  # raises for an impossible number of sites

    # -- identity -----------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what sites accept and hash."""
        record = asdict(self)
        record["sites"] = list(self.sites)
        if isinstance(self.centre, tuple):
            record["centre"] = list(self.centre)
        return json.dumps(record, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        record: dict[str, Any] = json.loads(text)
        if not isinstance(record, dict) or record.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} document.")
        unknown = set(record) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown manifest fields: {sorted(unknown)}.")
        record["sites"] = tuple(record["sites"])
        if isinstance(record.get("centre"), list):
            record["centre"] = tuple(record["centre"])
        return cls(**record)

    @functools.cached_property
    def digest(self) -> bytes:
        """SHA-256 of :meth:`to_json`: the manifest's identity and every key's salt."""
        return hashlib.sha256(self.to_json().encode()).digest()

    # -- bounds -------------------------------------------------------------
    def bound_exponent(self, kind: str) -> int:
        """``e`` with every value of a field of ``kind`` at most ``2**e`` in magnitude."""
        n = float(self.max_rows_per_site)
        nw = n * max(self.max_weight, 1.0)
        two_r = 2.0 * self.radius
        value = {
            "count": n,
            "weight": nw,
            "first": nw * two_r,
            "second": nw * two_r * two_r,
            "log_lik": nw * 2.0**self.log_density_exponent,
            "limb": 2.0**16,
        }.get(kind)
        if value is None:
            raise ValueError(f"unknown field kind {kind!r}; known: {', '.join(FIELD_KINDS)}.")
        if not math.isfinite(value) or value >= 2.0**1023:
            raise ValueError(f"the manifest's bound for {kind!r} fields overflows float64.")
        return max(0, math.ceil(math.log2(value)))

    @property
    def digit_bits(self) -> int:
        return digit_bits(self.max_sites)

    @property
    def words_per_value(self) -> int:
        """64-bit words every encoded value takes (the widest field's)."""
        return words_per_value(max(self.bound_exponent(k) for k in FIELD_KINDS), self.digit_bits)
