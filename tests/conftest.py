"""Shared test data: seeded Gaussian-mixture datasets and starting parameters."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def cupy_or_skip():
    """CuPy, or skip the test where it or a CUDA device is missing."""
    cupy = pytest.importorskip("cupy")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no device
        pytest.skip(f"no CUDA device: {error}")
    if n_devices < 1:
        pytest.skip("no CUDA device")
    return cupy


def mixture_data(
    seed: int,
    n_rows: int = 600,
    n_features: int = 3,
    n_components: int = 3,
    separation: float = 6.0,
    shift: float = 0.0,
    dtype: type = np.float64,
) -> np.ndarray:
    """Rows drawn from a well-separated Gaussian mixture with random full covariances."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=separation, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n_rows)
    mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    mixing += np.eye(n_features)
    noise = rng.normal(size=(n_rows, n_features))
    X = centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])
    return (X + shift).astype(dtype)


def starting_params(X: np.ndarray, n_components: int, covariance_type: str, seed: int) -> dict:
    """``weights_init``/``means_init``/``precisions_init`` from a crude, seeded start.

    Means are random rows; covariances are the pooled data covariance in the
    shape of ``covariance_type``. The same dict fed to scikit-learn and distmix
    makes both run EM from identical parameters.
    """
    rng = np.random.default_rng(seed)
    n, d = X.shape
    means = X[rng.choice(n, size=n_components, replace=False)].astype(np.float64)
    cov = np.cov(X.astype(np.float64), rowvar=False).reshape(d, d) + 1e-3 * np.eye(d)
    prec = np.linalg.inv(cov)
    precisions = {
        "full": np.broadcast_to(prec, (n_components, d, d)).copy(),
        "tied": prec,
        "diag": np.broadcast_to(np.diag(prec), (n_components, d)).copy(),
        "spherical": np.full(n_components, float(np.mean(np.diag(prec)))),
    }[covariance_type]
    return {
        "weights_init": np.full(n_components, 1.0 / n_components),
        "means_init": means,
        "precisions_init": precisions,
    }


def random_covariances(
    rng: np.random.Generator, n_components: int, n_features: int, covariance_type: str
) -> np.ndarray:
    """Random well-conditioned covariances in the shape of ``covariance_type``."""
    d = n_features
    a = rng.normal(size=(n_components, d, d)) / np.sqrt(d)
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(d)
    return {
        "full": full,
        "tied": full[0],
        "diag": np.diagonal(full, axis1=1, axis2=2).copy(),
        "spherical": np.trace(full, axis1=1, axis2=2) / d,
    }[covariance_type]


@pytest.fixture(params=COVARIANCE_TYPES)
def covariance_type(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.contextmanager
def dask_processes(
    workdir: Path,
    n_workers: int = 1,
    memory_limit: str = "1GiB",
    env: dict[str, str] | None = None,
) -> Iterator[dict]:
    """A ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Each runs in its own session so that stopping it also stops a nanny's worker.
    Yields ``{"address", "scheduler_file", "process", "workers"}``.
    """
    from distributed import Client

    scheduler_file = workdir / "scheduler.json"
    common = {
        "start_new_session": True,
        "stderr": subprocess.STDOUT,
        "env": {**os.environ, **(env or {})},
        "cwd": workdir,
    }
    log = (workdir / "dask.log").open("w")
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0"]
        + ["--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=log,
        **common,
    )
    workers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start: {(workdir / 'dask.log').read_text()}")
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(n_workers):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1"]
                    + ["--nworkers", "1", "--nthreads", "1", "--no-dashboard"]
                    + ["--memory-limit", memory_limit, "--death-timeout", "30"],
                    stdout=log,
                    **common,
                )
            )
        with Client(address, timeout=60, set_as_default=False) as probe:
            probe.wait_for_workers(n_workers, timeout=60)
        yield {
            "address": address,
            "scheduler_file": scheduler_file,
            "process": scheduler,
            "workers": workers,
        }
    finally:
        for process in [*workers, scheduler]:
            stop_process_group(process)
        log.close()


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process we started and everything in its session."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@contextlib.contextmanager
def local_cluster(n_workers: int = 2, set_as_default: bool = True, **options) -> Iterator:
    """A ``distributed.LocalCluster`` of worker processes on 127.0.0.1 and its client."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=n_workers,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
            **options,
        ) as cluster,
        Client(cluster, set_as_default=set_as_default) as client,
    ):
        yield client


@pytest.fixture(scope="session")
def cluster_client() -> Iterator:
    """The suite's shared cluster: two worker processes on 127.0.0.1 (one thread each),
    started on first use and stopped at the end of the session. Not the default
    client: a test that needs it as such uses ``cluster_client.as_current()``. Tests
    that kill workers or need other memory limits start a cluster of their own."""
    with local_cluster(2, set_as_default=False) as client:
        yield client


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m distmix ARGS`` in a fresh process (warnings silenced), its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "distmix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
