"""A stream's warm-up (``warmup_rows``): batch EM on its first rows, then stepwise EM.

What must hold: the warm-up is exactly batch EM on the rows of the batches
that hold ``warmup_rows`` (a stream whose warm-up holds every row is batch EM);
it counts as those batches' updates; it is what carries one pass from a poor
start to batch EM's optimum, on the cases of ``benchmarks/bench_stream_panel.py``
that failed without it (here at a small size); resuming a checkpoint after it
gives the uninterrupted model; bad values are refused by name.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import mixture_data

import distmix
import distmix.online
from distmix import GaussianMixture, fit_stream
from distmix.datasets import random_mixture, sample_rows
from distmix.selection import n_parameters
from distmix.sources.zarr_write import create_zarr_array

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def poor_start_case(separation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20,000 × 6 rows of a K = 4 mixture, held-out rows, and means at 4 random rows."""
    mixture = random_mixture(6, 4, 0, separation=separation)
    X = sample_rows(mixture, 0, 20_000, 1, chunk_rows=65536)
    held = sample_rows(mixture, 0, 10_000, 2, chunk_rows=65536)
    means = X[np.random.default_rng(3).choice(len(X), size=4, replace=False)]
    return X, held, means


@pytest.mark.parametrize(
    ("separation", "covariance_type", "batch_rows"),
    [
        (8.0, "full", 200),  # 1 % batches: the first updates' covariances from ~50 rows each
        (2.5, "full", 200),
        (2.5, "full", 2000),  # 10 % batches: 10 updates where batch EM needs ~100 iterations
        (2.5, "diag", 2000),
    ],
)
def test_one_pass_from_a_poor_start_reaches_batch_em(separation, covariance_type, batch_rows):
    """Cases where one stepwise pass from a poor start ended 0.1-0.4 nats/row below
    batch EM; with the default warm-up, within 0.02."""
    X, held, means = poor_start_case(separation)
    settings = dict(covariance_type=covariance_type, means_init=means, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = GaussianMixture(4, tol=1e-6, max_iter=500, **settings).fit(X)
    assert batch.n_iter_ > 20  # a start batch EM needs many iterations from
    gaps = {}
    for warmup in (0, "auto"):
        model = GaussianMixture(4, block_size=batch_rows, warmup_rows=warmup, **settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_stream(X, model, n_passes=1, window=1)
        assert model.n_steps_ == len(X) // batch_rows
        gaps[warmup] = batch.score(held) - model.score(held)
    assert gaps[0] > 0.05, gaps  # the case is hard without the warm-up...
    assert abs(gaps["auto"]) <= 0.02, gaps  # ...and held with it


def test_the_warm_up_keeps_the_end_that_fits_its_rows_best(monkeypatch):
    """EM on the warm-up's rows from the start made on them is the first candidate; EM
    from starts made on each third of them are the others. With the thirds, the
    warm-up ends at least as high on its rows as with one "third" (the whole), and from
    a start where a third's EM finds a far better optimum, higher (seeded: the same run
    every time)."""
    mixture = random_mixture(6, 4, 0, separation=8.0)
    X = sample_rows(mixture, 0, 20_000, 1, chunk_rows=65536)
    opts = dict(block_size=200, window=1, shuffle=False, warmup_rows=6000, random_state=0)
    gains = {}
    for seed in (4, 5, 6):
        means = X[np.random.default_rng(seed).choice(len(X), size=4, replace=False)]
        ends = []
        for samples in (3, 1):
            monkeypatch.setattr(distmix.online, "WARMUP_SAMPLES", samples)
            model = fit_stream(X, n_components=4, means_init=means, **opts)
            assert model.stream_history_[0]["n_samples_seen"] == 6000
            ends.append(model.stream_history_[0]["batch_log_likelihood"])
        gains[seed] = ends[0] - ends[1]
    assert min(gains.values()) >= -5e-3, gains  # as high, to EM's tolerance...
    assert gains[4] > 0.5, gains  # ...and here a third's start found a far better optimum


def test_a_third_that_cannot_be_fitted_alone_is_no_candidate():
    """Rows of weight 0 filling the warm-up's first third, or thirds with fewer rows
    than components for k-means: the stream goes on with the other candidates."""
    X = mixture_data(9, n_rows=3000, n_features=2, n_components=3)
    weights = np.ones(len(X))
    weights[:200] = 0.0
    opts = dict(n_components=3, block_size=100, window=1, shuffle=False, random_state=0)
    weighted = fit_stream(X, sample_weight=weights, warmup_rows=600, **opts)
    assert weighted.stream_history_[0]["n_steps"] == 6 and weighted.n_steps_ == 30
    assert np.all(np.isfinite(weighted.means_))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 components on 9 rows: some may go empty
        few = fit_stream(X[:9], n_components=4, block_size=3, window=1, warmup_rows=9)
    assert few.n_steps_ == 3 and np.all(np.isfinite(few.means_))


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_a_warm_up_over_every_row_is_batch_em(covariance_type):
    """(Well separated, from a start near the components: no third's start does better.)"""
    X = mixture_data(4, n_rows=3000, n_features=3, n_components=3)
    means = X[[0, 1000, 2000]]
    settings = dict(covariance_type=covariance_type, means_init=means, tol=1e-4, max_iter=50)
    batch = GaussianMixture(3, **settings).fit(X)
    stream = fit_stream(X, n_components=3, block_size=300, window=1, warmup_rows=len(X), **settings)
    # the ten blocks are one update that counts as ten
    assert stream.n_steps_ == 10 and len(stream.stream_history_) == 1
    assert stream.n_samples_seen_ == len(X)
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(stream, name), getattr(batch, name), rtol=1e-9, atol=1e-9, err_msg=name
        )


def test_the_warm_up_holds_the_first_batches_with_its_rows():
    X = mixture_data(5, n_rows=4000, n_features=2, n_components=2)
    auto = 60 * n_parameters(2, 2, "diag")  # 60 rows per free parameter: 540
    assert auto == 540
    for warmup, first in ((0, 1), (1, 1), (100, 1), (101, 2), ("auto", 6), (4000, 40)):
        model = fit_stream(
            X, n_components=2, covariance_type="diag", block_size=100, window=1, warmup_rows=warmup,
            random_state=1, max_iter=5,
        )  # fmt: skip
        history = model.stream_history_
        assert history[0]["n_steps"] == first and history[0]["n_samples_seen"] == 100 * first
        assert [h["n_steps"] for h in history] == list(range(first, 41)), warmup
        assert model.n_steps_ == 40


def test_warmed_up_stream_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    X = mixture_data(6, n_rows=4000, n_features=3, n_components=3)
    opts = dict(n_components=3, block_size=250, window=1, random_state=2)
    whole = fit_stream(X, **opts)

    class Stop(Exception):
        pass

    def stop_after(limit):
        def callback(record):
            if record.n_steps >= limit:
                raise Stop

        return callback

    path = tmp_path / "stream.ckpt"
    warm = -(-60 * n_parameters(3, 3, "full") // 250)
    with pytest.raises(Stop):  # stopped right after the warm-up's update
        fit_stream(X, checkpoint=path, callback=stop_after(warm), report_every=1, **opts)
    resumed = fit_stream(X, checkpoint=path, resume=True, **opts)
    assert resumed.n_steps_ == whole.n_steps_ == 16
    for name in FITTED:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))


@pytest.mark.parametrize("bad", [-1, 2.5, "big", True, None])
def test_bad_warmup_rows_are_refused_by_name(bad):
    X = mixture_data(7, n_rows=500, n_features=2, n_components=2)
    with pytest.raises(ValueError, match="warmup_rows must be 'auto' or an integer >= 0"):
        fit_stream(X, n_components=2, warmup_rows=bad)


def test_the_command_line_takes_warmup_rows(tmp_path):
    X = mixture_data(8, n_rows=2000, n_features=2, n_components=2)
    create_zarr_array(str(tmp_path / "x.zarr"), X.shape, chunks=(100, 2))[:] = X
    out = tmp_path / "m.npz"
    command = [sys.executable, "-m", "distmix", "fit", str(tmp_path / "x.zarr"), "--stream"]
    run = subprocess.run(
        [*command, "--components", "2", "--window", "1", "--warmup-rows", "400",
         "--random-state", "0", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    model = distmix.load(out)
    assert model.warmup_rows == 400 and model.stream_history_[0]["n_steps"] == 4
    bad = subprocess.run(
        [*command, "--components", "2", "--warmup-rows", "lots", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--warmup-rows" in bad.stderr and "lots" in bad.stderr
