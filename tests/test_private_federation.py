"""Differential privacy in a federation (issue 13): the noise added centrally by the
coordinator or in shares by the sites, the sites' own rules (only private E-steps,
the manifest's ball, at most its iterations, charged across sessions and retries),
and the total noise with dropouts."""

from __future__ import annotations

import math

import numpy as np
import pytest

import distmix
from distmix.federated import Federation, Manifest, Site
from distmix.federated.engine import FederationAbort, SiteError
from distmix.federated.wire import slots, template, values
from distmix.params import Params
from distmix.privacy import ClipBall, Privacy, SiteShare, distributed_rho, private_stats
from distmix.private_em import data_free_start
from distmix.tasks import TaskRefusedError

pytest.importorskip("opendp")

CENTRE = 1000.0
NAMES = ("ana", "ben", "cai", "dov", "eli")


def rows(seed: int, n: int = 4_000, d: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    means = np.array([[-3.0] * d, [3.0] * d])
    return CENTRE + means[rng.integers(2, size=n)] + rng.normal(size=(n, d))


def privacy(epsilon: float = 2.0, d: int = 2, radius: float = 10.0) -> Privacy:
    return Privacy(epsilon=epsilon, delta=1e-6, clip_radius=radius, centre=np.full(d, CENTRE))


def federation(noise: str, *, n_sites: int = 3, iterations: int = 5, **kwargs) -> Federation:
    sites = [Site(rows(i), name=NAMES[i]) for i in range(n_sites)]
    return Federation(sites, privacy=privacy(), dp_iterations=iterations, dp_noise=noise, **kwargs)


def start_params(d: int = 2) -> Params:
    ball = privacy(d=d).ball
    drawn = data_free_start(ball, 2, "full", seed=0)
    means = CENTRE + np.array([[-2.0] * d, [2.0] * d])
    return Params.from_covariances(drawn.weights, means, drawn.covariances, "full")


# -- the manifest -----------------------------------------------------------------
def test_a_private_manifest_round_trips_and_a_plain_one_keeps_its_json():
    plain = Manifest(sites=NAMES[:3], n_features=2, max_rows_per_site=1024)
    assert "dp_" not in plain.to_json()  # its digest is what it was before privacy
    assert plain.privacy() is None and plain.privacy_plan() is None
    private = Manifest(
        sites=NAMES[:3],
        n_features=2,
        max_rows_per_site=1024,
        centre=CENTRE,
        dp_epsilon=1.0,
        dp_delta=1e-6,
        dp_clip_radius=10.0,
        dp_iterations=4,
        dp_shares=(1.0, 1.0, 2.0),
    )
    again = Manifest.from_json(private.to_json())
    assert again == private and again.digest == private.digest != plain.digest
    assert again.dp_noise == "distributed" and again.noise_parts == again.threshold == 3
    plan = again.privacy_plan()
    assert plan.releases == 4 and plan.shares["second"] == pytest.approx(0.5)
    assert np.array_equal(plan.ball.centre, np.full(2, CENTRE)) and plan.ball.radius == 10.0


def test_a_manifest_with_part_of_a_budget_names_what_is_missing():
    with pytest.raises(ValueError, match="dp_clip_radius, dp_iterations missing"):
        Manifest(sites=NAMES[:3], n_features=2, max_rows_per_site=8, dp_epsilon=1.0, dp_delta=1e-6)
    budget = {"dp_epsilon": 1.0, "dp_delta": 1e-6, "dp_clip_radius": 1.0, "dp_iterations": 2}
    for wrong, message in [
        ({"dp_noise": "nowhere"}, "dp_noise must be one of"),
        ({"dp_delta": 2.0}, "delta must be in"),
        ({"dp_iterations": 0}, "dp_iterations must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            Manifest(sites=NAMES[:3], n_features=2, max_rows_per_site=8, **{**budget, **wrong})


def test_all_or_nothing_shares_are_split_over_every_site():
    manifest = Manifest(
        sites=NAMES[:4],
        n_features=2,
        max_rows_per_site=8,
        mode="all-or-nothing",
        dp_epsilon=1.0,
        dp_delta=1e-6,
        dp_clip_radius=1.0,
        dp_iterations=2,
    )
    assert manifest.noise_parts == 4
    central = Manifest(**{**_fields(manifest), "dp_noise": "central"})
    assert central.noise_parts == 1


def _fields(manifest: Manifest) -> dict:
    return {name: getattr(manifest, name) for name in manifest.__dataclass_fields__}


# -- what a site sends --------------------------------------------------------------
def test_a_private_e_step_sends_no_row_count_and_no_log_likelihood():
    params, ball = start_params(), privacy().ball
    like = template("private_estep", 2, (params, ball))
    names = [slot.name for slot in slots("private_estep", like)]
    assert names == ["resp_sum", "x_sum", "second"]
    stats = private_stats(rows(0), params, ball)
    sent = values(stats, "private_estep")
    assert sent.size == sum(slot.size for slot in slots("private_estep", like))
    assert stats.n_rows == 4_000 and not np.any(sent == 4_000.0)


def test_central_noise_the_coordinator_decodes_the_clipped_sum_exactly():
    """Central mode: the sites send their clipped statistics (no noise, no count) and
    the decoded secure sum is the clipped statistics of all the rows."""
    fed = federation("central")
    engine = fed.engine()
    assert engine.privacy_plan is not None and not engine.noise_at_sites
    params, ball = start_params(), privacy().ball
    summed = engine.reduce("private_estep", params, ball)
    whole = private_stats(np.concatenate([rows(i) for i in range(3)]), params, ball)
    np.testing.assert_allclose(summed.resp_sum, whole.resp_sum, rtol=1e-12)
    np.testing.assert_allclose(summed.x_sum, whole.x_sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(summed.second, whole.second, rtol=1e-12)
    assert summed.n_rows == 0.0 and summed.log_lik == 0.0  # never sent


# -- the sites' rules -----------------------------------------------------------------
@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_a_private_federation_answers_only_private_e_steps_about_its_ball(noise):
    engine = federation(noise).engine()
    params = start_params()
    with pytest.raises(TaskRefusedError, match="a private federation does not run .*'estep'"):
        engine.reduce("estep", params)
    # a coordinator that asks all the same is refused by every site
    engine.refused_tasks = frozenset()
    with pytest.raises(SiteError, match="private.*not 'estep'"):
        engine.reduce("estep", params)
    other = ClipBall(np.full(2, CENTRE), 11.0)
    with pytest.raises(SiteError, match="not the manifest's clipping ball"):
        engine.reduce("private_estep", params, other)
    with pytest.raises(ValueError, match="does not release its row count"):
        _ = engine.n_rows


def test_a_federation_without_privacy_refuses_private_e_steps():
    sites = [Site(rows(i), name=NAMES[i]) for i in range(3)]
    engine = Federation(sites, centre=CENTRE, radius=64.0).engine()
    with pytest.raises(TaskRefusedError, match="a federation does not run .*'private_estep'"):
        engine.reduce("private_estep", start_params(), privacy().ball)
    engine.refused_tasks = frozenset()
    with pytest.raises(SiteError, match="needs a private manifest"):
        engine.reduce("private_estep", start_params(), privacy().ball)


def test_every_answered_release_is_charged_across_sessions_and_restarts(tmp_path):
    """A site answers at most dp_iterations private E-steps under its manifest, in any
    number of sessions, and a site restarted from its ledger file remembers them."""
    ledgers = [tmp_path / f"{name}.json" for name in NAMES[:3]]
    sites = [Site(rows(i), name=NAMES[i], ledger=ledgers[i]) for i in range(3)]
    fed = Federation(sites, privacy=privacy(), dp_iterations=3, dp_noise="distributed")
    params, ball = start_params(), privacy().ball
    fed.engine().reduce("private_estep", params, ball)
    fed.engine().reduce("private_estep", params, ball)  # a new session
    restarted = [Site(rows(i), name=NAMES[i], ledger=ledgers[i]) for i in range(3)]
    fed = Federation(restarted, fed.manifest)
    fed.engine().reduce("private_estep", params, ball)
    with pytest.raises(SiteError, match="budget under this manifest is spent"):
        fed.engine().reduce("private_estep", params, ball)


def test_a_site_answers_one_first_release_per_manifest():
    fed = federation("distributed")
    ball = privacy().ball
    first = fed.engine().reduce("private_moments", ball, "full")
    assert first.n_components == 1 and first.n_rows == 0.0  # no row count on the wire
    assert abs(float(first.resp_sum[0]) - 12_000) < 200  # noisy, about the rows' count
    with pytest.raises(SiteError, match="first release .* spent"):
        fed.engine().reduce("private_moments", ball, "full")


def test_too_many_iterations_are_refused_before_any_round():
    fed = federation("distributed", iterations=3)
    model = distmix.GaussianMixture(2, max_iter=4, means_init=start_params().means)
    with pytest.raises(ValueError, match=r"max_iter=4 .*\(dp_iterations=3\)"):
        model.fit(fed)
    assert not hasattr(model, "means_")
    # nothing was charged: the three iterations are still there
    model.set_params(max_iter=3).fit(fed)
    assert model.privacy_["iterations"] == 3


def test_the_estimator_settings_must_match_the_manifest():
    fed = federation("central")
    model = distmix.GaussianMixture(2, max_iter=2, privacy=privacy(epsilon=4.0))
    with pytest.raises(ValueError, match="privacy.epsilon=4.0 differs"):
        model.fit(fed)
    moved = Privacy(epsilon=2.0, delta=1e-6, clip_radius=10.0, centre=np.zeros(2))
    with pytest.raises(ValueError, match="privacy.centre differs"):
        distmix.GaussianMixture(2, max_iter=2, privacy=moved).fit(fed)


# -- fits ----------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["central", "distributed"])
def test_a_private_federated_fit_finds_the_components(noise):
    fed = federation(noise)
    model = distmix.GaussianMixture(2, max_iter=5, means_init=start_params().means)
    model.fit(fed)
    found = np.sort(model.means_[:, 0])
    np.testing.assert_allclose(found, CENTRE + np.array([-3.0, 3.0]), atol=0.3)
    report = model.privacy_
    assert report["epsilon"] <= 2.0 and report["epsilon"] == pytest.approx(2.0, rel=1e-6)
    assert report["iterations"] == 5 and math.isnan(model.lower_bound_)
    assert np.all(np.isfinite(model.covariances_))


def test_distributed_noise_reaches_its_target_with_the_allowed_dropouts():
    """Five sites, threshold 3: two drop out in the first round, and the sums that are
    released afterwards hold three sites' shares. Their noise (the released sum minus
    the survivors' clipped statistics) has the plan's variance (to what 1,872 draws tell)."""
    d = 12
    sites = [Site(rows(i, n=500, d=d), name=NAMES[i]) for i in range(5)]
    dropped = {"dov", "eli"}
    fed = Federation(
        sites,
        privacy=privacy(epsilon=1.0, d=d, radius=10.0),
        dp_iterations=12,
        threshold=3,
        drop=lambda name, request: name in dropped and request.kind == "compute",
    )
    engine = fed.engine()
    assert engine.noise_parts == 3
    params = start_params(d)
    ball = privacy(d=d).ball
    survivors = np.concatenate([rows(i, n=500, d=d) for i in range(3)])
    exact = private_stats(survivors, params, ball)
    plan = fed.manifest.privacy_plan()
    residuals = []
    for _ in range(12):
        noisy = engine.reduce("private_estep", params, ball)
        residuals.append((noisy.second_values() - exact.second_values()) / plan.sigmas["second"])
    assert set(engine.dropped) == dropped
    z = np.concatenate(residuals)  # 12 rounds × 2 components × 78 entries (upper triangles)
    # the shares' total scale is the plan's (to its grid rounding) ...
    rho = plan.iteration_rho * plan.shares["second"]
    share = SiteShare.plan(ball.radius**2, rho, 3, exact.second_values().size)
    assert share.sigma == pytest.approx(plan.sigmas["second"], rel=1e-3)
    # ... and three shares give it: a variance ≥ target (within the estimate's noise)
    assert z.size == 1872 and np.var(z) == pytest.approx(1.0, abs=0.15)


def test_site_shares_add_up_to_the_target_variance():
    """The sampler: t shares of 1e5 draws each add up to the target variance within
    2 %; more sites than the threshold only add noise."""
    share = SiteShare.plan(1.0, 0.05, parts=3, size=100_000)
    total = sum(share.add(np.zeros(100_000)) for _ in range(3))
    target = share.sigma**2
    assert np.var(total) == pytest.approx(target, rel=0.02)
    five = total + share.add(np.zeros(100_000)) + share.add(np.zeros(100_000))
    assert np.var(five) == pytest.approx(5.0 / 3.0 * target, rel=0.02)
    # each value is a whole number of grid steps: exact in the secure sum
    assert np.all(np.mod(total, share.step) == 0.0)


def test_the_distributed_accountant_is_the_gaussian_one_at_these_scales():
    moved, sigma = 2**24, 2.0**26
    central = moved**2 / (2 * sigma**2)
    for parts in (1, 3, 50):
        assert distributed_rho(moved, sigma / math.sqrt(parts), parts, 100) == pytest.approx(
            central, rel=1e-12
        )
    # with a handful of grid steps of noise, the sum pays for not being one Gaussian
    assert distributed_rho(4, 0.3, 3, 100) > 16 / (2 * 3 * 0.3**2)


# -- what a coordinator cannot do, and what a site must not hold -----------------------
def test_an_all_or_nothing_private_round_sums_every_site():
    """Each site's share is sized for a sum over all of them: a session without one of
    them is not set up, and a round over fewer (a coordinator that tries) is refused."""
    sites = [Site(rows(i), name=NAMES[i]) for i in range(4)]
    absent = Federation(
        sites,
        mode="all-or-nothing",
        privacy=privacy(),
        dp_iterations=3,
        drop=lambda name, request: name == "dov",
    )
    with pytest.raises(FederationAbort, match="dov"):
        absent.engine()
    fed = Federation(sites, absent.manifest)
    engine = fed.engine()
    engine._roster = engine._roster[:3]  # a coordinator that leaves a site out
    with pytest.raises(SiteError, match="sums every site of its manifest"):
        engine.reduce("private_estep", start_params(), privacy().ball)


def test_a_site_with_row_weights_answers_no_private_request():
    weighted = Site(rows(0), name=NAMES[0], sample_weight=np.full(4_000, 10.0))
    sites = [weighted, *(Site(rows(i), name=NAMES[i]) for i in (1, 2))]
    engine = Federation(sites, privacy=privacy(), dp_iterations=2).engine()
    with pytest.raises(SiteError, match="holds row weights"):
        engine.reduce("private_estep", start_params(), privacy().ball)
    with pytest.raises(ValueError, match="rows have weight 1"):
        Federation(sites, privacy=privacy(), dp_iterations=2, max_weight=10.0)


def test_the_noise_of_a_sum_over_more_sites_than_the_threshold_is_reported():
    """Five sites, threshold 3, none dropping out: every released sum carries five shares,
    5/3 of the planned variance; the fit reports that noise (and charges the plan's)."""
    sites = [Site(rows(i), name=NAMES[i]) for i in range(5)]
    fed = Federation(sites, privacy=privacy(), dp_iterations=2, threshold=3)
    model = distmix.GaussianMixture(2, max_iter=2, means_init=start_params().means).fit(fed)
    plan = fed.manifest.privacy_plan()
    for name, sigma in model.privacy_["noise_sigma"].items():
        assert sigma == pytest.approx(plan.sigmas[name] * math.sqrt(5 / 3), rel=1e-3), name
    assert model.privacy_["epsilon"] == pytest.approx(2.0, rel=1e-6)


def test_privacy_is_the_manifests_when_one_is_given():
    sites = [Site(rows(i), name=NAMES[i]) for i in range(3)]
    plain = Federation(sites, centre=CENTRE, radius=64.0)
    with pytest.raises(ValueError, match="with a manifest .* the budget is the manifest's"):
        Federation(sites, plain.manifest, privacy=privacy(), dp_iterations=2)
    with pytest.raises(ValueError, match="personal_weights is not supported in a private"):
        Federation(sites, privacy=privacy(), dp_iterations=2, personal_weights=True)


def test_a_served_private_site_keeps_a_ledger(tmp_path):
    from distmix.federated.deploy import run_site

    manifest = federation("distributed").manifest
    path = tmp_path / "manifest.json"
    path.write_text(manifest.to_json())
    np.save(tmp_path / "x.npy", rows(0))
    with pytest.raises(ValueError, match="--ledger is required for a site of a private"):
        run_site(str(tmp_path / "x.npy"), NAMES[0], str(path), str(tmp_path / "s.sock"))
    assert not (tmp_path / "s.sock").exists()
