"""Fits through a real distributed scheduler: clean graphs, same answer as in memory."""

from __future__ import annotations

import logging
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import mixture_data
from sklearn.exceptions import ConvergenceWarning

import distmix.progress
from distmix import GaussianMixture


@pytest.fixture
def client(cluster_client):
    return cluster_client


@pytest.mark.parametrize("init_params", ["kmeans", "random_from_data"])
def test_zarr_fit_on_cluster_keeps_one_task_per_key(client, tmp_path, caplog, init_params):
    """Every pass (init, E-steps, row fetches, prediction) reuses the same block
    tasks, so the scheduler never sees one key with two definitions, and the fit
    equals the in-memory one."""
    X = mixture_data(5, n_rows=3000, n_features=4, n_components=3)
    array = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(700, 4), dtype="f8")
    array[:] = X
    model = GaussianMixture(3, init_params=init_params, random_state=0, tol=1e-6)
    with caplog.at_level(logging.WARNING, logger="distributed"), client.as_current():
        model.fit(array)
        labels = model.predict(da.from_zarr(array)).compute()
        model.fit(array)  # a second fit submits the same block keys again
    assert not [r for r in caplog.records if "run_spec" in r.getMessage()]
    reference = GaussianMixture(3, init_params=init_params, random_state=0, tol=1e-6)
    reference.set_params(block_size=(700, 700, 700, 700, 200)).fit(X)
    np.testing.assert_allclose(model.means_, reference.means_, rtol=1e-10)
    np.testing.assert_allclose(model.covariances_, reference.covariances_, rtol=1e-10)
    np.testing.assert_array_equal(labels, reference.predict(X))


def test_persisted_blocks_are_released_after_the_fit(client, tmp_path):
    """persist=True keeps the blocks on the workers during the fit only."""
    X = mixture_data(6, n_rows=2000, n_features=3, n_components=2)
    array = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(250, 3), dtype="f8")
    array[:] = X
    n_tasks = lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))  # noqa: E731
    baseline = n_tasks()
    seen: list[int] = []
    model = GaussianMixture(2, random_state=0, persist=True, tol=1e-8, max_iter=5)

    class Spy(distmix.progress.ProgressReporter):
        counts_blocks = False

        def step(self, n_done, note=""):
            seen.append(n_tasks())

    with client.as_current(), warnings.catch_warnings(), distmix.progress.reporting(Spy()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(array)
    assert min(seen) >= baseline + 8  # the 8 blocks stay in memory between iterations
    deadline = time.monotonic() + 10
    while n_tasks() != baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert n_tasks() == baseline
