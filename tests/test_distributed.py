"""Fits through a real distributed scheduler: clean graphs, same answer as in memory."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import mixture_data

from distmix import GaussianMixture


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


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
