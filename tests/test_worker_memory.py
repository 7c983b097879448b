"""Workers too small for a block: a clear error (or smaller blocks) before the first pass.

The cluster is a real ``dask scheduler`` with ``dask worker`` processes on
127.0.0.1 whose ``--memory-limit`` is small; the check itself is also tested on
fabricated ``scheduler_info()["workers"]`` entries.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from conftest import dask_processes, local_cluster, mixture_data

from distmix import GaussianMixture
from distmix.cli import main
from distmix.datasets import write_zarr
from distmix.engines import dask as dask_engine
from distmix.engines.dask import (
    DaskEngine,
    WorkerEnvironmentError,
    WorkerMemory,
    WorkerMemoryError,
    block_working_bytes,
    check_blocks_fit,
    fit_blocks_to_workers,
    measured_workers,
    rows_that_fit,
    terminate_fraction,
)
from distmix.sources.dataset import open_dataset
from distmix.sources.npy import open_npy

MiB = 2**20


@pytest.fixture(autouse=True)
def no_measurement_yet(monkeypatch):
    """Every test starts without a reused measurement of any cluster's workers."""
    monkeypatch.setattr(dask_engine, "_measured", {})


def _workers(*limits_and_use: tuple[float, float], nthreads: int = 1) -> list[WorkerMemory]:
    """Workers as ``scheduler_info()["workers"]`` describes them: (limit, used) in MiB."""
    info = {
        f"tcp://127.0.0.1:{9000 + i}": {
            "memory_limit": None if limit is None else int(limit * MiB),
            "metrics": {"memory": int(used * MiB)},
            "nthreads": nthreads,
        }
        for i, (limit, used) in enumerate(limits_and_use)
    }
    return [WorkerMemory.from_info(address, entry) for address, entry in info.items()]


# -- the check on fabricated workers ---------------------------------------------------
def test_estimate_counts_the_float64_temporaries():
    raw = 100_000 * 8 * 4  # float32 rows as read
    full = block_working_bytes(100_000, 8, 4, n_components=4, covariance_type="full")
    diag = block_working_bytes(100_000, 8, 4, n_components=4, covariance_type="diag")
    assert full >= raw + 4 * 2 * raw  # the block and four float64 copies at least
    assert diag > full  # the (K, n, D) stack of the batched path
    assert block_working_bytes(100_000, 8, 4, 4) == diag  # unknown type: the larger


def test_a_worker_without_limit_is_never_refused():
    for limit in (0, None):
        check_blocks_fit(_workers((limit, 500)), (10**9,), 64, 8, 16, "diag")
        assert rows_that_fit(_workers((limit, 500)), 64, 8) is None
    # beside one: the limited worker still runs blocks, so it still has to hold them
    with pytest.raises(WorkerMemoryError, match="tcp://127.0.0.1:9001"):
        check_blocks_fit(_workers((None, 500), (100, 60)), (10**6,), 8, 8, 2, "full")


def test_threads_process_blocks_at_once():
    # 1 GiB limit, 200 MiB used, 4 threads; blocks of 1,000,000 × 8 float64, K = 4 full:
    # 610 MiB per block fits beside 200 MiB, four at once (2,441 MiB) do not
    need = block_working_bytes(1_000_000, 8, 8, 4, "full")
    assert round(need / MiB) == 610
    blocks = (1_000_000,) * 4
    check_blocks_fit(_workers((1024, 200), nthreads=1), blocks, 8, 8, 4, "full")
    with pytest.raises(WorkerMemoryError) as info:
        check_blocks_fit(_workers((1024, 200), nthreads=4), blocks, 8, 8, 4, "full")
    message = str(info.value)
    assert "with 4 threads the worker processes up to 4 blocks at once (2,441 MiB)" in message
    assert "fewer threads per worker" in message
    # a worker runs no more blocks at once than there are: one block, one at a time
    check_blocks_fit(_workers((1024, 200), nthreads=4), (1_000_000,), 8, 8, 4, "full")
    with pytest.raises(WorkerMemoryError, match="up to 2 blocks at once"):
        check_blocks_fit(_workers((1024, 200), nthreads=4), blocks[:2], 8, 8, 4, "full")


def test_check_and_resizing_agree():
    """Blocks of ``rows_that_fit`` rows pass the check however many they are; one row
    more fails it once every thread of the tightest worker has a block."""
    workers = [
        *_workers((1024, 200), nthreads=4),
        *_workers((600, 150), nthreads=2),
        *_workers((4096, 300), nthreads=8),
    ]
    workers = [
        dataclasses.replace(w, address=f"tcp://127.0.0.1:{9000 + i}") for i, w in enumerate(workers)
    ]
    for sizing in [(8, 8, 4, "full"), (8, 4, 16, "diag"), (50, 8, 3, "spherical")]:
        fits = rows_that_fit(workers, *sizing)
        assert fits is not None and fits > 0
        for n_blocks in (1, 2, 3, 8, 50):
            check_blocks_fit(workers, (fits,) * n_blocks, *sizing)
        for n_blocks in (8, 50):
            with pytest.raises(WorkerMemoryError, match=f"at most about {fits:,} rows per block"):
                check_blocks_fit(workers, (fits + 1,) * n_blocks, *sizing)


def test_every_worker_that_runs_blocks_must_hold_them():
    rows = (400_000,)
    need = block_working_bytes(400_000, 8, 8, 2, "full")
    roomy = need / MiB / terminate_fraction() + 100
    check_blocks_fit(_workers((roomy, 90), (roomy, 60)), rows, 8, 8, 2, "full")
    # blocks go to the small worker too: one roomy worker is not enough
    with pytest.raises(WorkerMemoryError, match="tcp://127.0.0.1:9000 cannot hold"):
        check_blocks_fit(_workers((100, 60), (roomy, 90)), rows, 8, 8, 2, "full")
    # a worker past its pause threshold gets no blocks, so it does not count
    check_blocks_fit(_workers((100, 85), (roomy, 90)), rows, 8, 8, 2, "full")
    with pytest.raises(WorkerMemoryError):
        check_blocks_fit(_workers((100, 85), (roomy, 100 + 90 + 1)), rows, 8, 8, 2, "full")


def test_a_worker_past_its_pause_threshold_holds_nothing():
    # 85 % of its limit in use: Dask pauses it, so it would never start a block
    assert _workers((200, 170))[0].room() == 0
    with pytest.raises(WorkerMemoryError, match="already uses 170 MiB"):
        check_blocks_fit(_workers((200, 170)), (10,), 8, 8, 2, "full")


def test_error_names_worker_limit_use_threads_block_and_remedy():
    with pytest.raises(WorkerMemoryError) as info:
        check_blocks_fit(_workers((92, 60), (92, 65), nthreads=2), (300_000, 100), 8, 8, 4, "full")
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert message.startswith("Dask worker tcp://127.0.0.1:9001 cannot hold")  # the tighter
    assert "memory limit of 92 MiB and already uses 65 MiB" in message
    assert "with 2 threads the worker processes up to 2 blocks at once" in message
    assert "300,000 rows × 8 features, 18 MiB as read" in message
    assert "--block-rows" in message and "block_size" in message
    assert "fewer threads per worker" in message and "more memory per worker" in message


def _info(*addresses: str, limit_mib: float = 400) -> dict:
    return {
        a: {"memory_limit": int(limit_mib * MiB), "metrics": {"memory": 60 * MiB}, "nthreads": 1}
        for a in addresses
    }


def test_only_a_worker_that_died_counts_as_full():
    from distributed.comm.core import CommClosedError

    info = _info("tcp://10.0.0.1:1", "tcp://10.0.0.2:2", "tcp://10.0.0.3:3", "tcp://10.0.0.4:4")
    loaded = {
        "tcp://10.0.0.1:1": 170.0 * MiB,  # loaded distmix
        "tcp://10.0.0.2:2": CommClosedError("in <TCP (closed)>: Stream is closed"),  # died
        "tcp://10.0.0.3:3": MemoryError(),  # out of memory
        # tcp://10.0.0.4:4 left before it answered
    }
    used = [w.used / MiB for w in measured_workers(info, loaded)]
    assert used == [170, 400, 400, 400]


@pytest.mark.parametrize(
    "raised",
    [
        "ModuleNotFoundError: No module named 'distmix'",  # what our probe returns
        # what reaches the client when a worker fails before running the probe
        Exception("ModuleNotFoundError(\"No module named 'distmix'\")"),
        ImportError("numpy.core.multiarray failed to import"),
    ],
)
def test_a_worker_that_cannot_load_distmix_is_named(raised):
    info = _info("tcp://10.0.0.1:1", "tcp://10.0.0.2:2")
    loaded = {"tcp://10.0.0.1:1": 170.0 * MiB, "tcp://10.0.0.2:2": raised}
    with pytest.raises(WorkerEnvironmentError) as error:
        measured_workers(info, loaded)
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, ImportError)
    assert message.startswith("Dask worker tcp://10.0.0.2:2 cannot load distmix")
    assert ("No module named 'distmix'" in message) or ("failed to import" in message)
    assert "install distmix" in message


def test_blocks_of_our_choosing_are_made_smaller(tmp_path):
    path = tmp_path / "x.npy"
    X = mixture_data(0, n_rows=200_000, n_features=8)
    np.save(path, X)
    A = open_npy(path)  # one block of 200,000 rows
    workers = _workers((150, 60), (150, 80), nthreads=2)
    with pytest.raises(WorkerMemoryError):
        check_blocks_fit(workers, A.chunks[0], 8, 8, 8, "diag")
    smaller = fit_blocks_to_workers(A, workers, lambda rows: open_npy(path, block_rows=rows), 8)
    fits = rows_that_fit(workers, 8, 8, 8)
    assert fits is not None and 0 < max(smaller.chunks[0]) <= fits
    # room for one block per thread on every worker
    need = block_working_bytes(max(smaller.chunks[0]), 8, 8, 8)
    assert 2 * need <= terminate_fraction() * 150 * MiB - 80 * MiB
    np.testing.assert_array_equal(smaller.compute(), X)
    # no way to make them smaller: refused
    with pytest.raises(WorkerMemoryError):
        fit_blocks_to_workers(A, workers, None, 8)


def test_zarr_blocks_cannot_shrink_below_a_chunk(tmp_path):
    path = str(tmp_path / "x.zarr")
    write_zarr(path, 200_000, 8, 2, seed=0, chunk_rows=200_000)
    X = open_dataset(path)
    workers = _workers((150, 60))
    with pytest.raises(WorkerMemoryError, match=r"200,000 rows × 8 features"):
        fit_blocks_to_workers(X, workers, lambda rows: open_dataset(path, block_rows=rows), 8)


# -- a real scheduler and workers ------------------------------------------------------
#: small enough that a block of 800,000 rows × 8 float64 features (49 MiB) cannot be
#: processed beside a worker process that has loaded distmix (about 170 MiB)
MEMORY_LIMIT = "400MiB"


@pytest.fixture(scope="module")
def small_workers(tmp_path_factory):
    # These tests are about block sizes against a worker's limit, so their workers keep to
    # the array-API kernels: compiling a fused kernel takes a 400 MiB worker past Dask's
    # pause threshold (measured: 357-364 MiB resident after numba compiled in it; a paused
    # worker runs nothing, and its memory is not given back).
    with dask_processes(
        tmp_path_factory.mktemp("dask"),
        n_workers=2,
        memory_limit=MEMORY_LIMIT,
        env={"DISTMIX_KERNEL": "array-api"},
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "rows.zarr")
    write_zarr(path, 800_000, 8, 2, seed=0, chunk_rows=80_000)  # 49 MiB, 10 chunks
    return path


def _fit_argv(data, address, out, *more):
    return ["fit", str(data), "-k", "2", "--cluster", address, "--out", str(out)] + [
        "--init-params",
        "random",
        "--max-iter",
        "2",
        "--no-progress",
        "-q",
        *more,
    ]


@pytest.mark.slow
def test_cli_refuses_blocks_no_worker_can_hold(small_workers, dataset, tmp_path, capsys):
    out = tmp_path / "model.npz"
    argv = _fit_argv(dataset, small_workers["address"], out, "--block-rows", "800000")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("distmix fit: error: Dask worker tcp://127.0.0.1:")
    assert "cannot hold the blocks it would process" in err
    assert "memory limit of 400 MiB" in err and "800,000 rows × 8 features" in err
    assert "--block-rows" in err
    assert not out.exists()
    assert all(w.poll() is None for w in small_workers["workers"])  # nobody was killed


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_cli_fits_the_same_data_in_blocks_that_fit(small_workers, dataset, tmp_path):
    out = tmp_path / "model.npz"
    assert main(_fit_argv(dataset, small_workers["address"], out, "--block-rows", "80000")) == 0
    assert out.exists()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_npy_blocks_are_made_smaller_for_the_workers(small_workers, tmp_path):
    from distributed import Client

    path = tmp_path / "x.npy"
    X = mixture_data(1, n_rows=130_000, n_features=8, n_components=4)
    np.save(path, X)
    assert open_npy(path).numblocks[0] == 1  # 8 MiB of rows: one block of 130,000
    model = GaussianMixture(16, covariance_type="diag", max_iter=1, tol=0.0, init_params="random")
    with Client(small_workers["address"]):
        engine = model._engine(str(path), reset=True)
        assert isinstance(engine, DaskEngine)
        assert engine.n_rows == 130_000 and len(engine.block_rows) > 1
        model.fit(str(path))
    assert np.isfinite(model.lower_bound_)


@pytest.mark.slow
def test_cli_names_a_worker_without_distmix(dataset, tmp_path, capsys):
    # the worker's environment cannot import distmix (a preload hides it)
    hide = tmp_path / "hide_distmix.py"
    hide.write_text("import sys\nsys.modules['distmix'] = None\n")
    env = {"DASK_DISTRIBUTED__WORKER__PRELOAD": f"['{hide}']"}
    (tmp_path / "dask").mkdir()
    with dask_processes(tmp_path / "dask", memory_limit=MEMORY_LIMIT, env=env) as cluster:
        out = tmp_path / "model.npz"
        argv = _fit_argv(dataset, cluster["address"], out, "--block-rows", "80000")
        assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("distmix fit: error: Dask worker tcp://127.0.0.1:")
    assert "cannot load distmix" in err and "No module named 'distmix.tasks'" in err
    assert "cannot hold" not in err  # not taken for a worker without memory
    assert not out.exists()


# -- one measurement for many engines ---------------------------------------------------
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_workers_are_measured_once_for_a_fit_its_predictions_and_a_stream(monkeypatch):
    import dask.array as da
    from distributed import Client, LocalCluster

    probes: list[str] = []
    real_run = Client.run

    def counting_run(self, function, *args, **kwargs):
        probes.append(getattr(function, "__name__", repr(function)))
        return real_run(self, function, *args, **kwargs)

    monkeypatch.setattr(Client, "run", counting_run)
    X = mixture_data(2, n_rows=4_000, n_features=3)
    D = da.from_array(X, chunks=500)
    batches = [da.from_array(X[i * 400 : (i + 1) * 400], chunks=200) for i in range(10)]
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            memory_limit="2GiB",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        model = GaussianMixture(3, max_iter=3, random_state=0).fit(D)
        assert len(probes) == 1
        for _ in range(2):
            labels = model.predict(D)
            model.predict_proba(D)
            model.score_samples(D)
            model.score(D)
            model.bic(D)
        assert len(probes) == 1
        np.testing.assert_array_equal(labels.compute(), model.predict(X))
        streamed = GaussianMixture(3, random_state=0).fit_stream(iter(batches))
        for batch in batches:
            streamed.partial_fit(batch)
        assert len(probes) == 1
        # the set of workers changed: measured again, once
        cluster.scale(3)
        client.wait_for_workers(3)
        GaussianMixture(3, max_iter=1, random_state=0).fit(D)
        model.predict(D)
        assert len(probes) == 2
        # a measurement grown old is not reused; engines that only read skip the check
        monkeypatch.setattr(dask_engine, "MEASUREMENT_TTL_S", 0.0)
        model.predict(D), model.score(D)
        assert len(probes) == 2
        GaussianMixture(3, max_iter=1, random_state=0).fit(D)
        assert len(probes) == 3


@pytest.mark.parametrize(("kernel", "loaded"), [("auto", True), ("array-api", False)])
def test_the_measurement_counts_the_compiled_kernels_a_worker_would_load(kernel, loaded):
    """numba and llvmlite take ~54 MiB of a worker that runs the compiled kernels: the
    probe loads them before it measures, on workers whose kernel choice would."""
    with local_cluster(1, set_as_default=False, env={"DISTMIX_KERNEL": kernel}) as client:
        before = client.run(lambda: "distmix.fused" in sys.modules)
        measured = client.run(dask_engine._loaded_memory_probe())
        after = client.run(lambda: "distmix.fused" in sys.modules)
    assert list(before.values()) == [False]
    assert all(isinstance(v, float) and v > 50 * MiB for v in measured.values())
    assert list(after.values()) == [loaded]
