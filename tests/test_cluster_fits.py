"""Fits on real Dask clusters under stress: a worker killed mid-fit, and a long fit that
must leave nothing behind on the scheduler."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import psutil
import pytest
import zarr
from conftest import dask_processes, local_cluster, mixture_data, starting_params
from sklearn.exceptions import ConvergenceWarning

import distmix

pytestmark = pytest.mark.slow


def _zarr(path: Path, X: np.ndarray, chunk_rows: int) -> str:
    array = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="f8")
    array[:] = X
    return str(path)


class _AfterIteration(distmix.progress.ProgressReporter):
    """Calls ``hook(n_iter)`` after every EM iteration of a fit (one run: n_init=1)."""

    counts_blocks = False  # no watching of the scheduler's tasks

    def __init__(self, hook) -> None:
        self.hook = hook
        self.last = 0

    def step(self, n_done: int, note: str = "") -> None:
        # the end of a run is a step too (to n_init * max_iter): the same count again
        # after a run of max_iter iterations
        if n_done != self.last:
            self.last = n_done
            self.hook(n_done)


def _after_iteration(hook):
    """Within this block, ``hook(n_iter)`` runs after every EM iteration."""
    return distmix.progress.reporting(_AfterIteration(hook))


def test_worker_killed_mid_fit_gives_the_no_fault_result(tmp_path):
    X = mixture_data(21, n_rows=40_000, n_features=4, n_components=3, separation=2.0)
    path = _zarr(tmp_path / "x.zarr", X, chunk_rows=2_000)
    settings = dict(n_components=3, tol=0.0, max_iter=10, **starting_params(X, 3, "full", seed=2))
    with local_cluster(2) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reference = distmix.GaussianMixture(**settings).fit(da.from_zarr(path))
        pids = client.run(os.getpid)
        victim_address, victim_pid = sorted(pids.items())[0]
        killed = threading.Event()

        def kill_soon(n_iter):
            if n_iter == 2:  # iteration 3 starts right away: kill during it
                timer = threading.Timer(
                    0.02, lambda: (os.kill(victim_pid, signal.SIGKILL), killed.set())
                )
                timer.start()

        model = distmix.GaussianMixture(**settings)
        with _after_iteration(kill_soon):
            model.fit(da.from_zarr(path))
        assert killed.wait(5)
        assert not psutil.pid_exists(victim_pid) or psutil.Process(victim_pid).status() == "zombie"
        assert (
            victim_address not in client.run(os.getpid)
            or client.run(os.getpid)[victim_address] != victim_pid
        )
    assert model.n_iter_ == reference.n_iter_ == 10
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(model, name), getattr(reference, name), rtol=1e-12, atol=0
        )


# The scheduler keeps some bounded diagnostics (computations, transition and task-stream
# logs) that fill up over the first thousands of tasks; keep them short so that what the
# memory test sees is growth that is not bounded.
SHORT_SCHEDULER_LOGS = {
    "DASK_DISTRIBUTED__DIAGNOSTICS__COMPUTATIONS__MAX_HISTORY": "5",
    "DASK_DISTRIBUTED__ADMIN__LOW_LEVEL_LOG_LENGTH": "100",
    "DASK_DISTRIBUTED__ADMIN__LOG_LENGTH": "100",
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TASKS__TASK_STREAM_LENGTH": "100",
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__STATUS__TASK_STREAM_LENGTH": "100",
}


@pytest.fixture
def scheduler_process(tmp_path):
    with dask_processes(tmp_path, n_workers=1, env=SHORT_SCHEDULER_LOGS) as cluster:
        yield cluster["process"], cluster["scheduler_file"]


def test_long_fit_leaves_the_scheduler_as_it_found_it(scheduler_process, tmp_path):
    """500 iterations against one scheduler: after every iteration its task count is
    back at the baseline, and its memory does not grow with the iterations."""
    from distributed import Client

    scheduler, scheduler_file = scheduler_process
    X = mixture_data(22, n_rows=2_000, n_features=3, n_components=2)
    path = _zarr(tmp_path / "x.zarr", X, chunk_rows=250)
    with Client(scheduler_file=str(scheduler_file), timeout="60s") as client:
        client.wait_for_workers(1, timeout=60)
        n_tasks = lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))  # noqa: E731
        baseline = n_tasks()
        counts: list[int] = []
        rss: dict[int, int] = {}
        process = psutil.Process(scheduler.pid)

        def settled_count() -> int:
            # the client releases a computation's keys asynchronously: give it a moment
            deadline = time.monotonic() + 2.0
            count = n_tasks()
            while count != baseline and time.monotonic() < deadline:
                time.sleep(0.01)
                count = n_tasks()
            return count

        def record(n_iter):
            counts.append(settled_count())
            # fail at once (not after 500 slow iterations) if something stays behind
            assert counts[-1] == baseline, f"iteration {n_iter}: {counts[-1]} tasks left"
            if n_iter % 50 == 0:
                rss[n_iter] = process.memory_info().rss

        # persist=False: every pass reads the blocks from the store, so between iterations
        # nothing at all should remain on the scheduler
        model = distmix.GaussianMixture(
            2, tol=0.0, max_iter=500, persist=False, **starting_params(X, 2, "full", seed=3)
        )
        with _after_iteration(record), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(da.from_zarr(path))
    assert len(counts) == 500
    assert max(counts) == baseline, f"tasks left on the scheduler: {sorted(set(counts))}"
    print("scheduler RSS (MiB) by iteration:", {n: round(v / 2**20, 1) for n, v in rss.items()})
    # distributed keeps one "span" record per computation for ever (dask/distributed#7977:
    # spans and the TaskGroups they aggregate outlive the tasks), about 25 KiB per EM
    # iteration here whatever the data size. Anything distmix kept per iteration (Params,
    # statistics, futures) would add to that; the bound leaves room for distributed's
    # record only.
    per_iteration = (rss[500] - rss[100]) / 400
    assert per_iteration < 48 * 2**10, f"scheduler memory grew {per_iteration / 2**10:.1f} KiB/iter"
