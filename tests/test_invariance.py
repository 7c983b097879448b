"""The answer does not depend on how the rows are cut, moved or typed.

Chunking (one block, seven uneven blocks, uneven dask chunks on the threaded
scheduler and on a real two-process ``distributed.LocalCluster``), the data's
location (a shift by 1e6), its dtype (float32), weights against repeated or
dropped rows, and the random state all have a stated effect (none, or exactly
the documented one). The Dask engine runs exactly one compute per EM iteration,
and its graph is one Params key feeding every block task, then a tree of
fan-in ``split_every``.
"""

from __future__ import annotations

import functools
import math
import os
import re

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, mixture_data, starting_params
from dask.callbacks import Callback
from sklearn.exceptions import ConvergenceWarning

from distmix import GaussianMixture, estep
from distmix.engines import DaskEngine
from distmix.estep import chunk_stats
from distmix.params import Params
from distmix.sources.blocks import default_block_rows
from distmix.tasks import (
    STACK_BYTES,
    _pieces,
    estep_block,
    kernel_piece_rows,
    log_likelihood_block,
    rowwise_in_pieces,
)

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
#: the default, "kmeans", is covered by test_default_init_fit_does_not_depend_on_blocks
OTHER_INIT_PARAMS = INIT_PARAMS[1:]

N_ROWS, N_FEATURES, N_COMPONENTS = 600, 3, 3
#: seven uneven in-memory blocks (one of a single row)
LOCAL_BLOCKS = (1, 151, 37, 200, 3, 90, 118)
#: seven uneven dask chunks, cut elsewhere
DASK_CHUNKS = (97, 3, 150, 1, 200, 49, 100)
assert sum(LOCAL_BLOCKS) == sum(DASK_CHUNKS) == N_ROWS

SAME_RTOL = 1e-10
FIT_KWARGS = dict(n_components=N_COMPONENTS, tol=1e-6, max_iter=500)

LAYOUTS = ("seven_blocks", "dask_threads", "dask_distributed")
#: the given-start fits also run through a binary tree (split_every=2)
ALL_LAYOUTS = (
    "seven_blocks",
    "seven_blocks_split2",
    "blocks_of_64",
    "dask_threads",
    "dask_rechunked",
    "zarr",
    "dask_distributed",
)


# -- helpers ------------------------------------------------------------------
def data(seed: int = 6, **kwargs) -> np.ndarray:
    kwargs = {"n_rows": N_ROWS, "n_features": N_FEATURES, "n_components": N_COMPONENTS, **kwargs}
    return mixture_data(seed, **kwargs)


def as_dask(X: np.ndarray, chunks: tuple[int, ...] = DASK_CHUNKS) -> da.Array:
    return da.from_array(X, chunks=(chunks, (X.shape[1],)))


def assert_close(actual, expected, rtol: float, name: str = "") -> None:
    """Equal within ``rtol`` relative to the scale of ``expected`` (entries near 0 included)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, name
    np.testing.assert_allclose(
        actual, expected, rtol=rtol, atol=rtol * float(np.max(np.abs(expected))), err_msg=name
    )


def assert_same_fit(a: GaussianMixture, b: GaussianMixture, rtol: float = SAME_RTOL) -> None:
    """Same parameters, same iteration count and convergence, same likelihood trace."""
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert_close(getattr(a, name), getattr(b, name), rtol, name)
    assert a.n_iter_ == b.n_iter_
    assert a.converged_ == b.converged_
    assert len(a.lower_bounds_) == len(b.lower_bounds_)
    if b.n_iter_:
        assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=rtol, abs=0)
        np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=rtol, atol=0)


class ComputeCounter(Callback):
    """Counts the graphs the local (threaded/sync) schedulers start."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def _start(self, dsk) -> None:
        self.count += 1


@pytest.fixture(scope="module")
def dask_client():
    """A real two-process cluster on 127.0.0.1, not the process-wide default."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        processes=True,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=":0",
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def fit_in_layout(layout: str, request, X: np.ndarray, **kwargs) -> GaussianMixture:
    """Fit ``GaussianMixture(**kwargs)`` on ``X`` cut and run as ``layout`` says."""
    if layout == "seven_blocks":
        return GaussianMixture(block_size=LOCAL_BLOCKS, **kwargs).fit(X)
    if layout == "seven_blocks_split2":
        return GaussianMixture(block_size=LOCAL_BLOCKS, split_every=2, **kwargs).fit(X)
    if layout == "blocks_of_64":
        return GaussianMixture(block_size=64, **kwargs).fit(X)
    if layout == "dask_threads":
        with dask.config.set(scheduler="threads"):
            return GaussianMixture(**kwargs).fit(as_dask(X))
    if layout == "dask_rechunked":
        # columns split over two chunks, rows re-cut by block_size
        Xd = da.from_array(X, chunks=(DASK_CHUNKS, (2, X.shape[1] - 2)))
        with dask.config.set(scheduler="threads"):
            return GaussianMixture(block_size=128, **kwargs).fit(Xd)
    if layout == "zarr":
        import zarr
        from zarr.storage import MemoryStore

        Xz = zarr.create_array(MemoryStore(), data=X, chunks=(97, X.shape[1]))
        with dask.config.set(scheduler="threads"):
            return GaussianMixture(**kwargs).fit(Xz)
    if layout == "dask_distributed":
        from distributed import get_task_stream

        client = request.getfixturevalue("dask_client")
        with dask.config.set(scheduler=client), get_task_stream(client=client) as stream:
            model = GaussianMixture(**kwargs).fit(as_dask(X))
        # it really ran on the cluster's workers
        assert len(stream.data) > 0
        return model
    raise AssertionError(layout)


@functools.cache
def one_block_fit(**kwargs) -> GaussianMixture:
    """The reference fit (one in-memory block), cached: tests only read it."""
    return GaussianMixture(block_size=N_ROWS, **kwargs).fit(data())


def start_params(X: np.ndarray, n_components: int, covariance_type: str, seed: int) -> Params:
    """``starting_params`` as a Params (for calling kernels and engines directly)."""
    start = starting_params(X, n_components, covariance_type, seed=seed)
    return Params.from_precisions(
        start["weights_init"], start["means_init"], start["precisions_init"], covariance_type
    )


def set_malloc_tunable(monkeypatch: pytest.MonkeyPatch, tuned: bool) -> None:
    """This process's environment without glibc malloc tunables, or with Dask's one."""
    for name in [n for n in os.environ if n.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    if tuned:
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")


# -- chunking -----------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("init_params", INIT_PARAMS)
def test_initial_params_do_not_depend_on_blocks(layout, init_params, request):
    kwargs = dict(
        FIT_KWARGS, covariance_type="full", init_params=init_params, random_state=3, max_iter=0
    )
    reference = one_block_fit(**kwargs)
    assert reference.n_iter_ == 0
    assert_same_fit(fit_in_layout(layout, request, data(), **kwargs), reference)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_default_init_fit_does_not_depend_on_blocks(layout, covariance_type, request):
    kwargs = dict(FIT_KWARGS, covariance_type=covariance_type, random_state=0)
    reference = one_block_fit(**kwargs)
    assert reference.converged_ and reference.n_iter_ >= 2
    assert_same_fit(fit_in_layout(layout, request, data(), **kwargs), reference)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("init_params", OTHER_INIT_PARAMS)
def test_fit_does_not_depend_on_blocks_for_each_init(layout, init_params, request):
    kwargs = dict(FIT_KWARGS, covariance_type="diag", init_params=init_params, random_state=1)
    reference = one_block_fit(**kwargs)
    assert reference.converged_ and reference.n_iter_ >= 2
    assert_same_fit(fit_in_layout(layout, request, data(), **kwargs), reference)


@pytest.mark.parametrize("layout", ALL_LAYOUTS)
def test_given_start_fit_does_not_depend_on_blocks(layout, covariance_type, request):
    X = data(seed=3)
    start = starting_params(X, N_COMPONENTS, covariance_type, seed=6)
    kwargs = dict(FIT_KWARGS, covariance_type=covariance_type, tol=1e-8, random_state=0)
    reference = GaussianMixture(block_size=N_ROWS, **kwargs, **start).fit(X)
    assert reference.converged_ and reference.n_iter_ >= 4
    assert_same_fit(fit_in_layout(layout, request, X, **kwargs, **start), reference)


# -- location and dtype -------------------------------------------------------
SHIFT = 1e6


@pytest.mark.parametrize("as_input", [np.asarray, as_dask], ids=["numpy", "dask"])
def test_shifted_data_fits_the_same_covariances(covariance_type, as_input):
    X = data(seed=2, separation=3.0)
    X_far = data(seed=2, separation=3.0, shift=SHIFT)
    start = starting_params(X, N_COMPONENTS, covariance_type, seed=4)
    start_far = {**start, "means_init": start["means_init"] + SHIFT}
    kwargs = dict(FIT_KWARGS, covariance_type=covariance_type, tol=1e-8, block_size=LOCAL_BLOCKS)
    if as_input is as_dask:
        kwargs.pop("block_size")
    near = GaussianMixture(**kwargs, **start).fit(as_input(X))
    far = GaussianMixture(**kwargs, **start_far).fit(as_input(X_far))
    assert near.converged_ and far.converged_
    assert far.n_iter_ == near.n_iter_ and near.n_iter_ >= 5
    assert_close(far.covariances_, near.covariances_, 1e-6, "covariances_")
    assert_close(far.precisions_, near.precisions_, 1e-6, "precisions_")
    assert_close(far.means_ - SHIFT, near.means_, 1e-6, "means_")
    assert_close(far.weights_, near.weights_, 1e-6, "weights_")
    # the log-density does not depend on the location either
    assert far.lower_bound_ == pytest.approx(near.lower_bound_, rel=1e-6)
    np.testing.assert_array_equal(far.predict(as_input(X_far)), near.predict(as_input(X)))


def test_shifted_data_default_init_fits_the_same_covariances():
    X = data(seed=8)
    X_far = data(seed=8, shift=SHIFT)
    kwargs = dict(FIT_KWARGS, covariance_type="full", random_state=0, block_size=LOCAL_BLOCKS)
    near = GaussianMixture(**kwargs).fit(X)
    far = GaussianMixture(**kwargs).fit(X_far)
    order_near, order_far = np.argsort(near.means_[:, 0]), np.argsort(far.means_[:, 0])
    assert_close(far.covariances_[order_far], near.covariances_[order_near], 1e-6, "covariances_")
    assert_close(far.means_[order_far] - SHIFT, near.means_[order_near], 1e-6, "means_")
    assert_close(far.weights_[order_far], near.weights_[order_near], 1e-6, "weights_")


@pytest.mark.parametrize("as_input", [np.asarray, as_dask], ids=["numpy", "dask"])
def test_float32_input_agrees_with_float64(covariance_type, as_input):
    X64 = data(seed=2, separation=8.0)
    X32 = X64.astype(np.float32)
    start = starting_params(X64, N_COMPONENTS, covariance_type, seed=6)
    kwargs = dict(FIT_KWARGS, covariance_type=covariance_type, tol=1e-8, **start)
    fit64 = GaussianMixture(**kwargs).fit(as_input(X64))
    fit32 = GaussianMixture(**kwargs).fit(as_input(X32))
    assert fit32.converged_
    for name in ("weights_", "means_", "covariances_", "precisions_"):
        value = getattr(fit32, name)
        assert np.all(np.isfinite(value)), name
        assert_close(value, getattr(fit64, name), 1e-4, name)
    assert fit32.lower_bound_ == pytest.approx(fit64.lower_bound_, rel=1e-4)
    # statistics accumulate in float64: float32 rows fit exactly like their float64 values
    upcast = GaussianMixture(**kwargs).fit(as_input(X32.astype(np.float64)))
    assert_same_fit(fit32, upcast)
    labels = fit32.predict(as_input(X32))
    np.testing.assert_array_equal(np.asarray(labels), np.asarray(fit64.predict(as_input(X64))))


# -- sample weights -----------------------------------------------------------
#: ways of giving rows and weights: the same fit from each
WEIGHTED_INPUTS = {
    "numpy": lambda X, w: (X, w),
    "dask": lambda X, w: (as_dask(X), w),
    "dask_with_dask_weights": lambda X, w: (as_dask(X), da.from_array(w, chunks=(DASK_CHUNKS,))),
    "dask_with_other_weight_chunks": lambda X, w: (
        as_dask(X),
        da.from_array(w, chunks=(LOCAL_BLOCKS,)),
    ),
}
WEIGHT_INPUTS = tuple(WEIGHTED_INPUTS)


def _weighted_input(kind: str, X: np.ndarray, w: np.ndarray):
    return WEIGHTED_INPUTS[kind](X, w)


@pytest.mark.parametrize(
    ("kind", "covariance_type"),
    [(kind, cov) for kind in WEIGHT_INPUTS[:2] for cov in COVARIANCE_TYPES]
    + [(kind, "full") for kind in WEIGHT_INPUTS[2:]],
)
def test_integer_weights_equal_repeated_rows(kind, covariance_type):
    X = data(seed=8)
    w = np.random.default_rng(10).integers(0, 4, size=N_ROWS)  # 0, 1, 2 and 3 copies
    assert (w == 0).any() and (w > 1).any()
    start = starting_params(X, N_COMPONENTS, covariance_type, seed=6)
    kwargs = dict(FIT_KWARGS, covariance_type=covariance_type, tol=1e-8, **start)
    X_in, w_in = _weighted_input(kind, X, w.astype(np.float64))
    if kind == "numpy":
        kwargs["block_size"] = LOCAL_BLOCKS
    weighted = GaussianMixture(**kwargs).fit(X_in, sample_weight=w_in)
    kwargs.pop("block_size", None)
    repeated = GaussianMixture(**kwargs).fit(np.repeat(X, w, axis=0))
    assert repeated.n_iter_ >= 5
    assert_same_fit(weighted, repeated)


@pytest.mark.parametrize("kind", WEIGHT_INPUTS)
def test_zero_weight_equals_dropping_the_row(kind):
    X = data(seed=8)
    w = np.ones(N_ROWS)
    # block edges, both one-row blocks, the whole 3-row dask chunk and 37-row local block
    dropped = [0, 5, 97, 98, 99, 150, 151, 250, 299, 599, *range(152, 189)]
    w[dropped] = 0.0
    start = starting_params(X, N_COMPONENTS, "full", seed=6)
    kwargs = dict(FIT_KWARGS, covariance_type="full", tol=1e-8, **start)
    X_in, w_in = _weighted_input(kind, X, w)
    if kind == "numpy":
        kwargs["block_size"] = LOCAL_BLOCKS
    weighted = GaussianMixture(**kwargs).fit(X_in, sample_weight=w_in)
    kwargs.pop("block_size", None)
    kept = GaussianMixture(**kwargs).fit(X[w > 0])
    assert kept.n_iter_ >= 5
    assert_same_fit(weighted, kept)


def test_zero_weight_row_too_far_out_for_any_density_is_dropped(covariance_type):
    """A finite row so far from every component that all its densities underflow
    (the squared distance overflows): with weight 0 it adds exactly nothing (no
    NaN in the statistics or the log-likelihood), as if it were dropped."""
    X = data(seed=9)
    params = start_params(X, N_COMPONENTS, covariance_type, seed=7)
    far = X.copy()
    far[[3, 40]] = 1e200
    w = np.ones(len(X))
    w[[3, 40]] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # the squares overflow to inf
        got = chunk_stats(far, params, w)
        total = log_likelihood_block(far, w, 0, params)
    want = chunk_stats(np.delete(X, [3, 40], axis=0), params)
    for field in ("resp_sum", "x_sum", "second", "log_lik"):
        assert_close(getattr(got, field), getattr(want, field), 1e-12, field)
    assert_close(total.log_lik, float(want.log_lik), 1e-12, "log_likelihood_block")


# -- random state ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("init_params", "as_input"),
    [(init, np.asarray) for init in INIT_PARAMS] + [("kmeans", as_dask), ("random", as_dask)],
    ids=[f"{init}-numpy" for init in INIT_PARAMS] + ["kmeans-dask", "random-dask"],
)
def test_same_random_state_gives_identical_results(init_params, as_input):
    X = data()
    kwargs = dict(
        FIT_KWARGS, covariance_type="full", init_params=init_params, random_state=42, tol=1e-4
    )
    if as_input is np.asarray:
        kwargs["block_size"] = LOCAL_BLOCKS
    with dask.config.set(scheduler="threads"):
        first = GaussianMixture(**kwargs).fit(as_input(X))
        second = GaussianMixture(**kwargs).fit(as_input(X))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    assert first.lower_bounds_ == second.lower_bounds_
    assert first.n_iter_ == second.n_iter_


@pytest.mark.parametrize("init_params", OTHER_INIT_PARAMS)
def test_random_state_changes_the_start(init_params):
    # (k-means may legitimately reach the same clustering from other seeds)
    X = data(seed=12)
    kwargs = dict(FIT_KWARGS, covariance_type="full", init_params=init_params, max_iter=0)
    a = GaussianMixture(random_state=0, **kwargs).fit(X)
    b = GaussianMixture(random_state=1, **kwargs).fit(X)
    assert not np.allclose(a.means_, b.means_) or not np.allclose(a.covariances_, b.covariances_)


def test_n_init_keeps_the_best_lower_bound(capsys):
    # four components on three overlapping clusters: random starts end in different optima
    X = data(seed=13, separation=2.0)
    kwargs = dict(
        n_components=4,
        covariance_type="full",
        init_params="random",
        tol=1e-4,
        max_iter=500,
        random_state=3,
    )
    best = GaussianMixture(n_init=5, verbose=1, **kwargs).fit(X)
    reported = [
        float(v)
        for v in re.findall(
            r"Initialization converged\..*lower bound (-?[0-9.]+)", capsys.readouterr().out
        )
    ]
    assert len(reported) == 5, "every run converges and reports its lower bound"
    assert max(reported) - min(reported) > 1e-3, "the runs should reach different optima"
    assert best.lower_bound_ == pytest.approx(max(reported), abs=1e-5)
    assert best.lower_bounds_[-1] == best.lower_bound_
    # the first run alone (same random_state) is never better
    first_only = GaussianMixture(n_init=1, **kwargs).fit(X)
    assert first_only.lower_bound_ == pytest.approx(reported[0], abs=1e-5)
    assert best.lower_bound_ >= first_only.lower_bound_
    # the kept parameters belong to the kept bound: one more E-step from them gives their
    # log-likelihood (the score), which EM keeps at or above the bound of its last E-step
    refit = GaussianMixture(
        n_components=4,
        covariance_type="full",
        tol=1e-4,
        max_iter=1,
        weights_init=best.weights_,
        means_init=best.means_,
        precisions_init=best.precisions_,
    )
    with pytest.warns(ConvergenceWarning):
        refit.fit(X)
    assert refit.lower_bound_ == pytest.approx(best.score(X), rel=1e-10)
    assert refit.lower_bound_ >= best.lower_bound_ - 1e-12


# -- the Dask engine: one compute per iteration, and its graph ----------------------
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("persist", [False, True])
def test_one_compute_per_em_iteration(covariance_type, persist):
    """One compute per iteration, plus exactly one for the whole fit if the data are
    persisted (read once, kept in memory)."""
    X = data(seed=14)
    start = starting_params(X, N_COMPONENTS, covariance_type, seed=9)
    model = GaussianMixture(
        covariance_type=covariance_type, persist=persist, **{**FIT_KWARGS, "tol": 1e-8}, **start
    )
    counter = ComputeCounter()
    with dask.config.set(scheduler="threads"), counter:
        model.fit(as_dask(X))
    assert model.converged_ and model.n_iter_ >= 5
    assert counter.count == model.n_iter_ + int(persist)

    # stopped by max_iter: still one compute for each of the iterations run
    stopped = GaussianMixture(
        covariance_type=covariance_type,
        persist=persist,
        **{**FIT_KWARGS, "tol": 1e-8, "max_iter": 3},
        **start,
    )
    counter = ComputeCounter()
    with dask.config.set(scheduler="threads"), counter, pytest.warns(ConvergenceWarning):
        stopped.fit(as_dask(X))
    assert stopped.n_iter_ == 3
    assert counter.count == 3 + int(persist)


@pytest.mark.parametrize("init_params", INIT_PARAMS)
def test_initialisation_adds_no_compute_to_the_iterations(init_params):
    X = data()
    kwargs = dict(FIT_KWARGS, covariance_type="full", init_params=init_params, random_state=0)
    init_only, full = ComputeCounter(), ComputeCounter()
    with dask.config.set(scheduler="threads"):
        with init_only:
            GaussianMixture(**{**kwargs, "max_iter": 0}).fit(as_dask(X))
        with full:
            model = GaussianMixture(**kwargs).fit(as_dask(X))
    assert model.converged_ and model.n_iter_ >= 2
    assert init_only.count >= 1
    assert full.count - init_only.count == model.n_iter_


def _keys(nested) -> list:
    out = []
    for item in nested:
        out.extend(_keys(item) if isinstance(item, list) else [item])
    return out


@pytest.mark.parametrize(
    ("n_blocks", "split_every"),
    [(1, 8), (2, 2), (7, 2), (7, 3), (8, 8), (9, 8), (10, 3), (27, 3), (28, 3), (20, 4)],
)
def test_iteration_graph_is_one_params_key_and_a_tree(n_blocks, split_every):
    rng = np.random.default_rng(n_blocks)
    chunks = tuple(int(c) for c in rng.integers(1, 12, size=n_blocks))
    X = data(seed=15, n_rows=sum(chunks), n_components=2)
    params = start_params(X, 2, "full", seed=10)
    Xd = as_dask(X, chunks)
    graph = DaskEngine(Xd, split_every=split_every).graph("estep", params)
    hlg = graph.__dask_graph__()
    dsk = dict(hlg)
    deps = {key: set(value) for key, value in hlg.get_all_dependencies().items()}
    x_keys = set(_keys(Xd.__dask_keys__()))

    # the Params are in exactly one key (its means' bytes in no other task)
    marker = params.means.tobytes()
    params_keys = [key for key, task in dsk.items() if marker in cloudpickle.dumps(task)]
    assert len(params_keys) == 1
    (params_key,) = params_keys
    assert not deps[params_key]

    # one task per block; each reads one block and the Params key
    blocks = {key for key in dsk if deps[key] & x_keys}
    assert len(blocks) == n_blocks
    for key in blocks:
        assert params_key in deps[key]
        assert len(deps[key] & x_keys) == 1
    assert {key for key in dsk if params_key in deps[key]} == blocks

    # above the blocks: a tree of fan-in <= split_every and depth ceil(log_s n)
    root = graph.key

    @functools.cache
    def height(key) -> int:
        if key in blocks:
            return 0
        children = deps[key]
        assert 1 <= len(children) <= split_every, f"fan-in of {key}: {len(children)}"
        assert children.isdisjoint(x_keys | {params_key})
        return 1 + max(height(child) for child in children)

    @functools.cache
    def shallowest(key) -> int:
        return 0 if key in blocks else 1 + min(shallowest(child) for child in deps[key])

    expected_depth = math.ceil(math.log(n_blocks, split_every) - 1e-12) if n_blocks > 1 else 0
    assert height(root) == expected_depth
    assert shallowest(root) == expected_depth
    reachable, todo = set(), [root]
    while todo:
        key = todo.pop()
        if key not in reachable:
            reachable.add(key)
            todo.extend(deps[key])
    assert blocks <= reachable
    assert reachable == set(dsk), "no task outside the reduction"
    n_internal = len(reachable - blocks - x_keys - {params_key})
    if n_blocks == 1:
        assert n_internal == 0 and root in blocks
    else:
        # a tree with fan-in <= s over n leaves has at least (n - 1) / (s - 1) inner nodes
        assert n_internal >= (n_blocks - 1) / (split_every - 1)

    # and the tree computes the statistics of all rows
    (total,) = dask.compute(graph, scheduler="sync")
    whole = chunk_stats(X, params).to_host()
    for name in ("resp_sum", "x_sum", "second", "log_lik"):
        assert_close(getattr(total, name), getattr(whole, name), 1e-12, name)
    assert total.n_rows == X.shape[0]
    assert total.n_nonfinite == 0 and total.first_nonfinite == math.inf


def test_predict_on_dask_is_lazy_and_equals_numpy():
    X = data(seed=16)
    start = starting_params(X, N_COMPONENTS, "full", seed=11)
    model = GaussianMixture(covariance_type="full", **FIT_KWARGS, **start).fit(X)
    Xd = as_dask(X)
    counter = ComputeCounter()
    with dask.config.set(scheduler="threads"), counter:
        labels = model.predict(Xd)
        proba = model.predict_proba(Xd)
        log_density = model.score_samples(Xd)
    assert counter.count == 0, "predicting on dask input must not compute"
    for lazy in (labels, proba, log_density):
        assert isinstance(lazy, da.Array)
        assert lazy.chunks[0] == DASK_CHUNKS
    assert proba.shape == (N_ROWS, N_COMPONENTS)
    with dask.config.set(scheduler="threads"):
        labels_np, proba_np, log_density_np = dask.compute(labels, proba, log_density)
    # the lazy arrays' declared dtypes and shapes are what computing gives
    lazy_and_computed = zip(
        (labels, proba, log_density), (labels_np, proba_np, log_density_np), strict=True
    )
    for lazy, computed in lazy_and_computed:
        assert lazy.dtype == computed.dtype and lazy.shape == computed.shape
    np.testing.assert_array_equal(labels_np, model.predict(X))
    assert_close(proba_np, model.predict_proba(X), 1e-12, "predict_proba")
    assert_close(log_density_np, model.score_samples(X), 1e-12, "score_samples")
    with dask.config.set(scheduler="threads"):
        assert model.score(Xd) == pytest.approx(model.score(X), rel=1e-12)
        assert model.bic(Xd) == pytest.approx(model.bic(X), rel=1e-12)
        assert model.aic(Xd) == pytest.approx(model.aic(X), rel=1e-12)


def test_predict_on_distributed_equals_numpy(dask_client):
    X = data(seed=16)
    start = starting_params(X, N_COMPONENTS, "tied", seed=11)
    model = GaussianMixture(covariance_type="tied", **FIT_KWARGS, **start).fit(X)
    labels = dask_client.compute(model.predict(as_dask(X))).result()
    log_density = dask_client.compute(model.score_samples(as_dask(X))).result()
    np.testing.assert_array_equal(labels, model.predict(X))
    assert_close(log_density, model.score_samples(X), 1e-12, "score_samples")


@pytest.mark.parametrize("malloc_tuned", [False, True], ids=["glibc-default", "malloc-tunable"])
def test_large_block_in_cache_sized_pieces_equals_the_whole_block(
    covariance_type, malloc_tuned, monkeypatch
):
    """A Zarr-chunk-sized block goes through the kernel in pieces (or whole under
    a malloc tunable): the same statistics, weights and non-finite row index."""
    set_malloc_tunable(monkeypatch, malloc_tuned)
    rng = np.random.default_rng(3)
    d = 4
    piece = kernel_piece_rows(covariance_type, 3, d)
    X = rng.normal(size=(3 * piece + 17, d)) * 3 + 1e3
    params = start_params(X, 3, covariance_type, seed=4)
    w = rng.uniform(0.0, 2.0, size=X.shape[0])
    assert (_pieces(X, params) is None) == malloc_tuned
    whole = chunk_stats(X, params, w, 5000)
    pieces = estep_block(X, w, 5000, params)
    for field in ("resp_sum", "x_sum", "second", "log_lik", "n_rows"):
        assert_close(getattr(pieces, field), getattr(whole, field), 1e-12, field)
    bad = X.copy()
    bad[[2 * piece + 5, 3 * piece + 1]] = np.nan
    stats = estep_block(bad, w, 5000, params)
    assert (stats.n_nonfinite, stats.first_nonfinite) == (2, 5000 + 2 * piece + 5)


@pytest.mark.parametrize(("n_components", "n_features"), [(1, 16), (8, 16), (32, 64), (512, 512)])
def test_kernel_pieces_keep_the_diag_stack_near_its_budget(n_components, n_features):
    """diag/spherical pieces shrink with K (their (K, rows, D) stack stays within
    STACK_BYTES, down to 256 rows); full/tied keep the engine's block size."""
    block = default_block_rows(n_components, n_features)
    for covariance_type in ("full", "tied"):
        assert kernel_piece_rows(covariance_type, n_components, n_features) == block
    for covariance_type in ("diag", "spherical"):
        rows = kernel_piece_rows(covariance_type, n_components, n_features)
        assert 1 <= rows <= block
        stack = 8 * n_components * n_features * rows
        assert stack <= STACK_BYTES or rows == 256
        assert rows == block or 2 * stack > STACK_BYTES or rows == 256


@pytest.mark.parametrize("malloc_tuned", [False, True], ids=["glibc-default", "malloc-tunable"])
def test_predictions_and_score_in_pieces_equal_the_whole_block(
    covariance_type, malloc_tuned, monkeypatch
):
    """Prediction kernels and the log-likelihood go through large blocks in the
    same pieces as the E-step: the same outputs, row for row, as the whole block."""
    set_malloc_tunable(monkeypatch, malloc_tuned)
    rng = np.random.default_rng(5)
    d, k = 4, 3
    X = rng.normal(size=(3 * kernel_piece_rows(covariance_type, k, d) + 17, d)) * 3 - 1e3
    params = start_params(X, k, covariance_type, seed=6)
    assert (_pieces(X, params) is None) == malloc_tuned
    for fn in (estep.score_samples_block, estep.predict_proba_block, estep.predict_block):
        whole = fn(X, params)
        pieces = rowwise_in_pieces(fn, X, params)
        assert pieces.shape == whole.shape
        if fn is estep.predict_block:
            np.testing.assert_array_equal(pieces, whole)
        else:
            assert_close(pieces, whole, 1e-12, fn.__name__)
    w = rng.uniform(0.0, 2.0, size=X.shape[0])
    bad = X.copy()
    bad[[7, X.shape[0] - 3]] = np.nan
    total = log_likelihood_block(bad, w, 100, params)
    finite = np.isfinite(bad).all(axis=1)
    want = float(np.sum(w[finite] * estep.score_samples_block(X[finite], params)))
    assert_close(total.log_lik, want, 1e-12, "log_lik")
    assert_close(total.weight, float(np.sum(w[finite])), 1e-12, "weight")
    assert (total.nonfinite.count, total.nonfinite.first) == (2, 107)
