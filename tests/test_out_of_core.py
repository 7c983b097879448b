"""A Zarr dataset four times larger than the workers' memory, fitted on a real cluster.

Scaled to run in well under a minute; ``benchmarks/bench_out_of_core.py`` runs the same
check at full size (≥ 8 GiB on disk against 2 × 1 GiB workers).
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np
import psutil
import pytest
from conftest import local_cluster, starting_params
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.sources.zarr_write import create_zarr_array

pytestmark = pytest.mark.slow

WORKERS = 2
MEMORY_LIMIT = 400 * 2**20
N_FEATURES, N_COMPONENTS, CHUNK_ROWS = 32, 2, 25_000


def _write_dataset(path, n_rows: int) -> np.ndarray:
    """Rows of a 2-component mixture, written chunk by chunk; returns a 10,000-row sample."""
    array = create_zarr_array(str(path), (n_rows, N_FEATURES), CHUNK_ROWS)
    centres = np.stack([np.zeros(N_FEATURES), np.full(N_FEATURES, 3.0)])
    for start in range(0, n_rows, CHUNK_ROWS):
        rng = np.random.default_rng([7, start])
        n = min(CHUNK_ROWS, n_rows - start)
        array[start : start + n] = centres[rng.integers(2, size=n)] + rng.standard_normal(
            (n, N_FEATURES)
        )
    return np.asarray(array[:10_000])


def test_fit_four_times_larger_than_worker_memory(tmp_path):
    n_rows = int(4.05 * WORKERS * MEMORY_LIMIT / (8 * N_FEATURES)) // CHUNK_ROWS * CHUNK_ROWS
    path = tmp_path / "big.zarr"
    sample = _write_dataset(path, n_rows)
    on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert on_disk >= 4 * WORKERS * MEMORY_LIMIT

    settings = dict(
        n_components=N_COMPONENTS,
        tol=0.0,
        max_iter=2,
        persist="auto",
        **starting_params(sample, N_COMPONENTS, "full", seed=1),
    )
    peak: dict[int, int] = {}
    with local_cluster(WORKERS, memory_limit=MEMORY_LIMIT) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pids = client.run(os.getpid)
        done = threading.Event()

        def sample_memory():
            while not done.is_set():
                for pid in pids.values():
                    try:
                        peak[pid] = max(peak.get(pid, 0), psutil.Process(pid).memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
                time.sleep(0.02)

        sampler = threading.Thread(target=sample_memory, daemon=True)
        sampler.start()
        try:
            model = distmix.GaussianMixture(**settings).fit(str(path))
        finally:
            done.set()
            sampler.join()
        assert client.run(os.getpid) == pids, "a worker was restarted (killed for memory?)"
        spilled = client.run(
            lambda dask_worker: (
                int(getattr(dask_worker.data, "spilled_total", {}).get("disk", 0))
                if hasattr(getattr(dask_worker.data, "spilled_total", None), "get")
                else len(getattr(dask_worker.data, "slow", {}))
            )
        )
    print(
        f"{on_disk / 2**30:.2f} GiB on disk, {WORKERS} workers × {MEMORY_LIMIT / 2**20:.0f} MiB; "
        f"peak worker RSS {[f'{v / 2**20:.0f} MiB' for v in peak.values()]}"
    )
    assert len(peak) == WORKERS and max(peak.values()) < MEMORY_LIMIT
    assert not any(spilled.values()), f"workers spilled to disk: {spilled}"
    assert model.n_iter_ == 2

    # the same rows, in this process, block by block over the same Zarr chunks
    import zarr

    rows = np.asarray(zarr.open_array(str(path), mode="r")[:])
    blocks = (CHUNK_ROWS,) * (n_rows // CHUNK_ROWS)
    reference = distmix.GaussianMixture(**{**settings, "block_size": blocks})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference.fit(rows)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(model, name), getattr(reference, name), rtol=1e-10)
