""".npy files read by block inside the tasks: small graphs, flat client memory, clear errors.

The files are real ``numpy.save`` outputs under ``tmp_path``; the cluster is a
``distributed.LocalCluster`` of worker processes on 127.0.0.1, and the client's
peak memory is measured in subprocesses of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import cloudpickle
import dask.array as da
import numpy as np
import pytest
from conftest import local_cluster, mixture_data, starting_params
from sklearn.exceptions import ConvergenceWarning

from distmix import GaussianMixture
from distmix.cli import main
from distmix.engines.dask import DaskEngine
from distmix.params import Params
from distmix.sources.dataset import open_dataset
from distmix.sources.npy import open_npy
from distmix.sources.zarr_arrays import ChunkReadError

SAME_RTOL = 1e-10
N_FEATURES, N_COMPONENTS = 8, 3


def _mixture_npy(path, n_rows: int, seed: int = 0, **save) -> np.ndarray:
    X = mixture_data(seed, n_rows=n_rows, n_features=N_FEATURES, n_components=N_COMPONENTS)
    np.save(path, X, **save)
    return X


def _graph_bytes(engine: DaskEngine, params: Params) -> int:
    """Pickled size of one E-step pass's task graph: what a client sends the scheduler."""
    graph = engine.graph("estep", params)
    return len(cloudpickle.dumps(dict(graph.__dask_graph__())))


# -- reading --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "order"),
    [("<f8", "C"), ("<f4", "C"), (">f8", "C"), ("<f8", "F"), ("<i4", "C"), ("|b1", "C")],
)
def test_blocks_read_back_the_file(tmp_path, dtype, order):
    X = np.asarray(np.random.default_rng(1).normal(size=(1003, 5)) * 10, dtype=dtype, order=order)
    path = tmp_path / "x.npy"
    np.save(path, X)
    A = open_npy(path, block_rows=100)
    assert A.chunks == ((100,) * 10 + (3,), (5,))
    assert A.dtype == X.dtype.newbyteorder("=")
    np.testing.assert_array_equal(A.compute(), X)
    uneven = open_dataset(str(path), block_rows=(3, 1000))  # open_dataset dispatches on .npy
    np.testing.assert_array_equal(uneven.compute(), X)
    assert uneven.chunks[0] == (3, 1000)


def test_default_blocks_are_about_8_mib_of_rows(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((300_000, 8), dtype=np.float32))  # 32 bytes a row
    assert open_npy(path).chunks[0] == (2**18, 300_000 - 2**18)
    np.save(path, np.zeros((10, 8)))
    assert open_npy(path).chunks[0] == (10,)


def test_graph_is_small_and_holds_no_rows(tmp_path):
    path = tmp_path / "big.npy"
    X = _mixture_npy(path, 600_000)  # 37 MiB
    A = open_npy(path)
    assert A.numblocks[0] == 5
    start = starting_params(X[:1000], N_COMPONENTS, "full", seed=0)
    params = Params.from_precisions(
        start["weights_init"], start["means_init"], start["precisions_init"], "full"
    )
    assert _graph_bytes(DaskEngine(A), params) < 64 * 2**10
    # the way distmix used to open .npy files: the memmap travels in the graph
    old = da.from_array(np.load(path, mmap_mode="r"), chunks=(2**17, -1))
    assert _graph_bytes(DaskEngine(old), params) > X.nbytes


def test_rewritten_file_is_a_new_source(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((100, 2)))
    first = open_npy(path).name
    assert open_npy(path).name == first  # deterministic
    np.save(path, np.ones((100, 2)))
    assert open_npy(path).name != first


def test_file_rewritten_during_the_fit_names_the_rows_and_path(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1000, 2)))
    A = open_npy(path, block_rows=100)
    np.save(path, np.zeros((10, 2)))  # now shorter than the header the reader trusted
    with pytest.raises(ChunkReadError, match=r"rows 900–999 of .*x\.npy failed"):
        A.blocks[9].compute()


# -- bad files --------------------------------------------------------------------
def _save(path, array):
    np.save(path, array, allow_pickle=True)
    return path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda p: p.with_name("absent.npy"), FileNotFoundError, r"absent\.npy: no such file"),
        (lambda p: _save(p, np.zeros(10)), ValueError, r"1-D array of shape \(10,\).*\(-1, 1\)"),
        (lambda p: _save(p, np.zeros((2, 3, 4))), ValueError, r"3-D array of shape \(2, 3, 4\)"),
        (lambda p: _save(p, np.zeros((0, 3))), ValueError, r"has 0 rows"),
        (lambda p: _save(p, np.zeros((3, 0))), ValueError, r"0 feature"),
        (lambda p: _save(p, np.full((3, 2), "a")), TypeError, r"dtype <U1, which is not numeric"),
        (lambda p: _save(p, np.ones((3, 2), dtype=complex)), ValueError, r"Complex data"),
        (
            lambda p: _save(p, np.array([[{"a": 1}, None]], dtype=object)),
            TypeError,
            r"holds Python objects.*never unpickles",
        ),
        (lambda p: p.write_bytes(b"not a numpy file at all") and p, ValueError, r"not a readable"),
        (
            lambda p: p.write_bytes(_save(p, np.zeros((100, 2))).read_bytes()[:-8]) and p,
            ValueError,
            r"truncated",
        ),
    ],
    ids=[
        "missing",
        "1d",
        "3d",
        "no_rows",
        "no_columns",
        "strings",
        "complex",
        "object",
        "not_npy",
        "truncated",
    ],
)
def test_bad_files_are_refused_up_front(tmp_path, make, error, message):
    path = make(tmp_path / "bad.npy")
    with pytest.raises(error, match=message) as info:
        open_npy(path)
    assert "allow_pickle" not in str(info.value)
    with pytest.raises(error, match=message):
        GaussianMixture(2).fit(str(path))


def test_cli_refuses_a_pickled_array_in_one_line(tmp_path, capsys):
    path = _save(tmp_path / "objects.npy", np.array([[1.0, object()]], dtype=object))
    assert main(["fit", str(path), "-k", "2", "--cluster", "threads", "-q"]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects" in err and "allow_pickle" not in err
    assert len(err.strip().splitlines()) == 1


# -- fitting on a cluster ---------------------------------------------------------
@pytest.mark.slow
def test_fit_on_local_cluster_matches_in_memory_numpy(tmp_path):
    path = tmp_path / "x.npy"
    X = _mixture_npy(path, 120_000, seed=3)
    settings = dict(tol=0.0, max_iter=4, **starting_params(X, N_COMPONENTS, "full", seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = GaussianMixture(N_COMPONENTS, **settings).fit(X)
        with local_cluster(2, memory_limit="512MiB"):
            model = GaussianMixture(N_COMPONENTS, block_size=25_000, **settings).fit(str(path))
            engine = model._engine(str(path), reset=False)  # the engine each pass ran on
    assert isinstance(engine, DaskEngine) and engine.block_rows == (25_000,) * 4 + (20_000,)
    assert _graph_bytes(engine, model._params()) < 2**20
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(
            getattr(model, name), getattr(expected, name), rtol=SAME_RTOL, atol=1e-12
        )
    assert model.lower_bound_ == pytest.approx(expected.lower_bound_, rel=SAME_RTOL)


_CLIENT_PEAK = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, "tests")
    from conftest import local_cluster
    from distmix.cli import main

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    # the scheduler runs in this process too: a large graph would show here twice
    with local_cluster(2, memory_limit="400MiB") as client:
        before = status("VmRSS:")
        with open("/proc/self/clear_refs", "w") as f:  # restart the peak (VmHWM) here
            f.write("5")
        argv = ["fit", sys.argv[1], "-k", "3", "--init-params", "random", "--max-iter", "1"]
        code = main(argv + ["--no-progress", "-q", "--cluster", client.scheduler.address])
        print(json.dumps({"code": code, "before": before, "peak": status("VmHWM:")}))
    """
)


def _client_peak(path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _CLIENT_PEAK, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads(done.stdout.strip().splitlines()[-1])
    assert run["code"] == 0, done.stdout
    return run


@pytest.mark.slow
def test_client_memory_does_not_grow_with_the_file(tmp_path):
    """``distmix fit x.npy`` on a cluster: the client's peak memory is the same for a 4x
    larger file, and far below the file's size: the rows stay on the workers."""
    small, large = tmp_path / "small.npy", tmp_path / "large.npy"
    _mixture_npy(small, 250_000)  # 15 MiB
    _mixture_npy(large, 1_000_000)  # 61 MiB
    budget = 16 * 2**20
    size = large.stat().st_size
    assert size > 3 * budget
    runs = {path.name: _client_peak(path) for path in (small, large)}
    growth = {name: run["peak"] - run["before"] for name, run in runs.items()}
    print(growth)
    assert growth["large.npy"] < budget, growth
    assert abs(growth["large.npy"] - growth["small.npy"]) < (size - small.stat().st_size) / 8
