"""A fit's choice of block kernels: ``GaussianMixture(kernel=...)`` and ``--kernel``.

The choice travels with each block task and holds in the thread that runs the
block, whichever process that is. It is made observable with blocks the compiled
kernels refuse: ``array_api_strict`` blocks (read into that namespace on the
workers, as CuPy blocks are under ``local-cuda``) make ``kernel="compiled"`` raise
"NumPy blocks only" wherever the block runs, and ``"auto"`` fit them. On NumPy
blocks every choice gives the same fit (to 1e-10); a bad value is refused naming
the parameter, and a model file does not keep the choice (it is how a fit runs,
not what the model is).
"""

from __future__ import annotations

import subprocess
import sys
import threading

import dask
import numpy as np
import pytest
from conftest import mixture_data, starting_params

import distmix
from distmix import kernels
from distmix.devices import BLOCK_NAMESPACE
from distmix.sources.zarr_write import create_zarr_array

pytest.importorskip("numba")
pytest.importorskip("array_api_strict")

N_ROWS, N_FEATURES, N_COMPONENTS = 2400, 3, 3
LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return mixture_data(7, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def stored(X, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("kernel") / "x.zarr")
    create_zarr_array(path, X.shape, 600)[:] = X
    return path


def settings(X: np.ndarray, **more) -> dict:
    return dict(
        n_components=N_COMPONENTS,
        tol=1e-6,
        max_iter=200,
        persist=False,
        **starting_params(X, N_COMPONENTS, "full", seed=3),
        **more,
    )


def test_every_choice_gives_the_same_fit_on_numpy_blocks(X):
    fits = {
        choice: distmix.GaussianMixture(**settings(X, kernel=choice)).fit(X)
        for choice in (None, "auto", "compiled", "array-api")
    }
    want = fits["array-api"]
    for choice, got in fits.items():
        assert got.n_iter_ == want.n_iter_, choice
        np.testing.assert_allclose(got.means_, want.means_, rtol=1e-10, err_msg=str(choice))
        np.testing.assert_allclose(got.covariances_, want.covariances_, rtol=1e-10)
        np.testing.assert_allclose(got.predict_proba(X), want.predict_proba(X), atol=1e-10)


def test_a_bad_choice_is_refused_naming_the_parameter_and_the_model_is_unchanged(X):
    model = distmix.GaussianMixture(**settings(X)).fit(X)
    means = model.means_.copy()
    with pytest.raises(ValueError, match="kernel='fast' is not one of"):
        model.set_params(kernel="fast").fit(X)
    np.testing.assert_array_equal(model.means_, means)


def test_the_choice_holds_in_the_blocks_thread_only(X, stored):
    """A fit's ``kernel`` is its own: another thread's choice at the same moment is the
    process's (context-local, not an environment variable)."""
    seen = {}
    with kernels.chosen("array-api"):
        other = threading.Thread(target=lambda: seen.update(choice=kernels.kernel_choice()))
        other.start()
        other.join()
        assert kernels.kernel_choice() == "array-api"
    assert seen["choice"] == kernels.kernel_choice() == "auto"


def test_the_fits_choice_reaches_the_threads_that_run_its_blocks(X, stored):
    with dask.config.set({BLOCK_NAMESPACE: "array_api_strict", "scheduler": "threads"}):
        with pytest.raises(ValueError, match="NumPy blocks only"):
            distmix.GaussianMixture(**settings(X, kernel="compiled")).fit(stored)
        got = distmix.GaussianMixture(**settings(X, kernel="auto")).fit(stored)
    want = distmix.GaussianMixture(**settings(X)).fit(X)
    np.testing.assert_allclose(got.means_, want.means_, rtol=1e-9)


def test_the_fits_choice_reaches_worker_processes_over_their_own(X, stored):
    """Workers whose environment says ``compiled`` run a fit's blocks with the fit's
    ``auto``; with no choice of its own, the fit's blocks follow the workers'."""
    distributed = pytest.importorskip("distributed")
    with (
        dask.config.set({BLOCK_NAMESPACE: "array_api_strict"}),
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host=LOOPBACK,
            dashboard_address=":0",
            env={kernels.ENVIRONMENT: "compiled"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert set(client.run(kernels.kernel_choice).values()) == {"compiled"}
        with pytest.raises(ValueError, match="NumPy blocks only"):
            distmix.GaussianMixture(**settings(X)).fit(stored)
        got = distmix.GaussianMixture(**settings(X, kernel="auto")).fit(stored)
    want = distmix.GaussianMixture(**settings(X)).fit(X)
    np.testing.assert_allclose(got.means_, want.means_, rtol=1e-9)


def test_a_model_file_does_not_keep_the_choice(X, tmp_path):
    model = distmix.GaussianMixture(**settings(X, kernel="array-api")).fit(X)
    model.save(tmp_path / "m.npz")
    assert distmix.load(tmp_path / "m.npz").kernel is None


def test_the_command_line_takes_a_choice_and_refuses_a_bad_one(stored, tmp_path):
    out = tmp_path / "m.npz"
    common = [sys.executable, "-m", "distmix", "fit", stored, "-k", "2", "--cluster", "threads"]
    done = subprocess.run(
        [*common, "--kernel", "array-api", "--max-iter", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert distmix.load(out).n_components == 2
    bad = subprocess.run([*common, "--kernel", "fast"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--kernel" in bad.stderr and "fast" in bad.stderr
