"""Workers too small for a block: a clear error (or smaller blocks) before the first pass.

The cluster is a real ``dask scheduler`` with ``dask worker`` processes on
127.0.0.1 whose ``--memory-limit`` is small; the check itself is also tested on
fabricated ``scheduler_info()["workers"]`` entries.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import dask_processes, mixture_data

from distmix import GaussianMixture
from distmix.chunks import open_dataset
from distmix.cli import main
from distmix.datasets import write_zarr
from distmix.engines.dask import (
    DaskEngine,
    WorkerMemory,
    WorkerMemoryError,
    block_working_bytes,
    check_blocks_fit,
    fit_blocks_to_workers,
    rows_that_fit,
    terminate_fraction,
)
from distmix.npy import open_npy

MiB = 2**20


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


def test_one_roomy_worker_is_enough():
    rows = (400_000,)
    need = block_working_bytes(400_000, 8, 8, 2, "full")
    roomy = need / MiB / terminate_fraction() + 100
    check_blocks_fit(_workers((100, 60), (roomy, 90)), rows, 8, 8, 2, "full")
    with pytest.raises(WorkerMemoryError):
        check_blocks_fit(_workers((100, 60), (roomy, 100 + 90 + 1)), rows, 8, 8, 2, "full")


def test_a_worker_past_its_pause_threshold_holds_nothing():
    # 85 % of its limit in use: Dask pauses it, so it would never start a block
    assert _workers((200, 170))[0].room() == 0
    with pytest.raises(WorkerMemoryError, match="already uses 170 MiB"):
        check_blocks_fit(_workers((200, 170)), (10,), 8, 8, 2, "full")


def test_error_names_limit_use_block_and_remedy():
    with pytest.raises(WorkerMemoryError) as info:
        check_blocks_fit(_workers((92, 70), (92, 75)), (300_000, 100), 8, 8, 4, "full")
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    assert "tcp://127.0.0.1:9000" in message  # the roomier of the two
    assert "memory limit of 92 MiB and already uses 70 MiB" in message
    assert "300,000 rows × 8 features, 18 MiB as read" in message
    assert "--block-rows" in message and "block_size" in message
    assert "more memory per worker" in message


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
    # room for one block per thread on the roomier worker
    need = block_working_bytes(max(smaller.chunks[0]), 8, 8, 8)
    assert 2 * need <= terminate_fraction() * 150 * MiB - 60 * MiB
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
    with dask_processes(
        tmp_path_factory.mktemp("dask"), n_workers=2, memory_limit=MEMORY_LIMIT
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
    assert err.startswith("distmix fit: error: No Dask worker can hold one block")
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
