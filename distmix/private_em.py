"""Differentially private EM over any engine: a fixed number of noisy iterations.

Layer: the loop's side, beside :mod:`distmix.em` (engines and the privacy
building blocks of :mod:`distmix.privacy`; never the estimator).

Each iteration asks the engine for one ``private_estep`` (every row clipped to
the public ball, the statistics about its centre), releases the three fields
with discrete Gaussian noise (:func:`distmix.privacy.gaussian_release`, their
budget from a :class:`~distmix.privacy.PrivacyPlan`), and turns the noisy
statistics into Params that are always valid
(:func:`distmix.privacy.private_params`). Nothing else leaves the rows: no
row count, no log-likelihood, no convergence test (the number of iterations is
fixed in advance, so it depends on no data). The start is the user's Params or
one drawn from the seed inside the ball, never from the rows, so it costs no
privacy. The noise comes from the operating system's secure source: two private
fits of the same data differ, by design.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.stats

from distmix.engines.base import Engine
from distmix.nonfinite import raise_if_nonfinite
from distmix.params import Params, full_covariances
from distmix.privacy import (
    ClipBall,
    PrivacyPlan,
    epsilon_from_rho,
    gaussian_release,
    private_params,
)
from distmix.suffstats import SuffStats


@dataclass(frozen=True)
class PrivateFit:
    """What a private fit made: its Params, its plan and what each release cost."""

    params: Params
    plan: PrivacyPlan
    rho_spent: float
    n_iter: int
    sigmas: dict[str, float] = field(default_factory=dict)
    averaged: int = 1

    def report(self) -> dict[str, object]:
        """``model.privacy_``: the budget, what was spent (zCDP and (ε, δ)), the noise."""
        plan = self.plan
        return {
            "rho": self.rho_spent,
            "epsilon": epsilon_from_rho(self.rho_spent, plan.delta),
            "delta": plan.delta,
            "epsilon_budget": plan.epsilon,
            "releases": plan.releases,
            "iterations": self.n_iter,
            "averaged_last": self.averaged,
            "init_share": plan.init_share,
            "clip_radius": plan.ball.radius,
            "clip_centre": [float(c) for c in plan.ball.centre],
            "noise_sigma": dict(self.sigmas),
            "noise_shares": dict(plan.shares),
        }


def data_free_start(ball: ClipBall, n_components: int, covariance_type: str, seed: int) -> Params:
    """Params drawn from ``seed`` alone: means uniform in half the ball, equal weights,
    covariances ``(B² / 4D)·I`` (a quarter of the ball's spread per feature)."""
    rng = np.random.default_rng(seed)
    d = ball.n_features
    directions = rng.normal(size=(n_components, d))
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-300)
    radii = 0.5 * ball.radius * rng.uniform(size=(n_components, 1)) ** (1.0 / d)
    means = ball.centre + directions * radii
    variance = ball.radius**2 / (4.0 * d)
    covariances = {
        "full": np.broadcast_to(variance * np.eye(d), (n_components, d, d)).copy(),
        "tied": variance * np.eye(d),
        "diag": np.full((n_components, d), variance),
        "spherical": np.full(n_components, variance),
    }[covariance_type]
    weights = np.full(n_components, 1.0 / n_components)
    return Params.from_covariances(weights, means, covariances, covariance_type)


def release(
    stats: SuffStats, plan: PrivacyPlan, rho: float | None = None
) -> tuple[SuffStats, float, dict[str, float]]:
    """The statistics with each field's noise for a release of ``rho`` (default: one
    iteration's), the ``ρ`` the release cost and each field's noise scale. The
    symmetric second moments go out once, as their upper triangle; the row count
    and log-likelihood not at all."""
    host = stats.to_host()
    per_field = plan.iteration_rho if rho is None else float(rho)
    sensitivity = plan.ball.sensitivities()
    spent = 0.0
    noisy: dict[str, np.ndarray] = {}
    sigmas: dict[str, float] = {}
    fields = {"resp_sum": host.resp_sum, "x_sum": host.x_sum, "second": host.second_values()}
    for name, values in fields.items():
        out = gaussian_release(values, sensitivity[name], per_field * plan.shares[name], name)
        noisy[name], spent, sigmas[name] = out.values, spent + out.rho, out.sigma
    released = SuffStats(
        host.covariance_type,
        host.reference,
        noisy["resp_sum"],
        noisy["x_sum"],
        host.second_from_values(noisy["second"]),
        0.0,  # not released
        0.0,  # not released
        0.0,
        math.inf,
    )
    return released, spent, sigmas


def _field_sizes(stats: SuffStats) -> dict[str, int]:
    host = stats.to_host()
    return {
        "resp_sum": int(np.size(host.resp_sum)),
        "x_sum": int(np.size(host.x_sum)),
        "second": int(host.second_values().size),
    }


class PrivacyBudgetError(ValueError):
    """The budget cannot give a usable fit of these rows (said after the first release)."""


def _noised(
    engine: Engine, plan: PrivacyPlan, rho: float, task: str, *args: object
) -> tuple[SuffStats, float, dict[str, float]]:
    """One release: ``task``'s statistics over the rows with the noise of ``rho`` (added
    here, or already by the sites of an engine whose ``noise_at_sites`` is true)."""
    stats: SuffStats = engine.reduce(task, *args).to_host()  # type: ignore[arg-type]
    # the data owner's own error (it releases nothing): rows that are not numbers
    raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
    if getattr(engine, "noise_at_sites", False):
        parts = int(engine.noise_parts)  # type: ignore[attr-defined]
        shares = plan.site_shares(parts, _field_sizes(stats), rho)
        # charged: the plan's (what the fewest shares allowed cost); the sum's noise:
        # every share it holds (a sum over more sites than that carries more)
        summed = max(parts, int(getattr(engine, "last_summed", parts) or parts))
        scale = math.sqrt(summed / parts)
        cost = sum(share.rho for share in shares.values())
        return stats, cost, {name: share.sigma * scale for name, share in shares.items()}
    return release(stats, plan, rho)


@dataclass(frozen=True)
class FirstRelease:
    """What a private fit's first release says: the rows' noisy count, their moments
    (one component, about the ball's centre, valid Params) and what it cost."""

    count: float
    moments: Params
    rho: float


def first_release(
    engine: Engine, plan: PrivacyPlan, covariance_type: str, reg_covar: float
) -> FirstRelease:
    """Release the rows' count and moments with ``plan.init_share`` of the budget."""
    noisy, cost, sigmas = _noised(
        engine, plan, plan.init_rho, "private_moments", plan.ball, covariance_type
    )
    moments = private_params(noisy, plan.ball, reg_covar, 1.0, sigmas["second"])
    return FirstRelease(float(np.sum(noisy.resp_sum)), moments, cost)


def check_usable(plan: PrivacyPlan, first: FirstRelease, n_components: int, averaged: int) -> None:
    """Refuse a fit whose iterations' noise would swamp what they estimate: with the
    noisy count's rows shared equally by the components, a component's mean would
    carry noise beyond the rows' spread per feature, or its covariance entries noise
    beyond their variance per feature. Says why, and what the first release spent."""
    d = plan.ball.n_features
    per_component = first.count / n_components
    variance = float(np.trace(np.atleast_2d(full_covariance(first.moments))) / d)
    problems = []
    if per_component < 1.0:
        problems.append(
            f"the noisy row count ({first.count:,.0f}) leaves less than one row per component"
        )
    else:
        scale = math.sqrt(float(averaged)) * per_component
        mean_noise = plan.sigmas["x_sum"] / scale
        cov_noise = plan.sigmas["second"] / scale
        if mean_noise > math.sqrt(variance):
            problems.append(
                f"each component's mean would carry noise of {mean_noise:.3g} per feature, "
                f"more than the rows' spread ({math.sqrt(variance):.3g})"
            )
        if cov_noise > variance:
            problems.append(
                f"each component's covariance entries would carry noise of {cov_noise:.3g}, "
                f"more than the rows' variance per feature ({variance:.3g})"
            )
    if problems:
        spent = epsilon_from_rho(first.rho, plan.delta)
        raise PrivacyBudgetError(
            f"epsilon={plan.epsilon:g} (delta={plan.delta:g}) over {plan.releases} iterations "
            f"cannot give a usable fit of {n_components} components to about "
            f"{max(first.count, 0.0):,.0f} rows (a noisy count): {'; '.join(problems)}. "
            "Raise epsilon, or fit fewer components or iterations, more rows, or a smaller "
            f"clip radius. The first release spent epsilon={spent:.3g} (rho={first.rho:.3g}) "
            "of the budget: the rows' count and moments, nothing else."
        )


def full_covariance(params: Params) -> np.ndarray:
    """The one component's covariance of ``params`` as a (D, D) matrix."""
    return full_covariances(params.covariances, params.covariance_type, 1, params.n_features)[0]


#: candidate means a start from the first release draws per component
START_CANDIDATES = 20


def moments_start(
    first: FirstRelease, ball: ClipBall, n_components: int, covariance_type: str, seed: int
) -> Params:
    """A start from the first release alone (post-processing): ``START_CANDIDATES``
    points per component drawn from the rows' noisy Gaussian (seeded), of which the
    means are chosen as k-means++ chooses among rows (each next one with probability
    proportional to its squared Mahalanobis distance to those chosen, so they spread
    over the rows' extent), then projected into half the ball; every component gets
    the rows' covariance and an equal weight."""
    rng = np.random.default_rng(seed)
    cov = full_covariance(first.moments)
    candidates = rng.multivariate_normal(
        first.moments.means[0] - ball.centre, cov, size=START_CANDIDATES * n_components
    )
    whitened = candidates @ np.linalg.inv(np.linalg.cholesky(cov)).T
    chosen = [int(rng.integers(len(candidates)))]
    nearest = np.sum((whitened - whitened[chosen[0]]) ** 2, axis=1)
    for _ in range(n_components - 1):
        total = float(nearest.sum())
        pick = int(rng.choice(len(candidates), p=nearest / total)) if total > 0 else 0
        chosen.append(pick)
        nearest = np.minimum(nearest, np.sum((whitened - whitened[pick]) ** 2, axis=1))
    offsets = candidates[chosen]
    norms = np.linalg.norm(offsets, axis=1, keepdims=True)
    offsets *= np.minimum(1.0, 0.5 * ball.radius / np.maximum(norms, 1e-300))
    means = ball.centre + offsets
    covariances = {
        "full": np.broadcast_to(cov, (n_components, *cov.shape)).copy(),
        "tied": cov,
        "diag": np.broadcast_to(np.diag(cov), (n_components, cov.shape[0])).copy(),
        "spherical": np.full(n_components, float(np.trace(cov)) / cov.shape[0]),
    }[covariance_type]
    weights = np.full(n_components, 1.0 / n_components)
    return Params.from_covariances(weights, means, covariances, covariance_type)


def fit_private(
    engine: Engine,
    plan: PrivacyPlan,
    start: Params | None,
    reg_covar: float,
    min_count: float = 1.0,
    iterations: int | None = None,
    average_last: int | None = 1,
    *,
    n_components: int | None = None,
    covariance_type: str | None = None,
    seed: int = 0,
) -> PrivateFit:
    """A private fit: the first release (if the plan has one: the rows' count and
    moments, refusing a budget that cannot give a usable fit), then ``iterations``
    (default: ``plan.releases``, at most that) private EM iterations from ``start``
    (public Params; default: drawn from the first release, or without one from the
    seed alone); the fitted Params come from the average of the last
    ``average_last`` noisy statistics, or (``None``) of the last ones that agree
    within their noise (:func:`stable_window`; post-processing either way).

    An engine whose ``noise_at_sites`` is true (a federation with distributed noise)
    returns sums its sites have already noised, in shares that add up to the plan's
    noise over at least ``engine.noise_parts`` sites; any other engine's sums are
    noised here (:func:`release`).
    """
    ball = plan.ball
    ball.check_features(engine.n_features)
    if start is not None:
        n_components, covariance_type = start.n_components, start.covariance_type
        if start.n_features != engine.n_features:
            raise ValueError(
                f"the start has {start.n_features} features but the rows have {engine.n_features}."
            )
    if n_components is None or covariance_type is None:
        raise TypeError("give fit_private a start, or n_components and covariance_type.")
    count = plan.releases if iterations is None else int(iterations)
    if not 1 <= count <= plan.releases:
        raise ValueError(
            f"a private fit under this plan runs 1 to {plan.releases} iterations, got {count}."
        )
    window = None if average_last is None else max(1, min(int(average_last), count))
    spent = 0.0
    if plan.init_share > 0.0:
        first = first_release(engine, plan, covariance_type, reg_covar)
        spent += first.rho
        check_usable(plan, first, n_components, window or (count + 1) // 2)
        if start is None:
            start = moments_start(first, ball, n_components, covariance_type, seed)
    if start is None:
        start = data_free_start(ball, n_components, covariance_type, seed)
    params, sigmas = start, dict(plan.sigmas)
    kept: collections.deque[SuffStats] = collections.deque(maxlen=window or count)
    for _ in range(count):
        noisy, cost, sigmas = _noised(
            engine, plan, plan.iteration_rho, "private_estep", params, ball
        )
        spent += cost
        params = private_params(noisy, ball, reg_covar, min_count, sigmas["second"])
        kept.append(noisy)
    released = list(kept)
    if window is None:
        released = released[len(released) - stable_window(released, sigmas) :]
    if len(released) > 1:
        noise = sigmas["second"] / math.sqrt(len(released))
        params = private_params(mean_stats(released), ball, reg_covar, min_count, noise)
    return PrivateFit(params, plan, spent, count, sigmas, len(released))


#: the chance, for releases that differ by their noise alone, that one comparison
#: stops the window anyway: the sum of squares, in noise units, is then chi-squared
#: with one degree per value. (At 3 normal-approximation standard errors, 12 values
#: stopped 1 comparison in 50 and kept the last release alone in 2 % of the fits.)
WINDOW_FALSE_STOP = 1e-4


def stable_window(released: list[SuffStats], sigmas: dict[str, float]) -> int:
    """How many of the final ``released`` statistics agree with each other within
    their noise: going back from the last, a release joins while its difference from
    the average of those after it, in units of the noise (``sigmas`` per field), has
    a sum of squares that noise alone exceeds with chance ``WINDOW_FALSE_STOP``
    at most. EM's early iterations, still moving, stay out; at its fixed point all
    join. A function of the released values only: post-processing, free."""

    def in_noise_units(stats: SuffStats) -> np.ndarray:
        return np.concatenate(
            [
                np.ravel(stats.resp_sum) / sigmas["resp_sum"],
                np.ravel(stats.x_sum) / sigmas["x_sum"],
                stats.second_values() / sigmas["second"],
            ]
        )

    units = [in_noise_units(stats) for stats in released]
    size = units[-1].size
    limit = float(scipy.stats.chi2.isf(WINDOW_FALSE_STOP, size)) / size
    total, count = units[-1].copy(), 1
    for later in reversed(units[:-1]):
        # the difference of two noises: variance 1 + 1/count per entry
        spread = float(np.mean((later - total / count) ** 2)) / (1.0 + 1.0 / count)
        if spread > limit:
            break
        total += later
        count += 1
    return count


def mean_stats(released: list[SuffStats]) -> SuffStats:
    """The average of released statistics (about the same reference)."""
    first, m = released[0], float(len(released))
    return SuffStats(
        first.covariance_type,
        first.reference,
        sum((s.resp_sum for s in released), np.zeros_like(first.resp_sum)) / m,
        sum((s.x_sum for s in released), np.zeros_like(first.x_sum)) / m,
        sum((s.second for s in released), np.zeros_like(first.second)) / m,
        0.0,
        0.0,
        0.0,
        math.inf,
    )
