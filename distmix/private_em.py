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

from distmix.engines.base import Engine
from distmix.nonfinite import raise_if_nonfinite
from distmix.params import Params
from distmix.privacy import (
    ClipBall,
    PrivacyPlan,
    SiteShare,
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


def release(stats: SuffStats, plan: PrivacyPlan) -> tuple[SuffStats, float, dict[str, float]]:
    """The statistics with each field's noise, the ``ρ`` the release cost and each
    field's noise scale. The symmetric second moments go out once, as their upper
    triangle; the row count and log-likelihood not at all."""
    host = stats.to_host()
    per_field = plan.rho / plan.releases
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


def site_shares(plan: PrivacyPlan, parts: int, stats: SuffStats) -> dict[str, SiteShare]:
    """The noise shares that ``parts`` or more sites add to each field of one release
    (distributed noise): what every site computes from the manifest alone."""
    sensitivity = plan.ball.sensitivities()
    per_field = plan.rho / plan.releases
    return {
        name: SiteShare.plan(sensitivity[name], per_field * plan.shares[name], parts, size)
        for name, size in _field_sizes(stats).items()
    }


def _field_sizes(stats: SuffStats) -> dict[str, int]:
    host = stats.to_host()
    return {
        "resp_sum": int(np.size(host.resp_sum)),
        "x_sum": int(np.size(host.x_sum)),
        "second": int(host.second_values().size),
    }


def fit_private(
    engine: Engine,
    plan: PrivacyPlan,
    start: Params,
    reg_covar: float,
    min_count: float = 1.0,
    iterations: int | None = None,
    average_last: int = 1,
) -> PrivateFit:
    """``iterations`` (default: ``plan.releases``, at most that) private EM iterations
    from ``start`` (public Params); the fitted Params come from the average of the
    last ``average_last`` noisy statistics (post-processing).

    An engine whose ``noise_at_sites`` is true (a federation with distributed noise)
    returns sums its sites have already noised, in shares that add up to the plan's
    noise over at least ``engine.noise_parts`` sites; any other engine's sums are
    noised here (:func:`release`).
    """
    ball = plan.ball
    ball.check_features(engine.n_features)
    if start.n_features != engine.n_features:
        raise ValueError(
            f"the start has {start.n_features} features but the rows have {engine.n_features}."
        )
    count = plan.releases if iterations is None else int(iterations)
    if not 1 <= count <= plan.releases:
        raise ValueError(
            f"a private fit under this plan runs 1 to {plan.releases} iterations, got {count}."
        )
    at_sites = bool(getattr(engine, "noise_at_sites", False))
    params, spent, sigmas = start, 0.0, dict(plan.sigmas)
    kept: collections.deque[SuffStats] = collections.deque(maxlen=max(1, int(average_last)))
    for _ in range(count):
        stats: SuffStats = engine.reduce("private_estep", params, ball).to_host()
        # the data owner's own error (it releases nothing): rows that are not numbers
        raise_if_nonfinite(stats.n_nonfinite, stats.first_nonfinite)
        if at_sites:
            shares = site_shares(plan, int(engine.noise_parts), stats)  # type: ignore[attr-defined]
            noisy = stats
            spent += sum(share.rho for share in shares.values())
            sigmas = {name: share.sigma for name, share in shares.items()}
        else:
            noisy, cost, sigmas = release(stats, plan)
            spent += cost
        params = private_params(noisy, ball, reg_covar, min_count, sigmas["second"])
        kept.append(noisy)
    if len(kept) > 1:
        noise = sigmas["second"] / math.sqrt(len(kept))
        params = private_params(mean_stats(list(kept)), ball, reg_covar, min_count, noise)
    return PrivateFit(params, plan, spent, count, sigmas, len(kept))


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
