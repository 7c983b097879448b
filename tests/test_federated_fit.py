"""Federated fits equal pooled fits: three in-process sites, every covariance type.

What the issue asks of the numbers: the federated fit of sites of unequal
sizes and block sizes equals the fit of all their rows in one place (same
iterations, parameters within 1e-12 relative); the order in which sites
answer changes nothing, bit for bit; a decoded secure sum is exactly
``math.fsum`` of the sites' own statistics. And the start moves no row.
"""

from __future__ import annotations

import math
import random

import dask.array as da
import numpy as np
import pytest
import zarr

from distmix import GaussianMixture
from distmix.engines.local import LocalEngine
from distmix.federated import Federation, Site, wire
from distmix.init import initial_params
from distmix.params import Params
from distmix.tasks import ROW_MOVING_TASKS, TaskRefusedError

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
SIZES = (400, 1000, 250)
BLOCKS = (64, 300, None)  # each site cuts its rows its own way
OFFSET = 100.0


def site_rows(seed: int, n: int) -> np.ndarray:
    """Rows of a three-component mixture in 3-D, 100 from the origin."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 6.0, 6.0]])
    labels = rng.integers(3, size=n)
    scales = np.array([1.0, 0.6, 1.4])[labels, None]
    return centres[labels] + scales * rng.normal(size=(n, 3)) + OFFSET


ROWS = [site_rows(10 + i, n) for i, n in enumerate(SIZES)]
POOLED = np.concatenate(ROWS)


def federation(**kwargs) -> Federation:
    sites = [
        Site(rows, name, block_size=block)
        for rows, name, block in zip(ROWS, ("lab", "clinic", "hospital"), BLOCKS, strict=True)
    ]
    return Federation(sites, **kwargs)


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def model(covariance_type: str) -> GaussianMixture:
    return GaussianMixture(
        3, covariance_type=covariance_type, init_params="moments", random_state=3, tol=1e-10
    )


@pytest.mark.parametrize("mode", ["threshold", "all-or-nothing"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_federated_fit_equals_the_pooled_fit(covariance_type, mode):
    fed = model(covariance_type).fit(federation(mode=mode))
    pooled = model(covariance_type).fit(POOLED)
    assert fed.n_iter_ == pooled.n_iter_ and fed.converged_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        gap = relative_gap(getattr(fed, name), getattr(pooled, name))
        assert gap <= 1e-12, f"{name}: {gap:.3g}"
    assert math.isclose(fed.lower_bound_, pooled.lower_bound_, rel_tol=1e-12)
    # and the fit is a fit: the three components are found
    assert np.allclose(np.sort(fed.weights_), np.sort(pooled.weights_), atol=0)
    assert fed.score(federation(mode=mode)) == pytest.approx(pooled.score(POOLED), rel=1e-12)


def test_twenty_arrival_orders_give_bit_identical_parameters():
    fits = []
    for seed in range(20):
        rng = random.Random(seed)

        def arrival(names, rng=rng):
            names = list(names)
            rng.shuffle(names)
            return names

        fits.append(model("full").fit(federation(arrival=arrival)))
    first = fits[0]
    for other in fits[1:]:
        assert other.n_iter_ == first.n_iter_
        for name in ("weights_", "means_", "covariances_"):
            np.testing.assert_array_equal(getattr(other, name), getattr(first, name))


@pytest.mark.parametrize("task", ["estep", "kmeans", "log_likelihood", "nearest_weight"])
def test_a_decoded_secure_sum_is_fsum_of_the_sites_statistics(task):
    """Exactly: every value of the decoded sum is math.fsum of the three sites' values."""
    rng = np.random.default_rng(5)
    means = POOLED[rng.choice(POOLED.shape[0], 3, replace=False)]
    params = Params.from_covariances(
        np.array([0.2, 0.3, 0.5]), means, np.stack([np.eye(3)] * 3), "full"
    )
    args = {
        "estep": (params,),
        "log_likelihood": (params,),
        "kmeans": (means, means[0], "full"),
        "nearest_weight": (means, means[0]),
    }[task]
    fed = federation()
    got = wire.values(fed.engine().reduce(task, *args))
    per_site = [
        wire.values(site.engine.reduce(task, *args)) for site in fed.transport.sites.values()
    ]
    want = np.array([math.fsum(column) for column in zip(*per_site, strict=True)])
    np.testing.assert_array_equal(got, want)


def test_row_weights_stay_at_the_sites():
    rng = np.random.default_rng(8)
    weights = [rng.uniform(0.0, 1.0, size=n) for n in SIZES]
    sites = [
        Site(r, f"s{i}", sample_weight=w)
        for i, (r, w) in enumerate(zip(ROWS, weights, strict=True))
    ]
    fed = model("diag").fit(Federation(sites))
    pooled = model("diag").fit(POOLED, sample_weight=np.concatenate(weights))
    assert fed.n_iter_ == pooled.n_iter_
    assert relative_gap(fed.means_, pooled.means_) <= 1e-12
    assert relative_gap(fed.covariances_, pooled.covariances_) <= 1e-12
    with pytest.raises(ValueError, match="sample_weight cannot be given for a Federation"):
        model("diag").fit(federation(), sample_weight=np.ones(sum(SIZES)))


def test_starts_that_need_rows_are_refused_and_the_message_lists_what_works():
    for init in ("kmeans", "k-means++", "random", "random_from_data"):
        with pytest.raises(ValueError, match="init_params='moments', or give means_init"):
            GaussianMixture(3, init_params=init).fit(federation())


def test_user_means_start_a_federated_fit_as_they_start_a_pooled_one():
    """With means_init, the start is the hard assignment of the rows to those means,
    on the federation as on one engine that refuses to move rows."""
    means = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 6.0, 6.0]]) + OFFSET + 0.3
    fed = federation().engine()
    local = LocalEngine(POOLED, refused_tasks=ROW_MOVING_TASKS)
    a = initial_params(fed, "kmeans", 3, "full", 1e-6, 0, means_init=means)
    b = initial_params(local, "kmeans", 3, "full", 1e-6, 0, means_init=means)
    np.testing.assert_array_equal(a.means, means)
    assert relative_gap(a.covariances, b.covariances) <= 1e-12
    assert relative_gap(a.weights, b.weights) <= 1e-12
    fitted = GaussianMixture(3, means_init=means, random_state=0).fit(federation())
    assert fitted.converged_


def test_predictions_are_refused_on_a_federation():
    fitted = model("full").fit(POOLED)
    with pytest.raises(TaskRefusedError, match="'predict'"):
        fitted.predict(federation())


def test_the_moments_start_fits_ordinary_data_too():
    """``init_params="moments"`` on an in-memory array finds the three components."""
    moments = GaussianMixture(3, init_params="moments", random_state=0).fit(POOLED)
    kmeans = GaussianMixture(3, init_params="kmeans", random_state=0).fit(POOLED)
    assert moments.score(POOLED) == pytest.approx(kmeans.score(POOLED), abs=1e-6)
    order = np.argsort(moments.means_[:, 0] + 10 * moments.means_[:, 1])
    order_k = np.argsort(kmeans.means_[:, 0] + 10 * kmeans.means_[:, 1])
    np.testing.assert_allclose(moments.means_[order], kmeans.means_[order_k], atol=1e-6)


def test_sites_hold_zarr_and_dask_data(tmp_path):
    """A site reads its rows where they are: a Zarr array on disk, a dask array, NumPy."""
    store = zarr.open_array(tmp_path / "lab.zarr", mode="w", shape=ROWS[0].shape, chunks=(128, 3))
    store[:] = ROWS[0]
    sites = [
        Site(str(tmp_path / "lab.zarr"), "lab"),
        Site(da.from_array(ROWS[1], chunks=(256, 3)), "clinic"),
        Site(ROWS[2], "hospital"),
    ]
    fed = model("full").fit(Federation(sites))
    pooled = model("full").fit(POOLED)
    assert fed.n_iter_ == pooled.n_iter_
    assert relative_gap(fed.means_, pooled.means_) <= 1e-12
    assert relative_gap(fed.covariances_, pooled.covariances_) <= 1e-12
