"""The federation manifest: the public bounds every site accepts before a fit.

Layer: the standard library, NumPy, :mod:`distmix.federated.codec` and, for a
private federation, :mod:`distmix.privacy`.

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
``dp_weight``       ``N + 64 σ₀`` (a private E-step's noisy counts)
``dp_first``        ``N·B + 64 σ₁`` (its noisy first moments)
``dp_second``       ``N·B² + 64 σ₂`` (its noisy second moments)
==================  =================================================

with ``N = max_rows_per_site``, ``W = max_weight``, ``R = radius`` (of the
ball about ``centre`` that rows and means lie in) and ``Λ =
2**log_density_exponent`` (the largest ``|log p(x)|`` of one row). Values are
encoded down to the smallest float64 (:mod:`~distmix.federated.codec`), so a
generous bound costs a few bits, not precision; a site refuses to send a value
beyond its bound and names the field. ``max_sites`` sizes the digits so that
that many sites, all at their bounds, never wrap.

A *private* manifest (``dp_epsilon`` and the other ``dp_`` fields set) makes a
differentially private federation: its sites answer only private E-steps
(rows clipped to the ball of radius ``B = dp_clip_radius`` about ``centre``),
at most ``dp_iterations`` of them, with the noise of the budget
``(dp_epsilon, dp_delta)`` added by the coordinator to the decoded sum
(``dp_noise="central"``) or in shares by the sites before masking
(``"distributed"``; ``σᵢ`` above are the whole sum's noise scales).

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

import numpy as np

from distmix.federated.codec import digit_bits, words_per_value
from distmix.privacy import RELEASED_FIELDS, Privacy

MANIFEST_FORMAT = "distmix-federation-manifest/1"
Mode = Literal["threshold", "all-or-nothing"]
MODES: tuple[str, ...] = ("threshold", "all-or-nothing")
#: no sum over fewer sites is ever released
MIN_SITES = 3
FIELD_KINDS = (
    "count",
    "weight",
    "first",
    "second",
    "log_lik",
    "limb",
    "dp_weight",
    "dp_first",
    "dp_second",
)
#: where a private federation's noise is added (see the module docstring)
NOISE_MODES: tuple[str, ...] = ("distributed", "central")
#: the fields of a private manifest; left out of its JSON when it is not private
PRIVACY_FIELDS = (
    "dp_epsilon",
    "dp_delta",
    "dp_clip_radius",
    "dp_iterations",
    "dp_noise",
    "dp_shares",
)
#: a private field's bound: its clipped sum and this many of its noise's σ
NOISE_HEADROOM = 64.0


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
    dp_epsilon, dp_delta, dp_clip_radius, dp_iterations, dp_noise, dp_shares
        A private federation (all of the first four, or none): its budget
        ``(ε, δ)``, the clipping radius about ``centre``, the most private
        iterations any fit under this manifest may run (each site charges every
        private E-step it answers against them), where the noise is added
        (``"distributed"``, the default: each site adds a share, so that the sum
        of any ``threshold`` sites, or of all in all-or-nothing mode, carries the
        whole noise; ``"central"``: the coordinator adds it to the sum), and the
        budget's split between counts, first and second moments.
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
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_clip_radius: float | None = None
    dp_iterations: int | None = None
    dp_noise: str | None = None
    dp_shares: tuple[float, float, float] | None = None

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
        self._check_privacy()

    def _check_privacy(self) -> None:
        required = ("dp_epsilon", "dp_delta", "dp_clip_radius", "dp_iterations")
        given = [name for name in PRIVACY_FIELDS if getattr(self, name) is not None]
        if not given:
            return
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"a private manifest needs {', '.join(required)}; {', '.join(missing)} "
                f"missing (given: {', '.join(given)})."
            )
        if self.max_weight != 1.0:
            raise ValueError(
                f"a private manifest's rows have weight 1 (its sensitivities are for them); "
                f"got max_weight={self.max_weight!r}."
            )
        iterations = self.dp_iterations
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(
                f"manifest dp_iterations must be a positive integer, got {iterations!r}."
            )
        noise = "distributed" if self.dp_noise is None else self.dp_noise
        if noise not in NOISE_MODES:
            raise ValueError(f"manifest dp_noise must be one of {NOISE_MODES}, got {noise!r}.")
        object.__setattr__(self, "dp_noise", noise)
        for name in ("dp_epsilon", "dp_delta", "dp_clip_radius"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.dp_shares is not None:
            object.__setattr__(self, "dp_shares", tuple(float(v) for v in self.dp_shares))
            if len(self.dp_shares) != 3:
                raise ValueError(
                    "manifest dp_shares must be three numbers (counts, first, second)."
                )
        self.privacy_plan()  # validates the budget and the ball

    # -- privacy --------------------------------------------------------------
    @property
    def private(self) -> bool:
        """Whether this is a differentially private federation."""
        return self.dp_epsilon is not None

    @property
    def noise_parts(self) -> int:
        """How many sites' noise shares a released sum holds at least: the threshold
        (threshold mode), every site (all-or-nothing: its sites refuse a private round
        without all of them); 1 where the coordinator adds it."""
        if self.dp_noise != "distributed":
            return 1
        if self.mode == "threshold":
            return int(self.threshold or MIN_SITES)
        return len(self.sites)

    def privacy(self) -> Any:
        """The :class:`distmix.privacy.Privacy` settings of a private manifest, else None."""
        if not self.private:
            return None
        shares = None
        if self.dp_shares is not None:
            shares = dict(zip(RELEASED_FIELDS, self.dp_shares, strict=True))
        centre = np.broadcast_to(np.asarray(self.centre, dtype=np.float64), (self.n_features,))
        return Privacy(
            epsilon=float(self.dp_epsilon),  # type: ignore[arg-type]
            delta=float(self.dp_delta),  # type: ignore[arg-type]
            clip_radius=float(self.dp_clip_radius),  # type: ignore[arg-type]
            centre=centre.copy(),
            noise_shares=shares,
        )

    def privacy_plan(self) -> Any:
        """The :class:`distmix.privacy.PrivacyPlan` of a private manifest (its budget
        spread over ``dp_iterations`` releases), else None."""
        return _plan(self)

    # -- identity -----------------------------------------------------------
    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): what sites accept and hash."""
        record = asdict(self)
        record["sites"] = list(self.sites)
        if not self.private:  # the JSON (and digest) of a manifest without privacy is unchanged
            for name in PRIVACY_FIELDS:
                del record[name]
        elif self.dp_shares is not None:
            record["dp_shares"] = list(self.dp_shares)
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
        if isinstance(record.get("dp_shares"), list):
            record["dp_shares"] = tuple(record["dp_shares"])
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
        if kind.startswith("dp_") and kind[3:] in ("weight", "first", "second"):
            plan = self.privacy_plan()
            if plan is None:
                return 0
            power = {"weight": 0, "first": 1, "second": 2}[kind[3:]]
            name = {"weight": "resp_sum", "first": "x_sum", "second": "second"}[kind[3:]]
            value = n * plan.ball.radius**power + NOISE_HEADROOM * plan.largest_sigmas[name]
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


@functools.lru_cache(maxsize=64)
def _plan(manifest: Manifest) -> Any:
    """A private manifest's plan (OpenDP's accounting: computed once per manifest)."""
    privacy = manifest.privacy()
    if privacy is None:
        return None
    return privacy.plan(int(manifest.dp_iterations))  # type: ignore[arg-type]
