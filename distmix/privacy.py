"""Differential privacy of individuals: clipping with public bounds, sensitivities, zCDP.

Layer: beside the kernels (pure functions and small value types; no engine, no
estimator). What a private fit releases per iteration is one sum of statistics
over the rows; this module says how much one row can move that sum, and what a
Gaussian release of it costs in zero-concentrated differential privacy (zCDP).

Clipping
--------
Every row is clipped to the ball ``‖x − x0‖ ≤ B`` about a public centre ``x0``
with a public radius ``B``: a row outside is moved along its direction from
``x0`` onto the sphere. Both come from the user (from domain knowledge or public
data); distmix never derives them from the private rows, which would spend
privacy it does not account for.

Sensitivities
-------------
The statistics of a private fit are taken about the centre ``x0`` for every
component (:func:`private_stats`; re-centred on the host afterwards, which is
post-processing). One row ``x`` of unit weight, clipped (``v = x − x0``,
``‖v‖ ≤ B``), with responsibilities ``r_k ≥ 0``, ``Σ_k r_k = 1``, adds:

============ ============================== ======================================
field        the row's contribution          its L2 (Frobenius) norm, at most
============ ============================== ======================================
resp_sum     ``r``                           ``‖r‖₂ ≤ ‖r‖₁ = 1``
x_sum        ``r_k v`` for every k           ``‖r‖₂ ‖v‖ ≤ B``
second       ``r_k v vᵀ`` (full), their sum  ``‖r‖₂ ‖v‖² ≤ B²`` (tied: ``‖v vᵀ‖ = ‖v‖²``;
             (tied), ``r_k v²`` (diag),      diag: ``‖v²‖₂ ≤ ‖v‖²``; spherical:
             ``r_k ‖v‖²`` (spherical)        ``‖r‖₂ ‖v‖² ≤ B²``)
============ ============================== ======================================

so adding or removing one row moves the three fields by at most ``1``, ``B`` and
``B²`` (:data:`SENSITIVITY_POWERS`), whatever the parameters the E-step used.
For ``full``, the symmetric second moment is released once, as its upper
triangle, whose Frobenius norm is at most that of the whole matrix.

zCDP
----
The Gaussian mechanism with L2 sensitivity ``Δ`` and noise ``N(0, σ²)`` per entry
is ``ρ``-zCDP with ``ρ = Δ² / (2σ²)``; releases compose by adding their ``ρ``;
``ρ``-zCDP implies ``(ε, δ)``-DP for every ``δ > 0``; :func:`epsilon_from_rho`
takes ``ε`` from OpenDP (the optional extra ``distmix[privacy]``), whose
conversion is the optimal one of Canonne, Kamath and Steinke (2020), and
:func:`rho_for_epsilon` inverts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat
import numpy as np

from distmix.estep import chunk_stats
from distmix.params import Params
from distmix.suffstats import SuffStats

#: the power of the clipping radius B that bounds each field's change for one row
SENSITIVITY_POWERS: dict[str, int] = {"resp_sum": 0, "x_sum": 1, "second": 2}

# a clipped row is scaled by B / ‖v‖ times this, so that its computed norm cannot
# round to above B (the scaled norm is within a few ulp of B)
_INSIDE = 1.0 - 2.0**-48


@dataclass(frozen=True)
class ClipBall:
    """The public ball rows are clipped to: ``‖x − centre‖ ≤ radius``.

    Parameters
    ----------
    centre : array of shape (D,)
        Public, finite; not computed from the private rows.
    radius : float
        Public, finite and > 0.
    """

    centre: np.ndarray
    radius: float

    def __post_init__(self) -> None:
        centre = np.asarray(self.centre, dtype=np.float64)
        if centre.ndim != 1 or centre.size == 0:
            raise ValueError(
                f"the clipping centre must be a 1-D array of one value per feature, "
                f"got shape {centre.shape}."
            )
        if not np.all(np.isfinite(centre)):
            raise ValueError("the clipping centre contains NaN or infinity.")
        radius = self.radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)):
            raise TypeError(f"the clipping radius must be a number, got {type(radius).__name__}.")
        if not (math.isfinite(float(radius)) and float(radius) > 0.0):
            raise ValueError(f"the clipping radius must be finite and > 0, got {radius!r}.")
        centre.setflags(write=False)
        object.__setattr__(self, "centre", centre)
        object.__setattr__(self, "radius", float(radius))

    @property
    def n_features(self) -> int:
        return int(self.centre.shape[0])

    def check_features(self, n_features: int) -> None:
        if n_features != self.n_features:
            raise ValueError(
                f"the clipping centre has {self.n_features} features but the rows have "
                f"{n_features}."
            )

    def sensitivities(self) -> dict[str, float]:
        """Each field's L2 sensitivity to adding or removing one row of unit weight."""
        return {name: self.radius**power for name, power in SENSITIVITY_POWERS.items()}

    def offsets(self, block: Any) -> Any:
        """The rows as offsets from the centre, clipped to the radius (array-API,
        float64; a non-finite row stays non-finite, for the E-step to name). Offsets,
        not rows: a clipped row far from the origin would round its distance to the
        centre by an ulp of its coordinates, past the radius."""
        xp = array_api_compat.array_namespace(block)
        x = xp.astype(block, xp.float64)
        self.check_features(int(x.shape[1]))
        v = x - xp.asarray(self.centre, device=array_api_compat.device(x))
        # the norm scaled by the largest entry: no overflow for finite rows however
        # large; a row with NaN or ±inf keeps them (scale 1), for the E-step to name
        big = xp.max(xp.abs(v), axis=1, keepdims=True)
        finite = xp.isfinite(big)
        unit = xp.where(finite & (big > 0.0), big, 1.0)
        w = v / unit
        norm = unit * xp.sqrt(xp.sum(w * w, axis=1, keepdims=True))
        outside = finite & (norm > self.radius)
        # norm > radius > 0 where the scale is used; elsewhere divide by 1
        scale = xp.where(outside, (self.radius * _INSIDE) / xp.where(outside, norm, 1.0), 1.0)
        return v * scale

    def clip(self, block: Any) -> Any:
        """``block``'s rows moved onto the ball where they lie outside it, along their
        direction from the centre (array-API, float64)."""
        xp = array_api_compat.array_namespace(block)
        v = self.offsets(block)
        return xp.asarray(self.centre, device=array_api_compat.device(v)) + v


def private_stats(
    block: Any,
    params: Params,
    ball: ClipBall,
    sample_weight: Any | None = None,
    row_offset: int = 0,
    e_step: Callable[[Any, Params, Any, int], SuffStats] = chunk_stats,
) -> SuffStats:
    """A block's statistics for a private release: its rows clipped to ``ball``, the
    statistics about ``ball.centre`` for every component (host, float64).

    The E-step runs on the clipped offsets from the centre with the means moved by
    the same amount (responsibilities do not change under a common translation),
    and its statistics are moved to the centre (:meth:`SuffStats.recentre`, exact),
    so that one row's contribution is bounded by the ball alone
    (:meth:`ClipBall.sensitivities`), also for data far from the origin. ``e_step``
    is the block kernel (the array-API reference by default; the block task passes
    the registry's choice).
    """
    ball.check_features(params.n_features)
    moved = replace(params, means=params.means - ball.centre)
    stats = e_step(ball.offsets(block), moved, sample_weight, row_offset).to_host()
    about_centre = stats.recentre(np.zeros_like(moved.means))
    return replace(about_centre, reference=np.broadcast_to(ball.centre, params.means.shape))


def field_norms(stats: SuffStats) -> dict[str, float]:
    """The L2 (Frobenius) norm of each released field of ``stats``; the second moment
    as released (:meth:`SuffStats.second_values`: full and tied once, upper triangle)."""
    host = stats.to_host()
    return {
        "resp_sum": float(np.linalg.norm(np.ravel(host.resp_sum))),
        "x_sum": float(np.linalg.norm(np.ravel(host.x_sum))),
        "second": float(np.linalg.norm(host.second_values())),
    }


# -- zCDP -------------------------------------------------------------------------------
def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}.")
    return value


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}.")
    return delta


def gaussian_rho(sensitivity: float, sigma: float) -> float:
    """``ρ`` of one Gaussian release: L2 sensitivity ``Δ``, noise ``N(0, σ²)`` per entry."""
    delta = _check_positive("the sensitivity", sensitivity)
    return delta * delta / (2.0 * _check_positive("sigma", sigma) ** 2)


def gaussian_sigma(sensitivity: float, rho: float) -> float:
    """The noise scale that makes one release of sensitivity ``Δ`` cost ``ρ``."""
    delta = _check_positive("the sensitivity", sensitivity)
    return delta / math.sqrt(2.0 * _check_positive("rho", rho))


def _opendp() -> Any:
    """OpenDP's prelude, with its "contrib" components enabled (the Gaussian
    mechanisms and the zCDP conversion are among them)."""
    try:
        import opendp.prelude as dp
    except ImportError as error:
        raise ImportError(
            "differentially private fits take their noise and their accounting from OpenDP: "
            "pip install 'distmix[privacy]'"
        ) from error
    dp.enable_features("contrib")
    return dp


def _check_rho(rho: float) -> float:
    rho = float(rho)
    if not (math.isfinite(rho) and rho >= 0.0):
        raise ValueError(f"rho must be finite and >= 0, got {rho!r}.")
    return rho


def epsilon_from_rho(rho: float, delta: float) -> float:
    """``ε`` of the ``(ε, δ)``-DP that ``ρ``-zCDP implies, by OpenDP's conversion (the
    optimal one of Canonne, Kamath and Steinke 2020, tighter than
    ``ρ + 2 √(ρ log(1/δ))``)."""
    rho, delta = _check_rho(rho), _check_delta(delta)
    if rho == 0.0:
        return 0.0
    dp = _opendp()
    # a Gaussian release of sensitivity 1 and scale 1/√(2ρ) is exactly ρ-zCDP
    gaussian = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T=float, nan=False)),
        dp.l2_distance(T=float),
        scale=1.0 / math.sqrt(2.0 * rho),
    )
    try:
        return float(dp.c.make_zCDP_to_approxDP(gaussian).map(1.0).epsilon(delta))
    except dp.OpenDPException as error:  # its arithmetic overflows for huge rho
        raise ValueError(
            f"rho={rho:.6g} is beyond what OpenDP's accountant computes ({error.message}): "
            "ask for a smaller epsilon."
        ) from None


def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest ``ρ`` whose :func:`epsilon_from_rho` at ``delta`` is at most
    ``epsilon`` (to a relative 1e-12, from below), by bisection: the budget a fit may
    spend in zCDP."""
    epsilon = _check_positive("epsilon", epsilon)
    log_inv = math.log(1.0 / _check_delta(delta))
    # ρ + 2 √(ρ L) ≥ the optimal ε: its inverse (√(ε + L) − √L)² is a ρ that fits
    root = epsilon / (math.sqrt(epsilon + log_inv) + math.sqrt(log_inv))
    low = root * root
    high = 2.0 * low
    while epsilon_from_rho(high, delta) <= epsilon:
        low, high = high, 2.0 * high
    while high - low > 1e-12 * low:
        middle = 0.5 * (low + high)
        if epsilon_from_rho(middle, delta) <= epsilon:
            low = middle
        else:
            high = middle
    return low


# -- a fit's plan -----------------------------------------------------------------------
#: the fields a private fit releases at every iteration, in order
RELEASED_FIELDS: tuple[str, ...] = ("resp_sum", "x_sum", "second")
#: each field's default share of the zCDP budget of one release
DEFAULT_SHARES: dict[str, float] = {name: 1.0 / 3.0 for name in RELEASED_FIELDS}


def normalised_shares(shares: Any) -> dict[str, float]:
    """The shares of the fields, normalised to sum to 1; raises naming what is wrong."""
    shares = dict(shares)
    if set(shares) != set(RELEASED_FIELDS):
        raise ValueError(
            f"noise shares must name exactly {', '.join(RELEASED_FIELDS)}, got "
            f"{', '.join(sorted(map(str, shares))) or 'none'}."
        )
    values = {name: float(shares[name]) for name in RELEASED_FIELDS}
    if not all(math.isfinite(v) and v > 0.0 for v in values.values()):
        raise ValueError(f"noise shares must be finite and > 0, got {shares}.")
    total = sum(values.values())
    return {name: values[name] / total for name in RELEASED_FIELDS}


#: the share of a fit's budget its first release takes (the rows' count and moments:
#: the start, and whether the budget can give a usable fit)
INIT_SHARE = 0.05


@dataclass(frozen=True)
class PrivacyPlan:
    """How a private fit spends its budget: a first release of the rows' count and
    moments (``init_share`` of it; none when 0), then ``releases`` releases of the
    statistics (a fixed number of iterations), each field's noise scale, and what
    the whole fit costs.

    Built by :meth:`for_budget` from ``(ε, δ)``: the fit's ``ρ`` is the largest whose
    ``ε`` at ``δ`` fits (:func:`rho_for_epsilon`); the first release gets
    ``init_share · ρ``, every iteration ``(1 − init_share) ρ / releases``, split
    between the fields by ``shares``; a field of sensitivity ``Δ`` given ``ρ_f`` gets
    Gaussian noise of scale ``σ = Δ / √(2 ρ_f)`` per entry. Releases compose by
    adding their ``ρ``, so the fit is ``ρ``-zCDP and ``(ε, δ)``-DP.
    """

    ball: ClipBall
    epsilon: float
    delta: float
    rho: float
    releases: int
    shares: dict[str, float]
    sigmas: dict[str, float]
    init_share: float = 0.0
    init_sigmas: dict[str, float] | None = None

    @classmethod
    def for_budget(
        cls,
        epsilon: float,
        delta: float,
        ball: ClipBall,
        releases: int,
        shares: dict[str, float] | None = None,
        init_share: float = 0.0,
    ) -> PrivacyPlan:
        if isinstance(releases, bool) or not isinstance(releases, (int, np.integer)):
            raise TypeError(f"releases must be an integer, got {type(releases).__name__}.")
        if releases < 1:
            raise ValueError(
                f"a private fit releases its statistics at least once, got {releases}."
            )
        if not 0.0 <= float(init_share) < 1.0:
            raise ValueError(f"init_share must be in [0, 1), got {init_share!r}.")
        shares = normalised_shares(DEFAULT_SHARES if shares is None else shares)
        rho = rho_for_epsilon(epsilon, delta)
        sensitivity = ball.sensitivities()

        def sigmas_for(rho_release: float) -> dict[str, float]:
            return {
                name: gaussian_sigma(sensitivity[name], rho_release * shares[name])
                for name in RELEASED_FIELDS
            }

        init = float(init_share)
        return cls(
            ball,
            float(epsilon),
            float(delta),
            rho,
            int(releases),
            shares,
            sigmas_for(rho * (1.0 - init) / int(releases)),
            init,
            sigmas_for(rho * init) if init > 0.0 else None,
        )

    @property
    def iteration_rho(self) -> float:
        """The ``ρ`` of one iteration's release."""
        return self.rho * (1.0 - self.init_share) / self.releases

    @property
    def init_rho(self) -> float:
        """The ``ρ`` of the first release (the rows' count and moments)."""
        return self.rho * self.init_share

    @property
    def largest_sigmas(self) -> dict[str, float]:
        """Each field's largest noise scale over the plan's releases."""
        init = self.init_sigmas or {}
        return {f: max(self.sigmas[f], init.get(f, 0.0)) for f in RELEASED_FIELDS}

    def site_shares(
        self, parts: int, sizes: dict[str, int], rho: float | None = None
    ) -> dict[str, SiteShare]:
        """The noise shares that ``parts`` or more sites add to each field (of ``sizes``
        values) of a release of ``rho`` (default: one iteration's): what every site
        adds and the coordinator accounts, from the plan alone."""
        sensitivity = self.ball.sensitivities()
        per_field = self.iteration_rho if rho is None else float(rho)
        return {
            name: SiteShare.plan(sensitivity[name], per_field * self.shares[name], parts, size)
            for name, size in sizes.items()
        }

    def spent(self, releases: int | None = None, init: bool | None = None) -> float:
        """The ``ρ`` of the first release (if ``init``, default: if planned) and
        ``releases`` iterations (default: all of them), from the noise scales: what
        the accountant charges."""
        count = self.releases if releases is None else int(releases)
        sensitivity = self.ball.sensitivities()

        def cost(sigmas: dict[str, float]) -> float:
            return sum(gaussian_rho(sensitivity[f], sigmas[f]) for f in RELEASED_FIELDS)

        total = count * cost(self.sigmas)
        if (self.init_sigmas is not None) if init is None else init:
            total += cost(self.init_sigmas or {})
        return total

    def report(self) -> dict[str, Any]:
        """What ``model.privacy_`` shows: the budget, its zCDP and the noise."""
        rho = self.spent()
        return {
            "rho": rho,
            "epsilon": epsilon_from_rho(rho, self.delta),
            "delta": self.delta,
            "releases": self.releases,
            "init_share": self.init_share,
            "clip_radius": self.ball.radius,
            "noise_sigma": dict(self.sigmas),
            "noise_shares": dict(self.shares),
        }


# -- the noise --------------------------------------------------------------------------
#: the noise grid: a field's values are rounded to multiples of ``2**(⌊log2 σ⌋ − 24)``,
#: so that the rounding is ~2e-8 of the noise, and noised there with the discrete
#: Gaussian (integers, what exact secure sums carry)
GRID_BITS = 24
_INT64_LIMIT = 2**62


@dataclass(frozen=True)
class Release:
    """A field released with noise: its values, the grid step, and the noise's scale
    (``σ`` in the values' units, and the zCDP it cost)."""

    values: np.ndarray
    step: float
    sigma: float
    rho: float


def noise_step(sigma: float) -> float:
    """The grid a field of noise scale ``sigma`` is released on: ``2**(⌊log2 σ⌋ − 24)``."""
    return 2.0 ** (math.floor(math.log2(_check_positive("sigma", sigma))) - GRID_BITS)


def units_moved(sensitivity: float, step: float, size: int) -> int:
    """How far one row moves a field of ``size`` values rounded to ``step``, in whole
    steps (L2): ``sensitivity / step`` and at most one step per rounded value."""
    return math.ceil(sensitivity / step + math.sqrt(max(int(size), 1)))


def _grid_units(values: Any, step: float, name: str, limit: int = _INT64_LIMIT) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"the {name} to release contain NaN or infinity.")
    units = np.rint(x / step)
    if x.size and float(np.max(np.abs(units))) >= limit:
        raise ValueError(
            f"the {name} to release are too large for the noise grid ({step:.3g}): "
            f"|value| up to {float(np.max(np.abs(x))):.3g}."
        )
    return units.astype(np.int64)


def _discrete_gaussian(units: np.ndarray, sigma_units: float) -> tuple[np.ndarray, Any]:
    """``units`` plus OpenDP's exact discrete Gaussian noise of scale ``sigma_units``
    (int64), and the mechanism (its ``map`` is the zCDP of a sensitivity)."""
    dp = _opendp()
    mechanism = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"), scale=sigma_units
    )
    noisy = np.asarray(mechanism(units.ravel().tolist()), dtype=np.int64)
    return noisy.reshape(units.shape), mechanism


def gaussian_release(values: Any, sensitivity: float, rho: float, name: str = "values") -> Release:
    """``values`` with discrete Gaussian noise that costs ``rho`` (zCDP) for a field of
    L2 ``sensitivity`` (OpenDP's exact sampler, from the operating system's
    cryptographically secure source).

    The values are rounded to a grid of step ``2**(⌊log2 σ⌋ − GRID_BITS)``, ``σ`` the
    continuous Gaussian's scale for ``(sensitivity, rho)``; one row then moves the
    rounded integers by at most ``sensitivity / step + √n`` in L2 (each rounding
    moves by at most one), and the noise is calibrated to that, in whole steps.
    """
    step = noise_step(gaussian_sigma(sensitivity, rho))
    units = _grid_units(values, step, name)
    moved = units_moved(sensitivity, step, units.size)
    sigma_units = moved / math.sqrt(2.0 * _check_positive("rho", rho))
    noisy, mechanism = _discrete_gaussian(units, sigma_units)
    spent = float(mechanism.map(moved))
    if spent > rho * (1.0 + 1e-9):
        raise RuntimeError(f"the noise of the {name} costs rho {spent}, more than {rho}.")
    return Release(noisy.astype(np.float64) * step, step, sigma_units * step, spent)


# -- distributed noise: every site adds a share ------------------------------------------
def distributed_rho(moved: float, sigma_units: float, parts: int, size: int) -> float:
    """zCDP of a sum to which ``parts`` parties each added independent discrete
    Gaussian noise of scale ``sigma_units`` (in grid steps), for a change of at most
    ``moved`` steps (L2) in ``size`` values.

    A sum of discrete Gaussians is not itself one, but it is close: by Kairouz, Liu
    and Steinke (2021, "The distributed discrete Gaussian mechanism", Theorem 1) the
    sum is ``ε²/2``-zCDP with ``ε = min(√(Δ²/(mσ²) + 2τd), Δ/(√m σ) + τ√d)``,
    ``τ = 10 Σ_{k<m} exp(−2π²σ² k/(k+1))``. At the scales used here (``σ`` of
    ``2**24`` steps and more) ``τ`` is zero in float64, and the cost is that of one
    Gaussian of variance ``m σ²``.
    """
    m = int(parts)
    if m < 1:
        raise ValueError(f"parts must be at least 1, got {parts!r}.")
    sigma = _check_positive("sigma", sigma_units)
    tau = 10.0 * sum(math.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, m))
    base = float(moved) ** 2 / (m * sigma**2)
    d = max(int(size), 1)
    eps = min(math.sqrt(base + 2.0 * tau * d), math.sqrt(base) + tau * math.sqrt(d))
    return 0.5 * eps * eps


@dataclass(frozen=True)
class SiteShare:
    """What each of ``parts`` sites adds to a field so that their sum costs ``rho``:
    the grid ``step``, each site's noise scale ``sigma_units`` (steps), and the
    whole sum's noise scale ``sigma`` (values' units) and cost ``rho`` (zCDP)."""

    step: float
    sigma_units: float
    sigma: float
    rho: float
    parts: int

    @classmethod
    def plan(cls, sensitivity: float, rho: float, parts: int, size: int) -> SiteShare:
        """The shares that make a field of ``size`` values and L2 ``sensitivity`` cost
        at most ``rho`` once ``parts`` or more sites have added theirs."""
        if isinstance(parts, bool) or int(parts) < 1:
            raise ValueError(f"parts must be a positive integer, got {parts!r}.")
        step = noise_step(gaussian_sigma(sensitivity, rho))
        moved = units_moved(sensitivity, step, size)
        total = moved / math.sqrt(2.0 * _check_positive("rho", rho))
        each = total / math.sqrt(int(parts))
        spent = distributed_rho(moved, each, int(parts), size)
        if spent > rho * (1.0 + 1e-9):
            raise RuntimeError(f"site shares cost rho {spent}, more than {rho}.")
        return cls(step, each, total * step, spent, int(parts))

    def add(self, values: Any, name: str = "values") -> np.ndarray:
        """``values`` on the grid with one site's share of the noise (float64, every
        value an exact multiple of the step, so that exact secure sums add them
        without rounding)."""
        units = _grid_units(values, self.step, name, limit=2**53)
        noisy, _ = _discrete_gaussian(units, self.sigma_units)
        if noisy.size and int(np.max(np.abs(noisy))) >= 2**53:
            raise ValueError(f"the noisy {name} do not fit the noise grid exactly.")
        return noisy.astype(np.float64) * self.step


# -- post-processing --------------------------------------------------------------------
#: eigenvalues are floored at ``max(reg_covar, EIGEN_FLOOR × the largest)``: a condition
#: number of at most 1e10, so that the rebuilt matrix's rounding (~1e-16 of the largest
#: times D) cannot take an eigenvalue below zero and fail the Cholesky factorisation
EIGEN_FLOOR = 1e-10


def _floored(matrices: np.ndarray, minimum: Any) -> np.ndarray:
    """Symmetric matrices (..., D, D) with their eigenvalues floored at ``minimum``
    (broadcast against the leading axes)."""
    sym = 0.5 * (matrices + np.swapaxes(matrices, -1, -2))
    values, vectors = np.linalg.eigh(sym)
    relative = EIGEN_FLOOR * np.max(np.abs(values), axis=-1, keepdims=True)
    floor = np.maximum(np.asarray(minimum, dtype=np.float64)[..., None], relative)
    values = np.maximum(values, floor)
    rebuilt = (vectors * values[..., None, :]) @ np.swapaxes(vectors, -1, -2)
    return 0.5 * (rebuilt + np.swapaxes(rebuilt, -1, -2))


def private_params(
    stats: SuffStats,
    ball: ClipBall,
    reg_covar: float,
    min_count: float = 1.0,
    second_sigma: float = 0.0,
) -> Params:
    """Params from noisy statistics about ``ball.centre`` that are always valid: no
    Cholesky failure and no NaN, whatever the noise did (post-processing: it costs no
    privacy).

    - counts are clamped to at least ``min_count`` (> 0) rows each;
    - means are ``centre + S1 / n``, projected into the clipping ball (every row lies
      in it, so every mean does);
    - covariances ``S2 / n − δ δᵀ`` are symmetrised and their eigenvalues floored at
      ``reg_covar``, at the scale of the noise the second moments carry
      (``second_sigma / n`` per entry: below it an eigenvalue is noise, and a variance
      floored at 1e-6 there gives held-out rows a likelihood of ~e^-10⁶), and at 1e-10
      of the largest; diag and spherical variances likewise.
    """
    if not (math.isfinite(float(reg_covar)) and float(reg_covar) > 0.0):
        raise ValueError(f"a private fit needs reg_covar > 0, got {reg_covar!r}.")
    if not (math.isfinite(float(min_count)) and float(min_count) > 0.0):
        raise ValueError(f"min_count must be finite and > 0, got {min_count!r}.")
    host = stats.to_host()
    ball.check_features(host.n_features)
    cov_type = host.covariance_type
    d = host.n_features
    counts = np.asarray(host.resp_sum, dtype=np.float64)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in (counts, host.x_sum, host.second)):
        raise ValueError("the noisy statistics contain NaN or infinity.")
    nk = np.maximum(counts, float(min_count))
    offset = np.asarray(host.x_sum, dtype=np.float64) / nk[:, None]
    norms = np.linalg.norm(offset, axis=1, keepdims=True)
    offset = offset * np.minimum(1.0, ball.radius * _INSIDE / np.maximum(norms, 1e-300))
    means = ball.centre + offset
    second = np.asarray(host.second, dtype=np.float64)
    outer = offset[:, :, None] * offset[:, None, :]
    if not (math.isfinite(float(second_sigma)) and float(second_sigma) >= 0.0):
        raise ValueError(f"second_sigma must be finite and >= 0, got {second_sigma!r}.")
    noise = float(second_sigma) / nk  # the noise of a covariance entry, per component
    if cov_type == "full":
        cov = _floored(second / nk[:, None, None] - outer, np.maximum(reg_covar, noise))
    elif cov_type == "tied":
        total = nk.sum()
        floor = max(float(reg_covar), float(second_sigma) / total)
        cov = _floored((second - np.einsum("k,kij->ij", nk, outer)) / total, floor)
    elif cov_type == "diag":
        cov = np.maximum(second / nk[:, None] - offset**2, np.maximum(reg_covar, noise)[:, None])
    else:
        cov = np.maximum(
            (second / nk - np.sum(offset**2, axis=1)) / d, np.maximum(reg_covar, noise / d)
        )
    return Params.from_covariances(nk / nk.sum(), means, cov, cov_type)


# -- the estimator's setting -----------------------------------------------------------
_RECORD_KEYS = (
    "epsilon",
    "delta",
    "clip_radius",
    "centre",
    "noise_shares",
    "min_count",
    "average_last",
)


@dataclass(frozen=True, eq=False)
class Privacy:
    """The public settings of a differentially private fit:
    ``GaussianMixture(privacy=distmix.Privacy(epsilon=1.0, delta=1e-6, clip_radius=B,
    centre=x0))``.

    Parameters
    ----------
    epsilon, delta : float
        The whole fit's budget: it is ``(ε, δ)``-DP (and ``ρ``-zCDP for the largest
        ``ρ`` that implies it), for adding or removing one row.
    clip_radius, centre : float, array of shape (n_features,)
        The public ball every row is clipped to (:class:`ClipBall`). Choose them from
        what is known without these rows (the instrument's range, a public dataset,
        last year's data); distmix never looks at the rows for them.
    noise_shares : mapping of "resp_sum", "x_sum", "second" to float, optional
        How each release's budget is split between the fields (default: equally).
    min_count : float, default=1.0
        Noisy per-component counts are clamped to at least this many rows.
    average_last : int, optional
        The fitted parameters come from the average of the last ``average_last``
        releases' noisy statistics (post-processing: free), which divides their
        noise's variance by as much. Default: as many final releases as agree with
        each other within their noise (near EM's fixed point consecutive
        iterations' statistics differ by far less than their noise; the first
        iterations, still moving, stay out).
    """

    epsilon: float
    delta: float
    clip_radius: float | None = None
    centre: Any = None
    noise_shares: dict[str, float] | None = None
    min_count: float = 1.0
    average_last: int | None = None

    def __post_init__(self) -> None:
        missing = [name for name in ("clip_radius", "centre") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"a private fit needs {' and '.join(missing)}: the public ball every row is "
                "clipped to, chosen from what is known without these rows (an instrument's "
                "range, public or older data). distmix never derives it from the data: that "
                "would spend privacy it does not account for."
            )
        ball = ClipBall(self.centre, self.clip_radius)  # type: ignore[arg-type]  # validates
        object.__setattr__(self, "centre", ball.centre)
        object.__setattr__(self, "clip_radius", ball.radius)
        _check_positive("epsilon", self.epsilon)
        _check_delta(self.delta)
        _check_positive("min_count", self.min_count)
        m = self.average_last
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
            raise ValueError(f"average_last must be a positive integer or None, got {m!r}.")
        if self.noise_shares is not None:
            normalised_shares(self.noise_shares)

    @property
    def ball(self) -> ClipBall:
        return ClipBall(self.centre, float(self.clip_radius))  # type: ignore[arg-type]

    def record(self) -> dict[str, Any]:
        """The settings as JSON values (a model file's, a CLI's)."""
        return {
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "clip_radius": self.ball.radius,
            "centre": [float(c) for c in self.centre],
            "noise_shares": None if self.noise_shares is None else dict(self.noise_shares),
            "min_count": float(self.min_count),
            "average_last": None if self.average_last is None else int(self.average_last),
        }

    @classmethod
    def from_record(cls, record: Any) -> Privacy:
        """The settings of :meth:`record` (validated as any ``Privacy``)."""
        if not isinstance(record, dict) or set(record) != set(_RECORD_KEYS):
            raise ValueError(f"a privacy record has exactly the keys {', '.join(_RECORD_KEYS)}.")
        return cls(**record)

    def plan(self, releases: int) -> PrivacyPlan:
        """The budget spread over a first release (:data:`INIT_SHARE` of it) and
        ``releases`` iterations (:meth:`PrivacyPlan.for_budget`)."""
        return PrivacyPlan.for_budget(
            self.epsilon, self.delta, self.ball, releases, self.noise_shares, INIT_SHARE
        )
