"""Data stay where they are: device arrays through the estimator, blocks read onto a device.

``array_api_strict`` on its second device stands in for CuPy: NumPy refuses to
convert its arrays (``np.asarray`` raises, as it does on a CuPy array), so a
fit or a prediction that made a NumPy copy of the rows anywhere on the way
fails here. What comes back to the host goes through DLPack, explicitly: the
blocks' statistics and the rows k-means‖ draws. The kernels make every array
they create next to the block (mixing devices raises there too).

Blocks read from Zarr and ``.npy`` go to the namespace the Dask config key
``distmix.block-namespace`` names where the read runs (:mod:`distmix.devices`):
checked with ``array_api_strict`` on Dask's threads and on worker processes that
got the key from a cluster config, as ``cluster_configs/local-cuda.yaml`` gives
``cupy`` to its GPU workers.

The same tests on CuPy, and the ``local-cuda`` config end to end, run where a
CUDA device exists (``pytest -m gpu``; ``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import cupy_or_skip, mixture_data, starting_params

import distmix
from distmix.cluster import connect, load_config
from distmix.devices import BLOCK_NAMESPACE, block_namespace, to_block_namespace
from distmix.engines.factory import device_block_rows, make_engine
from distmix.sources.dataset import open_dataset
from distmix.sources.zarr_write import create_zarr_array

xps = pytest.importorskip("array_api_strict")

N_ROWS, N_FEATURES, N_COMPONENTS = 3000, 3, 3
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")
#: a device fit against a NumPy fit: the blocks run other code paths (see test_array_api.py)
RTOL = 1e-9
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return mixture_data(5, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def weights(X: np.ndarray) -> np.ndarray:
    return np.random.default_rng(5).uniform(0.0, 2.0, size=X.shape[0])


def settings(X: np.ndarray, covariance_type: str = "full", **more: Any) -> dict[str, Any]:
    return dict(
        n_components=N_COMPONENTS,
        covariance_type=covariance_type,
        tol=1e-8,
        max_iter=20,
        **starting_params(X, N_COMPONENTS, covariance_type, seed=2),
        **more,
    )


def assert_same_fit(got: distmix.GaussianMixture, want: distmix.GaussianMixture) -> None:
    assert got.n_iter_ == want.n_iter_
    for name in FITTED:
        value = getattr(got, name)
        assert type(value) is np.ndarray and value.dtype == np.float64, name
        np.testing.assert_allclose(value, getattr(want, name), rtol=RTOL, atol=0, err_msg=name)
    np.testing.assert_allclose(got.lower_bounds_, want.lower_bounds_, rtol=RTOL)


def on_other_device(a: np.ndarray) -> Any:
    return xps.asarray(a, device=xps.Device("device1"))


def host(a: Any) -> np.ndarray:
    return np.asarray(np.from_dlpack(a))


def is_strict(a: Any) -> bool:
    return type(a).__module__.startswith("array_api_strict")


# --------------------------------------------------------------------------- #
# arrays of another namespace through the estimator                            #
# --------------------------------------------------------------------------- #
def test_no_numpy_copy_of_device_rows_can_be_made(X):
    """The premise of this file: NumPy refuses the stand-in's rows, as it refuses CuPy's."""
    with pytest.raises(RuntimeError, match="device"):
        np.asarray(on_other_device(X))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_device_rows_fit_where_they_are(X, weights, covariance_type):
    """A fit of rows on the other device (with NumPy weights, copied next to them) gives
    the NumPy fit: host attributes; predictions on that device, equal to NumPy's."""
    kw = settings(X, covariance_type, block_size=700)
    want = distmix.GaussianMixture(**kw).fit(X, sample_weight=weights)
    rows = on_other_device(X)
    got = distmix.GaussianMixture(**kw).fit(rows, sample_weight=weights)
    assert_same_fit(got, want)
    for method in ("predict_proba", "score_samples"):
        out = getattr(got, method)(rows)
        assert is_strict(out) and out.device == rows.device, method
        np.testing.assert_allclose(host(out), getattr(want, method)(X), rtol=RTOL, err_msg=method)
    labels = got.predict(rows)
    assert is_strict(labels) and labels.device == rows.device
    np.testing.assert_array_equal(host(labels), want.predict(X))
    assert got.score(rows) == pytest.approx(want.score(X), rel=RTOL)


def test_device_rows_default_kmeans_start_and_weights_on_the_device(X, weights):
    """The default start (k-means‖: rows drawn by their index, Lloyd passes) runs on the
    device rows too, and weights already on the device stay there."""
    kw = dict(n_components=N_COMPONENTS, random_state=0, tol=1e-8, block_size=1000)
    want = distmix.GaussianMixture(**kw).fit(X, sample_weight=weights)
    got = distmix.GaussianMixture(**kw).fit(
        on_other_device(X), sample_weight=on_other_device(weights)
    )
    assert_same_fit(got, want)


def test_device_rows_stream_as_numpy_rows_do(X):
    """Windows of a stream over device rows are gathered on the device (``take``)."""
    kw = dict(n_components=N_COMPONENTS, block_size=500, window=2, random_state=3)
    kw.update(starting_params(X, N_COMPONENTS, "full", seed=2))
    want = distmix.fit_stream(X, **kw)
    got = distmix.fit_stream(on_other_device(X), **kw)
    assert got.n_steps_ == want.n_steps_ > 1
    for name in FITTED:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=RTOL, err_msg=name)


def test_device_rows_are_checked_in_their_namespace(X):
    rows = on_other_device(X)
    integers = make_engine(xps.astype(rows, xps.int64), n_components=N_COMPONENTS)
    assert is_strict(integers.X) and integers.X.dtype == xps.float64
    with pytest.raises(ValueError, match="Negative values in data passed to sample_weight"):
        make_engine(rows, -np.ones(N_ROWS))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(n_samples,\)"):
        make_engine(rows, np.ones(N_ROWS - 1))
    with pytest.raises(ValueError, match="must be 2-D"):
        make_engine(rows[:, 0])
    with pytest.raises(ValueError, match="a minimum of 2 is required"):
        make_engine(rows[:1, :], min_rows=2)


def test_device_rows_go_in_device_sized_blocks(X):
    """Host blocks are about 1 MiB of rows; a device's take a (K, rows, D) stack of
    128 MiB (one block here), unless block_size says otherwise."""
    rows = on_other_device(X)
    assert make_engine(rows, n_components=8).block_rows == (N_ROWS,)
    assert device_block_rows(8, 16) == 131_072
    assert make_engine(rows, block_size=1000).block_rows == (1000, 1000, 1000)


# --------------------------------------------------------------------------- #
# blocks read from storage into the configured namespace                       #
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def stored(X, tmp_path_factory) -> dict[str, str]:
    """The rows as a Zarr array (chunks of 600 rows) and as a ``.npy`` file."""
    where = tmp_path_factory.mktemp("stored")
    zarr_path, npy_path = str(where / "x.zarr"), str(where / "x.npy")
    array = create_zarr_array(zarr_path, X.shape, 600)
    array[:] = X
    np.save(npy_path, X)
    return {"zarr": zarr_path, "npy": npy_path}


def test_block_namespace_defaults_to_numpy_and_refuses_unknown_names():
    assert block_namespace() == "numpy"
    with dask.config.set({BLOCK_NAMESPACE: "jax"}):
        with pytest.raises(ValueError, match="'numpy', 'cupy', 'array_api_strict'"):
            to_block_namespace(np.zeros((2, 2)))


@pytest.mark.parametrize("kind", ["zarr", "npy"])
def test_read_blocks_go_to_the_configured_namespace(X, stored, kind):
    """Under ``distmix.block-namespace``, every block is in that namespace as its read
    task returns it; fits equal the NumPy blocks' and predictions come back to the host
    (the dask array's meta is NumPy).

    (Responsibilities, not labels: dask hands a map task with a 1-D output its block
    through ``concatenate3``, which knows CuPy but not ``array_api_strict``; the GPU
    test below predicts labels from CuPy blocks.)"""
    path = stored[kind]
    kw = settings(X, persist=False)
    with dask.config.set(scheduler="threads"):
        want = distmix.GaussianMixture(**kw).fit(path)
        with dask.config.set({BLOCK_NAMESPACE: "array_api_strict"}):
            blocks = open_dataset(path).to_delayed().ravel()
            assert all(is_strict(b) for b in dask.compute(*blocks))
            got = distmix.GaussianMixture(**kw).fit(path)
            proba = got.predict_proba(path)
            assert isinstance(proba._meta, np.ndarray)
            computed = proba.compute()
    assert_same_fit(got, want)
    assert type(computed) is np.ndarray
    np.testing.assert_allclose(computed, want.predict_proba(X), rtol=RTOL)


def test_cluster_config_gives_its_workers_the_block_namespace(X, stored):
    """The key in a config's ``dask_config`` reaches the worker processes (their nannies
    take Dask's config as the cluster starts), not the client after start-up: the workers
    read their blocks into it and the fit is the NumPy blocks' fit."""
    config = {
        "type": "local",
        "cluster": {
            "processes": True,
            "n_workers": 1,
            "threads_per_worker": 1,
            "host": LOOPBACK,
            "protocol": "tcp",
            "dashboard_address": f"{LOOPBACK}:0",
        },
        "dask_config": {BLOCK_NAMESPACE: "array_api_strict"},
    }
    kw = settings(X, persist=False)
    with dask.config.set(scheduler="threads"):
        want = distmix.GaussianMixture(**kw).fit(stored["zarr"])
    with connect(config) as client:
        assert block_namespace() == "numpy"  # the client's own config is as it was
        assert set(client.run(block_namespace).values()) == {"array_api_strict"}
        read = open_dataset(stored["zarr"]).to_delayed().ravel()
        kinds = client.compute([dask.delayed(type)(b) for b in read], sync=True)
        assert {kind.__module__.split(".")[0] for kind in kinds} == {"array_api_strict"}
        got = distmix.GaussianMixture(**kw).fit(stored["zarr"])
    assert_same_fit(got, want)


# --------------------------------------------------------------------------- #
# CuPy on a GPU                                                               #
# --------------------------------------------------------------------------- #
@pytest.fixture
def cupy() -> Any:
    return cupy_or_skip()


@pytest.mark.gpu
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_cupy_rows_fit_on_the_device(cupy, X, weights, covariance_type):
    kw = settings(X, covariance_type, block_size=700)
    want = distmix.GaussianMixture(**kw).fit(X, sample_weight=weights)
    rows = cupy.asarray(X)
    got = distmix.GaussianMixture(**kw).fit(rows, sample_weight=weights)
    assert_same_fit(got, want)
    proba = got.predict_proba(rows)
    assert isinstance(proba, cupy.ndarray) and proba.device == rows.device
    np.testing.assert_allclose(proba.get(), want.predict_proba(X), rtol=RTOL)
    labels = got.predict(rows)
    assert isinstance(labels, cupy.ndarray)
    np.testing.assert_array_equal(labels.get(), want.predict(X))


@pytest.mark.gpu
def test_dask_array_of_cupy_chunks_fits_on_the_device(cupy, X, weights):
    kw = settings(X, persist=False)
    with dask.config.set(scheduler="threads"):
        host_rows = da.from_array(X, chunks=(700, -1))
        want = distmix.GaussianMixture(**kw).fit(host_rows, sample_weight=weights)
        rows = da.from_array(X, chunks=(700, -1)).map_blocks(cupy.asarray)
        got = distmix.GaussianMixture(**kw).fit(rows, sample_weight=weights)
        labels = got.predict(rows)
        assert isinstance(labels._meta, cupy.ndarray)
        computed = labels.compute()
    assert_same_fit(got, want)
    assert isinstance(computed, cupy.ndarray)
    np.testing.assert_array_equal(computed.get(), want.predict(X))


@pytest.mark.gpu
def test_local_cuda_config_reads_blocks_onto_the_gpus(cupy, X, stored):
    """The bundled ``local-cuda`` config: one dask-cuda worker per GPU, every Zarr block
    read onto its worker's GPU, the fit equal to the NumPy blocks' fit."""
    pytest.importorskip("dask_cuda", exc_type=ImportError)
    config = load_config("local-cuda")
    options = dict(config.cluster, n_workers=1, dashboard_address=f"{LOOPBACK}:0")
    kw = settings(X, persist=False)
    with dask.config.set(scheduler="threads"):
        want = distmix.GaussianMixture(**kw).fit(stored["zarr"])
    with connect(dataclasses.replace(config, cluster=options)) as client:
        read = open_dataset(stored["zarr"]).to_delayed().ravel()
        kinds = client.compute([dask.delayed(type)(b) for b in read], sync=True)
        assert {kind.__module__.split(".")[0] for kind in kinds} == {"cupy"}
        got = distmix.GaussianMixture(**kw).fit(stored["zarr"])
        labels = got.predict(stored["zarr"]).compute()
    assert_same_fit(got, want)
    assert type(labels) is np.ndarray
    np.testing.assert_array_equal(labels, want.predict(X))
