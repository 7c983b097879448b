"""Differential privacy building blocks (issue 13): the clipping ball, the sensitivity of
the statistics released about its centre, and zCDP's closed forms.

The sensitivity search uses the real E-step: two neighbouring datasets (one row
added) give statistics whose difference is that row's contribution, and it must
stay within (1, B, B²) whatever the row, the other rows and the parameters.
"""

from __future__ import annotations

import math

import array_api_strict
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from distmix.estep import chunk_stats
from distmix.mstep import m_step
from distmix.params import Params
from distmix.privacy import (
    ClipBall,
    PrivacyPlan,
    epsilon_from_rho,
    field_norms,
    gaussian_release,
    gaussian_rho,
    gaussian_sigma,
    private_params,
    private_stats,
    rho_for_epsilon,
)
from distmix.suffstats import SuffStats

# the statistics are sums of products: their computed norms may pass the bound by
# rounding, a few ulp of the values summed
ROUNDING = 1e-9


def random_params(rng: np.random.Generator, k: int, d: int, covariance_type: str) -> Params:
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(scale=3.0, size=(k, d))
    if covariance_type == "full":
        a = rng.normal(size=(k, d, d))
        cov = a @ np.swapaxes(a, 1, 2) + 0.1 * np.eye(d)
    elif covariance_type == "tied":
        a = rng.normal(size=(d, d))
        cov = a @ a.T + 0.1 * np.eye(d)
    elif covariance_type == "diag":
        cov = rng.uniform(0.05, 4.0, size=(k, d))
    else:
        cov = rng.uniform(0.05, 4.0, size=k)
    return Params.from_covariances(weights, means, cov, covariance_type)


def difference(a, b):
    """``a − b``, field by field, as statistics (their norms are the change)."""
    return a.scale(1.0) + b.scale(-1.0)


# -- the ball -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("centre", "radius", "error", "message"),
    [
        (np.zeros((2, 2)), 1.0, ValueError, "1-D array"),
        (np.array([]), 1.0, ValueError, "1-D array"),
        (np.array([0.0, np.nan]), 1.0, ValueError, "NaN or infinity"),
        (np.zeros(2), 0.0, ValueError, "finite and > 0"),
        (np.zeros(2), -1.0, ValueError, "finite and > 0"),
        (np.zeros(2), math.inf, ValueError, "finite and > 0"),
        (np.zeros(2), True, TypeError, "must be a number"),
        (np.zeros(2), "1", TypeError, "must be a number"),
    ],
)
def test_a_ball_is_refused_naming_what_is_wrong(centre, radius, error, message):
    with pytest.raises(error, match=message):
        ClipBall(centre, radius)


def test_rows_inside_are_kept_rows_outside_go_onto_the_sphere():
    rng = np.random.default_rng(0)
    centre = np.array([1e6, -3.0, 2.0])  # far from the origin: clipping is about it
    ball = ClipBall(centre, 2.5)
    inside = centre + rng.normal(size=(50, 3)) * 0.3
    outside = centre + rng.normal(size=(50, 3)) * 40.0
    rows = np.concatenate([inside, outside, [[np.nan, 0.0, 0.0]]])
    offsets = ball.offsets(rows)
    np.testing.assert_array_equal(offsets[:50], inside - centre)
    v, w = outside - centre, offsets[50:100]
    norms = np.linalg.norm(w, axis=1)
    assert np.all(norms <= 2.5) and np.all(norms > 2.5 * (1 - 1e-9))
    # along the row's own direction from the centre
    np.testing.assert_allclose(w / norms[:, None], v / np.linalg.norm(v, axis=1)[:, None])
    assert not np.all(np.isfinite(offsets[100]))  # still a non-finite row, for the E-step
    # the clipped rows: offsets put back about the centre (rounded to its ulp)
    np.testing.assert_allclose(ball.clip(rows)[:100], centre + offsets[:100], rtol=1e-15)
    with pytest.raises(ValueError, match="3 features but the rows have 2"):
        ball.clip(rows[:, :2])


def test_clipping_runs_in_the_rows_namespace():
    ball = ClipBall(np.zeros(2), 1.0)
    rows = np.array([[3.0, 4.0], [0.1, 0.2]])
    got = ball.clip(array_api_strict.asarray(rows))
    assert array_api_compat_namespace(got) == "array_api_strict"
    np.testing.assert_allclose(np.asarray(got), [[0.6, 0.8], [0.1, 0.2]], rtol=1e-13)


def array_api_compat_namespace(array) -> str:
    import array_api_compat

    return array_api_compat.array_namespace(array).__name__.split(".")[0]


# -- sensitivity ------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    k=st.integers(1, 4),
    d=st.integers(1, 5),
    n=st.integers(0, 30),
    seed=st.integers(0, 2**32 - 1),
    radius=st.floats(0.01, 1e3),
    row_scale=st.floats(0.0, 1e4),
    spread=st.floats(0.0, 1e3),
)
def test_one_row_moves_each_field_by_at_most_1_B_and_B_squared(
    covariance_type, k, d, n, seed, radius, row_scale, spread
):
    """Neighbouring datasets (one row added, anywhere: inside, on or far outside the
    ball) differ by at most (1, B, B²) in each released field, for any parameters."""
    rng = np.random.default_rng(seed)
    params = random_params(rng, k, d, covariance_type)
    ball = ClipBall(rng.normal(scale=5.0, size=d), radius)
    rows = ball.centre + rng.normal(scale=spread, size=(n, d))
    extra = ball.centre + rng.normal(size=(1, d)) * row_scale
    without = private_stats(rows, params, ball) if n else None
    with_row = private_stats(np.concatenate([rows, extra]), params, ball)
    change = with_row if without is None else difference(with_row, without)
    bounds = ball.sensitivities()
    norms = field_norms(change)
    for name, bound in bounds.items():
        scale = 1.0 if without is None else 1.0 + field_norms(with_row)[name] / bound
        assert norms[name] <= bound * (1.0 + ROUNDING * scale), (name, norms[name], bound)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_bounds_are_reached(covariance_type):
    """One component and a row clipped onto the sphere along an axis: each field moves
    by its whole bound, so the search above could fail."""
    rng = np.random.default_rng(1)
    params = random_params(rng, 1, 3, covariance_type)
    ball = ClipBall(np.array([1.0, 2.0, 3.0]), 4.0)
    far = ball.centre + np.array([[0.0, -500.0, 0.0]])
    norms = field_norms(private_stats(far, params, ball))
    for name, bound in ball.sensitivities().items():
        assert norms[name] == pytest.approx(bound, rel=1e-12), name


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_about_the_centre_recentre_to_the_e_step_of_the_clipped_rows(
    covariance_type,
):
    """Taking the statistics about the centre is exact: moved back to the means, they
    are the ordinary E-step of the clipped rows (with data far from the origin)."""
    rng = np.random.default_rng(2)
    params = random_params(rng, 3, 4, covariance_type)
    ball = ClipBall(np.full(4, 1e5), 6.0)
    params = Params.from_covariances(
        params.weights, params.means + 1e5, params.covariances, covariance_type
    )
    rows = ball.centre + rng.normal(scale=4.0, size=(500, 4))
    weights = rng.uniform(0.0, 1.0, size=500)
    private = private_stats(rows, params, ball, weights)
    assert np.array_equal(private.reference, np.broadcast_to(ball.centre, (3, 4)))
    plain = chunk_stats(ball.clip(rows), params, weights).to_host()
    assert private.recentre(params.means).allclose(plain, rtol=1e-9, atol=1e-9 * 500)


def test_the_centre_must_match_the_features():
    params = random_params(np.random.default_rng(3), 2, 3, "diag")
    with pytest.raises(ValueError, match="2 features but the rows have 3"):
        private_stats(np.zeros((4, 3)), params, ClipBall(np.zeros(2), 1.0))


# -- zCDP -------------------------------------------------------------------------------
def optimal_epsilon(rho: float, delta: float) -> float:
    """The closed form of Canonne, Kamath and Steinke (2020, Proposition 12): ρ-zCDP is
    (ε, δ)-DP for ε = inf over α > 1 of
    αρ + (α log(1 − 1/α) − log(α − 1) + log(1/δ)) / (α − 1), minimised here over
    log(α − 1) by scipy (independent of OpenDP's code)."""

    def at(t: float) -> float:
        alpha = 1.0 + math.exp(t)
        return alpha * rho + (
            alpha * math.log1p(-1.0 / alpha) - math.log(alpha - 1.0) - math.log(delta)
        ) / (alpha - 1.0)

    found = minimize_scalar(at, bounds=(-30.0, 30.0), method="bounded", options={"xatol": 1e-13})
    return float(found.fun)


RHOS = [1e-4, 0.005, 0.1, 0.5, 1.0, 7.3]
DELTAS = [1e-9, 1e-6, 1e-3]


@pytest.mark.parametrize("rho", RHOS)
@pytest.mark.parametrize("delta", DELTAS)
def test_epsilon_is_the_closed_form_and_the_other_library_agrees(rho, delta):
    """OpenDP's conversion (what distmix reports) equals the closed form to 1e-9, and
    Google's dp-accounting (its RDP accountant on the same Gaussian) to 1e-3."""
    dp_accounting = pytest.importorskip("dp_accounting")
    epsilon = epsilon_from_rho(rho, delta)
    assert epsilon == pytest.approx(optimal_epsilon(rho, delta), rel=1e-9)
    # orders up to 5,000: at ρ = 1e-4 the best order is ~400, beyond the default grid
    orders = np.concatenate([np.linspace(1.01, 10.0, 400), np.geomspace(10.0, 5000.0, 1200)])
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(orders))
    accountant.compose(dp_accounting.GaussianDpEvent(1.0 / math.sqrt(2.0 * rho)))
    assert epsilon == pytest.approx(accountant.get_epsilon(delta), rel=1e-3)
    # tighter than ρ + 2 √(ρ log(1/δ)), never looser
    assert epsilon <= rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 8.0])
@pytest.mark.parametrize("delta", DELTAS)
def test_rho_for_epsilon_is_the_largest_rho_that_fits(epsilon, delta):
    rho = rho_for_epsilon(epsilon, delta)
    assert epsilon_from_rho(rho, delta) <= epsilon
    assert epsilon_from_rho(rho * (1 + 1e-9), delta) > epsilon * (1 - 1e-12)
    assert epsilon_from_rho(rho, delta) == pytest.approx(epsilon, rel=1e-9)


def test_gaussian_releases_compose_by_adding_rho():
    """T releases of a field at σ cost T Δ²/(2σ²); σ for a target ρ inverts it."""
    radius, sigma, releases = 3.0, 10.0, 25
    total = sum(gaussian_rho(radius**2, sigma) for _ in range(releases))
    assert total == pytest.approx(releases * radius**4 / (2 * sigma**2), rel=1e-12)
    assert gaussian_sigma(radius**2, total / releases) == pytest.approx(sigma, rel=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: epsilon_from_rho(-1.0, 1e-6), "rho must be finite and >= 0"),
        (lambda: epsilon_from_rho(math.nan, 1e-6), "rho must be finite and >= 0"),
        (lambda: epsilon_from_rho(1.0, 0.0), r"delta must be in \(0, 1\)"),
        (lambda: epsilon_from_rho(1.0, 1.0), r"delta must be in \(0, 1\)"),
        (lambda: rho_for_epsilon(0.0, 1e-6), "epsilon must be finite and > 0"),
        (lambda: gaussian_rho(1.0, 0.0), "sigma must be finite and > 0"),
        (lambda: gaussian_sigma(0.0, 1.0), "sensitivity must be finite and > 0"),
    ],
)
def test_accounting_refuses_meaningless_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- a fit's plan -----------------------------------------------------------------------
def test_a_plan_spends_exactly_its_budget_over_its_releases():
    """T = 20 iterations and 2 initialisation releases at (ε, δ) = (1, 1e-6), B = 3: the
    hand computation of the noise, and of ρ and ε composed back from it."""
    ball = ClipBall(np.zeros(4), 3.0)
    plan = PrivacyPlan.for_budget(1.0, 1e-6, ball, releases=22)
    rho = rho_for_epsilon(1.0, 1e-6)
    # by hand: ρ / 22 per release, a third to each field, σ = Δ / √(2 ρ_f)
    rho_field = rho / 22 / 3
    for name, sensitivity in (("resp_sum", 1.0), ("x_sum", 3.0), ("second", 9.0)):
        assert plan.sigmas[name] == pytest.approx(sensitivity / math.sqrt(2 * rho_field), rel=1e-12)
    # composed back: 22 releases × 3 fields × Δ²/(2σ²) is the budget's ρ, and its ε
    hand = 22 * sum(
        d**2 / (2 * plan.sigmas[f] ** 2)
        for f, d in zip(("resp_sum", "x_sum", "second"), (1.0, 3.0, 9.0), strict=True)
    )
    assert plan.spent() == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(rho, rel=1e-12)
    report = plan.report()
    assert report["epsilon"] == pytest.approx(1.0, rel=1e-9) and report["epsilon"] <= 1.0
    assert report["rho"] == pytest.approx(rho, rel=1e-12)
    assert plan.spent(11) == pytest.approx(rho / 2, rel=1e-12)


def test_the_first_release_and_the_iterations_compose_to_the_budget():
    """A first release of 5 % and T = 10 iterations at (ε, δ) = (2, 1e-6), B = 4: by
    hand, ρ_init = 0.05 ρ and every iteration 0.095 ρ; they add up to ρ, whose ε is 2."""
    ball = ClipBall(np.zeros(3), 4.0)
    plan = PrivacyPlan.for_budget(2.0, 1e-6, ball, releases=10, init_share=0.05)
    rho = rho_for_epsilon(2.0, 1e-6)
    assert plan.init_rho == pytest.approx(0.05 * rho, rel=1e-12)
    assert plan.iteration_rho == pytest.approx(0.095 * rho, rel=1e-12)
    for name, sensitivity in (("resp_sum", 1.0), ("x_sum", 4.0), ("second", 16.0)):
        by_hand = sensitivity / math.sqrt(2 * 0.05 * rho / 3)
        assert plan.init_sigmas[name] == pytest.approx(by_hand, rel=1e-12)
        assert plan.largest_sigmas[name] == plan.init_sigmas[name]  # 5 % < 9.5 %
    assert plan.spent() == pytest.approx(rho, rel=1e-12)
    assert plan.spent(init=False) == pytest.approx(0.95 * rho, rel=1e-12)
    assert plan.spent(4) == pytest.approx(0.05 * rho + 4 * 0.095 * rho, rel=1e-12)
    assert epsilon_from_rho(plan.spent(), 1e-6) == pytest.approx(2.0, rel=1e-9)
    with pytest.raises(ValueError, match=r"init_share must be in \[0, 1\)"):
        PrivacyPlan.for_budget(2.0, 1e-6, ball, releases=10, init_share=1.0)


def test_shares_move_noise_between_fields_at_the_same_cost():
    ball = ClipBall(np.zeros(2), 1.0)
    even = PrivacyPlan.for_budget(2.0, 1e-6, ball, releases=10)
    skewed = PrivacyPlan.for_budget(
        2.0, 1e-6, ball, releases=10, shares={"resp_sum": 1.0, "x_sum": 2.0, "second": 5.0}
    )
    # more of the budget to the second moments, less to the counts
    assert skewed.sigmas["second"] < even.sigmas["second"]
    assert skewed.sigmas["resp_sum"] > even.sigmas["resp_sum"]
    assert skewed.spent() == pytest.approx(even.spent(), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"releases": 0}, ValueError, "at least once"),
        ({"releases": 2.5}, TypeError, "must be an integer"),
        ({"releases": 5, "shares": {"resp_sum": 1.0}}, ValueError, "must name exactly"),
        (
            {"releases": 5, "shares": {"resp_sum": 1.0, "x_sum": 0.0, "second": 1.0}},
            ValueError,
            "finite and > 0",
        ),
    ],
)
def test_a_plan_is_refused_naming_what_is_wrong(kwargs, error, message):
    with pytest.raises(error, match=message):
        PrivacyPlan.for_budget(1.0, 1e-6, ClipBall(np.zeros(2), 1.0), **kwargs)


# -- the noise --------------------------------------------------------------------------
def test_the_noise_has_its_variance_and_costs_its_rho():
    """10⁵ draws of the discrete Gaussian: empirical variance within 2 % of the
    release's σ², centred on the values, the cost what was asked."""
    values = np.full(100_000, 12.5)
    release = gaussian_release(values, sensitivity=3.0, rho=0.02)
    noise = release.values - values
    # σ of the continuous Gaussian, widened by the grid's rounding (√n steps: 5e-5 here)
    assert 15.0 <= release.sigma <= 15.0 * (1 + 1e-4)
    assert np.var(noise) == pytest.approx(release.sigma**2, rel=0.02)
    assert abs(np.mean(noise)) < 5 * release.sigma / math.sqrt(noise.size)
    assert release.rho <= 0.02 * (1 + 1e-9) and release.rho == pytest.approx(0.02, rel=1e-4)
    # on the grid: every value a whole number of steps
    np.testing.assert_array_equal(
        np.rint(release.values / release.step), release.values / release.step
    )


def test_two_releases_differ_and_bad_values_are_refused():
    a = gaussian_release(np.zeros(50), 1.0, 0.5).values
    b = gaussian_release(np.zeros(50), 1.0, 0.5).values
    assert not np.array_equal(a, b)  # fresh randomness, no seed
    with pytest.raises(ValueError, match="x_sum to release contain NaN"):
        gaussian_release(np.array([1.0, np.nan]), 1.0, 0.5, name="x_sum")
    with pytest.raises(ValueError, match="too large for the noise grid"):
        gaussian_release(np.array([1e300]), 1.0, 0.5)


# -- post-processing --------------------------------------------------------------------
def noisy_stats(rng, covariance_type, k, d, ball, scale):
    """Statistics about the centre with arbitrary noise: negative counts, second
    moments neither symmetric nor positive, means far outside the ball."""
    shapes = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}
    return SuffStats(
        covariance_type,
        np.broadcast_to(ball.centre, (k, d)),
        rng.normal(scale=scale, size=k) + rng.choice([0.0, 50.0], size=k),
        rng.normal(scale=scale * ball.radius, size=(k, d)),
        rng.normal(scale=scale * ball.radius**2, size=shapes[covariance_type]),
        0.0,
        0.0,
        0.0,
        math.inf,
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_thousand_noisy_iterations_give_valid_params(covariance_type):
    """Adversarial noise, tiny to huge: every Params is valid (from_covariances runs
    its Cholesky), finite, its means in the ball, its covariances' eigenvalues at
    least reg_covar."""
    rng = np.random.default_rng(7)
    failures = 0
    for i in range(1000):
        k, d = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        ball = ClipBall(rng.normal(scale=1e3, size=d), float(10 ** rng.uniform(-3, 3)))
        scale = float(10 ** rng.uniform(-6, 6))
        stats = noisy_stats(rng, covariance_type, k, d, ball, scale)
        try:
            params = private_params(stats, ball, reg_covar=1e-6)
        except Exception:  # counted, so that the assertion names how many
            failures += 1
            continue
        for array in (params.weights, params.means, params.covariances, params.precisions_cholesky):
            assert np.all(np.isfinite(array)), i
        # in the ball, to the rounding of the means' coordinates
        slack = 4 * d * float(np.spacing(np.max(np.abs(ball.centre))))
        assert np.all(np.linalg.norm(params.means - ball.centre, axis=1) <= ball.radius + slack), i
        cov = np.asarray(params.covariances)
        if covariance_type in ("full", "tied"):
            values = np.linalg.eigvalsh(cov)
            # floored, then rebuilt: to the rounding of the largest eigenvalue
            rounding = 16 * d * np.finfo(np.float64).eps * float(np.abs(values).max())
            assert values.min() >= 1e-6 - rounding, (i, values.min())
        else:
            assert cov.min() >= 1e-6, (i, cov.min())
    assert failures == 0


def test_noiseless_statistics_give_the_m_step():
    """Without noise, post-processing changes nothing the M-step would not: the same
    Params as the ordinary M-step on the same statistics (means inside the ball)."""
    rng = np.random.default_rng(8)
    for covariance_type in COVARIANCE_TYPES:
        params = random_params(rng, 3, 4, covariance_type)
        ball = ClipBall(np.zeros(4), 50.0)
        rows = rng.normal(scale=3.0, size=(2000, 4))
        stats = private_stats(rows, params, ball)
        got = private_params(stats, ball, reg_covar=1e-6)
        want = m_step(stats.recentre(params.means), 1e-6, previous=params)
        np.testing.assert_allclose(got.weights, want.weights, rtol=1e-9)
        np.testing.assert_allclose(got.means, want.means, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-6, atol=1e-9)


def test_post_processing_refuses_what_it_cannot_use():
    ball = ClipBall(np.zeros(2), 1.0)
    stats = noisy_stats(np.random.default_rng(9), "diag", 2, 2, ball, 1.0)
    with pytest.raises(ValueError, match="reg_covar > 0"):
        private_params(stats, ball, reg_covar=0.0)
    with pytest.raises(ValueError, match="3 features but the rows have 2"):
        private_params(stats, ClipBall(np.zeros(3), 1.0), reg_covar=1e-6)


def test_huge_and_non_finite_rows():
    """A finite row too large to square is still clipped; rows with NaN or ±inf stay
    non-finite (the E-step names them), without a warning."""
    ball = ClipBall(np.zeros(3), 2.0)
    rows = np.array([[1e300, -1e300, 5e299], [np.inf, 0.0, 1.0], [np.nan, 1.0, 1.0]])
    offsets = ball.offsets(rows)
    assert np.linalg.norm(offsets[0]) <= 2.0 and np.linalg.norm(offsets[0]) > 1.99
    assert not np.all(np.isfinite(offsets[1])) and not np.all(np.isfinite(offsets[2]))


def test_a_budget_beyond_the_accountant_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="beyond what OpenDP's accountant computes"):
        rho_for_epsilon(1e8, 1e-6)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_eigenvalues_below_the_noise_are_floored_at_it(covariance_type):
    """Noise of scale σ on the second moments makes a covariance entry uncertain by
    σ / n: variances are floored there, never at 1e-6 below a noise that large."""
    rng = np.random.default_rng(10)
    ball = ClipBall(np.zeros(3), 5.0)
    stats = noisy_stats(rng, covariance_type, 3, 3, ball, 1e3)
    sigma = 400.0
    params = private_params(stats, ball, reg_covar=1e-6, second_sigma=sigma)
    nk = np.maximum(np.asarray(stats.resp_sum), 1.0)
    floors = {
        "full": sigma / nk,
        "tied": np.full(1, sigma / nk.sum()),
        "diag": sigma / nk,
        "spherical": sigma / nk / 3,
    }[covariance_type]
    cov = np.asarray(params.covariances)
    if covariance_type == "full":
        smallest = np.linalg.eigvalsh(cov).min(axis=1)
    elif covariance_type == "tied":
        smallest = np.linalg.eigvalsh(cov).min(keepdims=True)
    elif covariance_type == "diag":
        smallest = cov.min(axis=1)
    else:
        smallest = cov
    assert np.all(smallest >= floors * (1 - 1e-9)), (smallest, floors)
    with pytest.raises(ValueError, match="second_sigma must be finite and >= 0"):
        private_params(stats, ball, reg_covar=1e-6, second_sigma=-1.0)
