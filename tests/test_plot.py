"""distmix.plot and ``distmix plot`` (issue 14): images are checked, not eyeballed - the
files written and their sizes, the curves' data, and that every component's ellipse
lies where its mean is, with the axes its covariance gives."""

from __future__ import annotations

import math
import struct
import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, mixture_data, run_cli

import distmix

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return mixture_data(71, n_rows=3_000, n_features=4, n_components=3, shift=20.0)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def ellipses(ax) -> list:
    return [p for p in ax.patches if isinstance(p, matplotlib.patches.Ellipse)]


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_each_ellipse_lies_at_its_mean_in_the_principal_view(rows, covariance_type):
    model = distmix.GaussianMixture(3, covariance_type=covariance_type, random_state=0)
    model.fit(rows)
    basis, origin = distmix.plot.projection(model)
    # the view: two orthonormal axes, the mixture's two largest directions of spread
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    ax = distmix.plot.components(model, rows)
    drawn = ellipses(ax)
    assert len(drawn) == 3
    expected = (model.means_ - origin) @ basis.T
    for patch, centre in zip(drawn, expected, strict=True):
        np.testing.assert_allclose(patch.center, centre, atol=1e-9)
    # the sampled rows are drawn too, in the same view
    offsets = ax.collections[0].get_offsets()
    assert offsets.shape == (3_000, 2)
    np.testing.assert_allclose(
        np.mean(offsets, axis=0), (rows.mean(0) - origin) @ basis.T, atol=1e-9
    )


def test_two_chosen_features_show_the_covariance_as_it_is():
    """A component with variances 4 and 1 along features 2 and 0: at 2 standard
    deviations its ellipse is 8 wide and 4 high, its axis along feature 2."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4_000, 3)) * np.array([1.0, 0.5, 2.0]) + 10.0
    model = distmix.GaussianMixture(1, covariance_type="diag").fit(X)
    ax = distmix.plot.components(model, features=(2, 0))
    (patch,) = ellipses(ax)
    np.testing.assert_allclose(patch.center, model.means_[0, [2, 0]])
    var = model.covariances_[0]
    assert patch.width == pytest.approx(4.0 * math.sqrt(var[2]))
    assert patch.height == pytest.approx(4.0 * math.sqrt(var[0]))
    assert patch.angle % 180.0 == pytest.approx(0.0, abs=1e-6)
    assert ax.get_xlabel() == "feature 2" and ax.get_ylabel() == "feature 0"
    with pytest.raises(ValueError, match="two different feature indices in \\[0, 3\\)"):
        distmix.plot.components(model, features=(0, 3))


def test_rows_may_be_a_dask_array_and_must_have_the_models_features(rows):
    model = distmix.GaussianMixture(3, random_state=0).fit(rows)
    ax = distmix.plot.components(model, da.from_array(rows, chunks=700), sample=500)
    assert ax.collections[0].get_offsets().shape == (500, 2)
    with pytest.raises(ValueError, match="X has 2 features, the model 4"):
        distmix.plot.components(model, rows[:, :2])


def test_convergence_draws_the_history(rows):
    model = distmix.GaussianMixture(3, random_state=0, tol=1e-6).fit(rows)
    ax = distmix.plot.convergence(model)
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), model.lower_bounds_)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, model.n_iter_ + 1))


def test_convergence_of_a_stream_draws_its_updates_and_held_out_rows(rows):
    model = distmix.GaussianMixture(3, random_state=0, block_size=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distmix.fit_stream(rows, model, validation=rows[:500], report_every=2)
    ax = distmix.plot.convergence(model)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["batch", "running", "held-out"]
    running = ax.get_lines()[1]
    np.testing.assert_array_equal(
        running.get_ydata(), [r["running_log_likelihood"] for r in model.stream_history_]
    )


def test_a_private_model_has_no_convergence_to_draw(rows):
    pytest.importorskip("opendp")
    privacy = distmix.Privacy(epsilon=5.0, delta=1e-6, clip_radius=30.0, centre=np.full(4, 20.0))
    model = distmix.GaussianMixture(3, max_iter=2, privacy=privacy).fit(rows)
    with pytest.raises(ValueError, match="a private fit releases no log-likelihood"):
        distmix.plot.convergence(model)
    fig = distmix.plot.figure(model, rows)  # its components alone
    assert len(fig.axes) == 1 and len(ellipses(fig.axes[0])) == 3


def test_an_unfitted_model_is_named():
    with pytest.raises(ValueError, match="GaussianMixture is not fitted"):
        distmix.plot.components(distmix.GaussianMixture(2))


def test_the_command_writes_the_image(rows, tmp_path):
    model = distmix.GaussianMixture(3, random_state=0).fit(rows)
    model.save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", rows)
    out = tmp_path / "fig.png"
    result = run_cli("plot", tmp_path / "m.npz", tmp_path / "x.npy", "--out", out, "--dpi", "50")
    assert result.returncode == 0, result.stderr
    assert png_size(out) == (550, 200)  # 11 × 4 inches at 50 dpi: two panels
    again = run_cli("plot", tmp_path / "m.npz", "--out", out)
    assert again.returncode == 2 and "already exists; pass --overwrite" in again.stderr
    svg = tmp_path / "fig.svg"
    chosen = run_cli("plot", tmp_path / "m.npz", "--out", svg, "--features", "1,3")
    assert chosen.returncode == 0, chosen.stderr
    assert svg.read_text().lstrip().startswith("<?xml")
    bad = run_cli("plot", tmp_path / "m.npz", "--out", tmp_path / "f.png", "--features", "1,9")
    assert bad.returncode == 2 and "--features must be two different" in bad.stderr
    assert not (tmp_path / "f.png").exists()
