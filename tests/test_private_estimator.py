"""GaussianMixture(privacy=distmix.Privacy(...)): a private fit through the estimator
(issue 13). What it releases, what it refuses, and that a refused call changes nothing."""

from __future__ import annotations

import copy
import math

import dask.array as da
import numpy as np
import pytest
from sklearn.base import clone

import distmix
from distmix import GaussianMixture, Privacy


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    rng = np.random.default_rng(5)
    centres = np.array([[-6.0, 0.0], [6.0, 0.0]]) + 100.0
    labels = rng.integers(2, size=30_000)
    return centres[labels] + rng.normal(size=(30_000, 2))


def privacy(**kw) -> Privacy:
    options = dict(epsilon=50.0, delta=1e-6, clip_radius=12.0, centre=[100.0, 100.0])
    return Privacy(**{**options, **kw})


def state(model) -> dict:
    return copy.deepcopy({k: v for k, v in vars(model).items()})


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_a_private_fit_finds_the_components_and_reports_its_budget(rows, kind):
    X = rows if kind == "numpy" else da.from_array(rows, chunks=(5_000, 2))
    model = GaussianMixture(
        2,
        max_iter=15,
        means_init=[[95.0, 100.0], [105.0, 101.0]],
        privacy=privacy(),
        random_state=0,
    ).fit(X)
    np.testing.assert_allclose(np.sort(model.means_[:, 0]), [94.0, 106.0], atol=0.1)
    assert model.n_iter_ == 15 and model.converged_ is False
    assert math.isnan(model.lower_bound_) and model.lower_bounds_ == []
    report = model.privacy_
    assert report["epsilon"] <= 50.0 * (1 + 1e-9) and report["epsilon"] > 49.0
    assert report["releases"] == 15 and report["clip_radius"] == 12.0
    assert set(report["noise_sigma"]) == {"resp_sum", "x_sum", "second"}
    assert model.predict(rows[:5]).shape == (5,)  # the usual surface works on a private model


def test_averaging_the_last_releases_divides_the_noise(rows):
    """Eight noisy iterations from a start at the components: the means of fits that
    average all eight releases' statistics scatter about the clipped truth less than
    those that keep the last alone (variance / 8 in theory; asserted: / 2), and the
    report says how many were averaged (default: the last half)."""
    start = [[94.0, 100.0], [106.0, 100.0]]
    errors: dict[int, list[float]] = {1: [], 8: []}
    # the clipped fit, without noise to speak of
    exact = privacy(epsilon=1e4, average_last=1)
    X = rows[:10_000]
    reference = GaussianMixture(2, max_iter=8, means_init=start, privacy=exact).fit(X).means_
    for m in errors:
        for seed in range(10):
            model = GaussianMixture(
                2,
                max_iter=8,
                means_init=start,
                privacy=privacy(epsilon=0.5, average_last=m),
                random_state=seed,
            ).fit(X)
            assert model.privacy_["averaged_last"] == m
            errors[m].append(float(np.sum((model.means_ - reference) ** 2)))
    assert np.mean(errors[8]) < np.mean(errors[1]) / 2
    # by default: the releases that agree within their noise; from a start at the
    # components that is all of them or nearly, from a start far off fewer
    near = GaussianMixture(2, max_iter=8, means_init=start, privacy=privacy(epsilon=0.5))
    assert near.fit(X).privacy_["averaged_last"] >= 6
    far = GaussianMixture(2, max_iter=8, means_init=[[99.0, 95.0], [101.0, 105.0]])
    far.set_params(privacy=privacy(epsilon=20.0)).fit(X)
    assert 1 <= far.privacy_["averaged_last"] <= 6
    with pytest.raises(ValueError, match="average_last must be a positive integer"):
        privacy(average_last=0)


def test_a_data_free_start_and_the_settings_round_trip(rows):
    """Without means_init the start comes from random_state alone; the estimator clones."""
    model = GaussianMixture(2, max_iter=5, privacy=privacy(epsilon=5.0), random_state=3)
    twin = clone(model)
    assert twin.privacy is not model.privacy
    np.testing.assert_array_equal(twin.privacy.centre, model.privacy.centre)
    model.fit(rows[:2000])
    assert np.all(np.isfinite(model.means_))
    assert np.all(np.linalg.norm(model.means_ - 100.0, axis=1) <= 12.0 * (1 + 1e-9))


@pytest.mark.parametrize(
    ("settings", "call", "message"),
    [
        ({"n_init": 2}, "fit", "runs one start, got n_init=2"),
        ({"max_iter": 0}, "fit", "needs max_iter >= 1"),
        ({"checkpoint": "c.npz"}, "fit", "checkpoint= is not supported"),
        ({}, "weights", "takes no sample_weight"),
        ({"privacy": privacy(centre=[0.0, 0.0, 0.0])}, "fit", "3 features but X has 2"),
        ({}, "partial_fit", "partial_fit is not supported for private fits"),
        ({}, "fit_stream", "fit_stream is not supported for private fits"),
    ],
)
def test_what_a_private_fit_refuses_leaves_the_model_as_it_was(rows, settings, call, message):
    model = GaussianMixture(2, max_iter=3, privacy=privacy(), random_state=0).fit(rows[:1000])
    model.set_params(**settings)
    before = state(model)
    with pytest.raises(ValueError, match=message):
        if call == "fit":
            model.fit(rows[:1000])
        elif call == "weights":
            model.fit(rows[:1000], sample_weight=np.ones(1000))
        elif call == "partial_fit":
            model.partial_fit(rows[:1000])
        else:
            distmix.fit_stream(rows[:1000], model)
    after = state(model)
    assert after.keys() == before.keys()
    np.testing.assert_array_equal(after["means_"], before["means_"])


def test_a_private_model_is_saved_with_its_settings_and_its_report(rows, tmp_path):
    shares = {"resp_sum": 1.0, "x_sum": 1.0, "second": 2.0}
    model = GaussianMixture(
        2, max_iter=2, privacy=privacy(noise_shares=shares, min_count=3.0), random_state=0
    ).fit(rows[:500])
    model.save(tmp_path / "m.npz")
    loaded = distmix.load(tmp_path / "m.npz")
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    assert loaded.privacy_ == model.privacy_
    assert loaded.privacy_["clip_centre"] == [100.0, 100.0]
    assert loaded.privacy.record() == model.privacy.record()
    assert loaded.privacy.noise_shares == shares and loaded.privacy.min_count == 3.0
    assert loaded.lower_bounds_ == [] and math.isnan(loaded.lower_bound_)
    assert not loaded.converged_ and loaded.n_iter_ == 2
    # the loaded model's fit is private again, with the same settings
    again = loaded.fit(rows[:500])
    assert again.privacy_["epsilon_budget"] == 50.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.pop("privacy_report"), "lower_bounds does not hold"),
        (lambda meta: meta["privacy_report"].pop("epsilon"), "privacy_report is not a record"),
        (lambda meta: meta["privacy_report"].update(rho="a lot"), "privacy_report is not"),
        (
            lambda meta: meta["estimator_params"]["privacy"].update(clip_radius=10**400),
            "invalid privacy settings",
        ),
        (
            lambda meta: meta["estimator_params"]["privacy"].pop("centre"),
            "invalid privacy settings",
        ),
    ],
)
def test_a_tampered_private_model_file_is_refused_naming_it(rows, tmp_path, change, message):
    from distmix.persist import ModelFileError, read_archive, write_archive

    path = tmp_path / "m.npz"
    GaussianMixture(2, max_iter=2, privacy=privacy(), random_state=0).fit(rows[:500]).save(path)
    meta, arrays = read_archive(path, "distmix-model")
    change(meta)
    write_archive(path, meta, arrays)
    with pytest.raises(ModelFileError, match=message):
        distmix.load(path)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"epsilon": 0.0}, ValueError, "epsilon must be finite and > 0"),
        ({"delta": 1.0}, ValueError, r"delta must be in \(0, 1\)"),
        ({"clip_radius": -1.0}, ValueError, "clipping radius must be finite and > 0"),
        ({"centre": [np.nan, 1.0]}, ValueError, "clipping centre contains NaN"),
        ({"noise_shares": {"x_sum": 1.0}}, ValueError, "must name exactly"),
        ({"min_count": 0.0}, ValueError, "min_count must be finite and > 0"),
        ({"clip_radius": None}, ValueError, "needs clip_radius: the public ball .* never derives"),
        ({"centre": None}, ValueError, "needs centre: the public ball"),
    ],
)
def test_bad_privacy_settings_are_refused_naming_them(kwargs, error, message):
    with pytest.raises(error, match=message):
        privacy(**kwargs)


def test_privacy_must_be_a_privacy(rows):
    with pytest.raises(TypeError, match="privacy must be a distmix.Privacy or None, got dict"):
        GaussianMixture(2, privacy={"epsilon": 1.0}).fit(rows[:100])
