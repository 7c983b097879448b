"""Private EM over real engines (issue 13): a fixed number of noisy iterations, valid
Params whatever the noise, nothing released but the noisy statistics, the budget
spent exactly, and a usable fit when the budget is generous."""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, mixture_data
from sklearn.exceptions import ConvergenceWarning

from distmix.engines import DaskEngine, LocalEngine
from distmix.nonfinite import NonFiniteInputError
from distmix.params import Params
from distmix.privacy import ClipBall, PrivacyPlan, epsilon_from_rho, private_stats
from distmix.private_em import data_free_start, fit_private, release
from distmix.suffstats import SuffStats


def mean_log_likelihood(params: Params, X: np.ndarray) -> float:
    from distmix.em import mean_log_likelihood_of

    return float(mean_log_likelihood_of(LocalEngine(X), params))


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return mixture_data(3, n_rows=20_000, n_features=3, n_components=3, separation=6.0, shift=500.0)


def ball_for(X: np.ndarray) -> ClipBall:
    # public bounds: a centre and radius the user knows (here from the generator's shift)
    return ClipBall(np.full(X.shape[1], 500.0), 30.0)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_generous_budget_fits_as_em_from_the_same_start(covariance_type):
    """ε = 100 on 40,000 rows of two well-separated components, from a public start
    near them: 10 private iterations land where 10 EM iterations from the same start
    land (held-out log-likelihood within 0.01 nats per row), and the budget is spent
    exactly. (On overlapping components EM's landscape has several modes, and any
    noise may pick another one: that is the benchmark's business, not a test's.)"""
    from distmix import GaussianMixture

    rng = np.random.default_rng(4)
    centres = np.array([[-6.0, 0.0, 0.0], [6.0, 0.0, 0.0]]) + 200.0
    labels = rng.integers(2, size=50_000)
    rows = centres[labels] + rng.normal(size=(50_000, 3)) * np.array([1.0, 2.0, 0.5])
    X, held_out = rows[:40_000], rows[40_000:]
    ball = ClipBall(np.full(3, 200.0), 15.0)
    plan = PrivacyPlan.for_budget(100.0, 1e-6, ball, releases=10)
    start = data_free_start(ball, 2, covariance_type, seed=0)
    start = Params.from_covariances(
        start.weights,
        centres + np.array([[1.0, 1.0, 0.0], [-1.0, 0.5, 0.0]]),
        start.covariances,
        covariance_type,
    )
    fit = fit_private(LocalEngine(X, block_size=4_000), plan, start, reg_covar=1e-6)
    reference = GaussianMixture(
        2,
        covariance_type=covariance_type,
        max_iter=10,
        tol=0.0,
        weights_init=start.weights,
        means_init=start.means,
        precisions_init=start.precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit(ball.clip(X))
    ours = mean_log_likelihood(fit.params, held_out)
    theirs = reference.score(held_out)
    assert abs(ours - theirs) < 0.01, (ours, theirs)
    assert fit.rho_spent == pytest.approx(plan.rho, rel=1e-6)
    assert fit.rho_spent <= plan.rho * (1 + 1e-9)
    assert fit.report()["epsilon"] <= 100.0 * (1 + 1e-9)


def test_a_small_budget_still_gives_valid_params_on_every_engine(data):
    """ε = 0.1 on a few hundred rows: the noise swamps the statistics, the Params stay
    valid (finite, means in the ball); the same on a Dask engine."""
    X = data[:300]
    ball = ball_for(X)
    for engine in (
        LocalEngine(X, block_size=64),
        DaskEngine(da.from_array(X, chunks=(100, 3)), scheduler="sync"),
    ):
        for covariance_type in COVARIANCE_TYPES:
            plan = PrivacyPlan.for_budget(0.1, 1e-6, ball, releases=20)
            fit = fit_private(engine, plan, data_free_start(ball, 4, covariance_type, 1), 1e-6)
            p = fit.params
            for array in (p.weights, p.means, p.covariances, p.precisions_cholesky):
                assert np.all(np.isfinite(array))
            assert np.all(np.linalg.norm(p.means - ball.centre, axis=1) <= ball.radius * (1 + 1e-9))


def test_a_release_carries_no_row_count_and_no_log_likelihood(data):
    X = data[:1000]
    ball = ball_for(X)
    plan = PrivacyPlan.for_budget(1.0, 1e-6, ball, releases=5)
    params = data_free_start(ball, 3, "full", 2)
    stats = private_stats(X, params, ball)
    assert stats.n_rows == 1000 and stats.log_lik != 0.0
    noisy, cost, sigmas = release(stats, plan)
    assert noisy.n_rows == 0.0 and noisy.log_lik == 0.0 and noisy.n_nonfinite == 0.0
    # the second moment went out symmetric, once (its upper triangle)
    np.testing.assert_array_equal(noisy.second, np.swapaxes(noisy.second, 1, 2))
    assert cost == pytest.approx(plan.rho / 5, rel=1e-6)
    assert set(sigmas) == {"resp_sum", "x_sum", "second"}
    assert epsilon_from_rho(5 * cost, 1e-6) <= 1.0 * (1 + 1e-6)


def test_rows_that_are_not_numbers_are_named_and_nothing_released(data):
    X = data[:500].copy()
    X[321, 1] = np.nan
    ball = ball_for(X)
    plan = PrivacyPlan.for_budget(1.0, 1e-6, ball, releases=3)
    with pytest.raises(NonFiniteInputError, match="321"):
        fit_private(LocalEngine(X, block_size=100), plan, data_free_start(ball, 2, "diag", 0), 1e-6)


def test_the_start_and_the_ball_must_match_the_rows(data):
    X = data[:200]
    plan = PrivacyPlan.for_budget(1.0, 1e-6, ClipBall(np.zeros(2), 1.0), releases=2)
    start = data_free_start(ClipBall(np.zeros(3), 1.0), 2, "diag", 0)
    with pytest.raises(ValueError, match="2 features but the rows have 3"):
        fit_private(LocalEngine(X), plan, start, 1e-6)
    plan = PrivacyPlan.for_budget(1.0, 1e-6, ClipBall(np.zeros(3), 1.0), releases=2)
    with pytest.raises(ValueError, match="the start has 2 features"):
        fit_private(
            LocalEngine(X), plan, data_free_start(ClipBall(np.zeros(2), 1.0), 2, "diag", 0), 1e-6
        )


def test_a_data_free_start_depends_on_the_seed_only():
    ball = ClipBall(np.array([5.0, -2.0]), 3.0)
    a, b = data_free_start(ball, 4, "tied", 7), data_free_start(ball, 4, "tied", 7)
    np.testing.assert_array_equal(a.means, b.means)
    assert not np.array_equal(a.means, data_free_start(ball, 4, "tied", 8).means)
    assert np.all(np.linalg.norm(a.means - ball.centre, axis=1) <= 0.5 * ball.radius + 1e-12)
    assert math.isclose(float(np.asarray(a.covariances)[0, 0]), 9.0 / 8.0)


def test_the_first_release_starts_the_fit_and_refuses_a_useless_budget(data):
    """The first release (the rows' count and moments) gives the start when none is
    given; a budget whose iterations' noise would swamp what they estimate is refused
    after it, saying why and what it spent, and nothing else is released."""
    from distmix.private_em import PrivacyBudgetError, first_release, moments_start

    ball = ball_for(data)
    engine = LocalEngine(data)
    plan = PrivacyPlan.for_budget(5.0, 1e-6, ball, releases=6, init_share=0.05)
    first = first_release(engine, plan, "full", 1e-6)
    assert first.count == pytest.approx(len(data), rel=0.01)
    np.testing.assert_allclose(first.moments.means[0], data.mean(axis=0), atol=0.5)
    start = moments_start(first, ball, 3, "full", seed=1)
    again = moments_start(first, ball, 3, "full", seed=1)
    np.testing.assert_array_equal(start.means, again.means)  # the seed decides the draw
    assert np.all(np.linalg.norm(start.means - ball.centre, axis=1) <= ball.radius / 2 + 1e-9)
    fit = fit_private(engine, plan, None, 1e-6, n_components=3, covariance_type="full")
    assert fit.rho_spent == pytest.approx(plan.spent(), rel=1e-6)
    assert epsilon_from_rho(fit.rho_spent, 1e-6) <= 5.0 * (1 + 1e-9)

    few = data[:300]
    tight = PrivacyPlan.for_budget(0.05, 1e-6, ball, releases=20, init_share=0.05)
    asked = []

    class Counting(LocalEngine):
        def reduce(self, task, *args):
            asked.append(task)
            return super().reduce(task, *args)

    with pytest.raises(PrivacyBudgetError, match="cannot give a usable fit of 3 components") as e:
        fit_private(Counting(few), tight, None, 1e-6, n_components=3, covariance_type="full")
    assert "The first release spent epsilon=" in str(e.value)
    assert asked == ["private_moments"]  # refused before any iteration


def test_the_window_holds_the_final_releases_that_agree_within_their_noise():
    """Ten releases: four moving by ten noise scales each, then six at one point with
    noise only (seeded): the window holds exactly the six."""
    from distmix.private_em import stable_window

    rng = np.random.default_rng(0)
    sigmas = {"resp_sum": 2.0, "x_sum": 5.0, "second": 50.0}
    k, d = 3, 4
    released = []
    for t in range(10):
        shift = 10.0 * max(0, 4 - t)  # in noise scales; zero from the fifth on
        second = np.zeros((k, d, d))
        iu = np.triu_indices(d)
        upper = (shift + rng.normal(size=(k, iu[0].size))) * sigmas["second"]
        second[:, iu[0], iu[1]] = upper
        second[:, iu[1], iu[0]] = upper
        released.append(
            SuffStats(
                "full",
                np.zeros((k, d)),
                (shift + rng.normal(size=k)) * sigmas["resp_sum"],
                (shift + rng.normal(size=(k, d))) * sigmas["x_sum"],
                second,
                0.0,
                0.0,
                0.0,
                math.inf,
            )
        )
    assert stable_window(released, sigmas) == 6
    assert stable_window(released[-3:], sigmas) == 3
    assert stable_window(released[:1], sigmas) == 1
