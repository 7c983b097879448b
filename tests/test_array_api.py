"""Kernels across array namespaces: the same numbers on NumPy and elsewhere.

The kernels take their namespace from the block, so ``array_api_strict`` arrays
(which allow nothing beyond the standard) run them unchanged. On NumPy, ``full``
and ``tied`` take a per-component implementation and every other namespace the
batched one (see :mod:`distmix.estep`), so for those types these tests compare
two implementations, not one with itself. The tolerance is 1e-12, relative to
each output's magnitude; outputs stay in the input's namespace.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, cupy_or_skip, mixture_data, random_covariances

from distmix import init_kernels as init
from distmix.estep import (
    chunk_stats,
    log_resp_and_norm,
    predict_block,
    predict_proba_block,
    resp_stats,
    score_samples_block,
)
from distmix.nonfinite import NonFinite
from distmix.params import Params
from distmix.suffstats import SuffStats
from distmix.testing.engines import local_dask_computes

xps = pytest.importorskip("array_api_strict")

RTOL = 1e-12
N_ROWS, N_FEATURES, N_COMPONENTS = 257, 4, 3
OFFSET = 1000


def close(got: Any, want: Any, rtol: float = RTOL, name: str = "") -> None:
    """``got`` (any namespace) equals NumPy's ``want`` within ``rtol`` of the largest value."""
    got = np.asarray(to_np(got), dtype=np.float64)
    want = np.asarray(to_np(want), dtype=np.float64)
    assert got.shape == want.shape, name
    finite = np.isfinite(want)
    scale = float(np.max(np.abs(want[finite]), initial=1.0))
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=name)
    np.testing.assert_allclose(
        got[finite], want[finite], rtol=rtol, atol=rtol * scale, err_msg=name
    )


def to_np(a: Any) -> np.ndarray:
    """A host NumPy copy of an array of any namespace (through DLPack)."""
    if isinstance(a, (np.ndarray, np.generic, float, int)):
        return np.asarray(a)
    return np.asarray(np.from_dlpack(a))


def assert_stats_match(got: SuffStats, want: SuffStats) -> None:
    got, want = got.to_host(), want.to_host()
    for f in fields(SuffStats):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if f.name == "covariance_type":
            assert a == b
        elif f.name in ("n_rows", "n_nonfinite", "first_nonfinite"):
            assert a == b, f.name
        else:
            close(a, b, name=f.name)


def is_strict(a: Any) -> bool:
    return type(a).__module__.startswith("array_api_strict")


@pytest.fixture
def problem(covariance_type: str) -> tuple[np.ndarray, Params, np.ndarray]:
    """Rows (two of them NaN/inf), Params that mix the components, row weights."""
    rng = np.random.default_rng(11)
    X = mixture_data(
        11, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS, separation=2.0
    )
    means = X[rng.choice(N_ROWS, N_COMPONENTS, replace=False)]
    covariances = random_covariances(rng, N_COMPONENTS, N_FEATURES, covariance_type)
    params = Params.from_covariances(
        rng.dirichlet(np.full(N_COMPONENTS, 3.0)), means, covariances, covariance_type
    )
    X[[17, 200], [0, 3]] = [np.nan, -np.inf]
    weights = rng.uniform(0.0, 2.0, size=N_ROWS)
    return X, params, weights


# -- the E-step kernel -----------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_chunk_stats_strict_equals_numpy(problem, weighted):
    X, params, weights = problem
    w = weights if weighted else None
    want = chunk_stats(X, params, w, row_offset=OFFSET)
    got = chunk_stats(
        xps.asarray(X), params, None if w is None else xps.asarray(w), row_offset=OFFSET
    )
    # statistics stay in the input's namespace until moved to the host
    for name in ("resp_sum", "x_sum", "second", "log_lik"):
        assert is_strict(getattr(got, name)), name
        assert getattr(got, name).dtype == xps.float64, name
    assert_stats_match(got, want)
    assert got.to_host().n_nonfinite == 2.0 and got.to_host().first_nonfinite == OFFSET + 17
    # the packed wire format is the same too
    close(got.pack(), want.pack())


def test_chunk_stats_strict_float32_accumulates_in_float64(problem):
    X, params, weights = problem
    X32 = X.astype(np.float32)
    got = chunk_stats(xps.asarray(X32), params, xps.asarray(weights))
    for name in ("resp_sum", "x_sum", "second", "log_lik"):
        assert getattr(got, name).dtype == xps.float64, name
    # identical to the float32 values widened first: nothing was summed in float32
    assert_stats_match(got, chunk_stats(X32.astype(np.float64), params, weights))
    assert_stats_match(
        got, chunk_stats(xps.asarray(X32.astype(np.float64)), params, xps.asarray(weights))
    )


def test_chunk_stats_numpy_float32_accumulates_in_float64(problem):
    X, params, weights = problem
    X32 = X.astype(np.float32)
    got = chunk_stats(X32, params, weights).to_host()
    assert got.second.dtype == np.float64
    assert_stats_match(got, chunk_stats(X32.astype(np.float64), params, weights))


def test_resp_stats_strict_equals_numpy(problem):
    X, params, weights = problem
    resp = np.random.default_rng(1).dirichlet(np.ones(N_COMPONENTS), size=N_ROWS)
    ref = params.means
    want = resp_stats(X, resp, ref, params.covariance_type, weights, OFFSET)
    got = resp_stats(
        xps.asarray(X), xps.asarray(resp), ref, params.covariance_type, xps.asarray(weights), OFFSET
    )
    assert is_strict(got.second)
    assert_stats_match(got, want)


# -- rows of no density, and no branch on a value ------------------------------------
def far_rows_problem(covariance_type: str) -> tuple[np.ndarray, Params, np.ndarray, list[int]]:
    """Rows (one NaN) of which two lie at 1e200, where every squared distance overflows
    and every density underflows; weights, one of the far rows' 0."""
    rng = np.random.default_rng(17)
    X = mixture_data(17, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS)
    means = X[rng.choice(N_ROWS, N_COMPONENTS, replace=False)]
    covariances = random_covariances(rng, N_COMPONENTS, N_FEATURES, covariance_type)
    params = Params.from_covariances(
        np.full(N_COMPONENTS, 1 / N_COMPONENTS), means, covariances, covariance_type
    )
    far = [30, 31]
    X[far] = 1e200
    X[40, 1] = np.nan
    weights = rng.uniform(0.5, 2.0, size=N_ROWS)
    weights[31] = 0.0
    return X, params, weights, far


def test_rows_of_no_density_add_nothing_on_another_device(covariance_type):
    """Far rows add nothing to the moments (no 0 · inf = NaN from their overflowed
    squares) on the batched path of every type, on the second device; the one of weight
    > 0 makes the log-likelihood −inf, as on NumPy."""
    X, params, weights, far = far_rows_problem(covariance_type)
    device = xps.Device("device1")
    with np.errstate(over="ignore", invalid="ignore"):  # the squares overflow on the way
        got = chunk_stats(
            xps.asarray(X, device=device), params, xps.asarray(weights, device=device), OFFSET
        ).to_host()
        want = chunk_stats(X, params, weights, OFFSET).to_host()
    kept = np.delete(np.arange(N_ROWS), far)
    without = chunk_stats(X[kept], params, weights[kept]).to_host()
    for name in ("resp_sum", "x_sum", "second"):
        assert np.all(np.isfinite(getattr(got, name))), name
        close(getattr(got, name), getattr(without, name), name=name)
        close(getattr(got, name), getattr(want, name), name=name)
    assert got.log_lik == want.log_lik == -np.inf
    assert got.n_nonfinite == 1.0 and got.first_nonfinite == OFFSET + 40


def _refuse_to_compute(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the kernel read a value of its block while building its statistics")


def test_chunk_stats_reads_no_value_of_its_block(covariance_type):
    """On dask blocks (the array-API namespace of dask.array) the kernel builds its
    statistics as a graph without computing anything: it never branches on a value,
    which on a GPU would be a wait for the device in every block (the ``if
    bool(xp.any(...))`` it once had). Moving them to the host is one computation
    (on a GPU, one copy and one wait, not one per field). Computed, the statistics
    are NumPy's, rows of no density included."""
    X, params, weights, _ = far_rows_problem(covariance_type)
    with dask.config.set(scheduler=_refuse_to_compute):
        lazy = chunk_stats(
            da.from_array(X, chunks=(100, -1)), params, da.from_array(weights, chunks=100), OFFSET
        )
    assert isinstance(lazy.second, da.Array)
    # the sync scheduler computes in this thread, under this errstate
    with dask.config.set(scheduler="sync"), np.errstate(over="ignore", invalid="ignore"):
        with local_dask_computes() as computes:
            got = lazy.to_host()
        want = chunk_stats(X, params, weights, OFFSET)
    assert computes.count == 1
    assert_stats_match(got, want)


# -- prediction kernels --------------------------------------------------------------
@pytest.fixture
def finite_problem(problem):
    X, params, weights = problem
    return X[np.all(np.isfinite(X), axis=1)], params


def test_log_resp_and_norm_strict_equals_numpy(finite_problem):
    X, params = finite_problem
    log_resp, log_norm = log_resp_and_norm(xps.asarray(X), params)
    assert is_strict(log_resp) and is_strict(log_norm)
    assert log_resp.dtype == xps.float64
    want_resp, want_norm = log_resp_and_norm(X, params)
    close(to_np(log_resp), want_resp, name="log_resp")
    close(to_np(log_norm), want_norm, name="log_norm")


def test_predict_proba_and_score_samples_strict_equal_numpy(finite_problem):
    X, params = finite_problem
    proba = predict_proba_block(xps.asarray(X), params)
    scores = score_samples_block(xps.asarray(X), params)
    assert is_strict(proba) and is_strict(scores)
    close(to_np(proba), predict_proba_block(X, params), name="proba")
    close(to_np(scores), score_samples_block(X, params), name="score_samples")
    np.testing.assert_allclose(to_np(proba).sum(axis=1), 1.0, rtol=1e-12)
    labels = to_np(predict_block(xps.asarray(X), params))
    want = predict_block(X, params)
    # labels agree wherever the top two responsibilities are not a near tie
    p = np.sort(predict_proba_block(X, params), axis=1)
    clear = p[:, -1] - p[:, -2] > 1e-9
    np.testing.assert_array_equal(labels[clear], want[clear])


def test_prediction_float32_in_float64_out(finite_problem):
    X, params = finite_problem
    X32 = X.astype(np.float32)
    for block in (X32, xps.asarray(X32)):
        log_resp, log_norm = log_resp_and_norm(block, params)
        assert to_np(log_resp).dtype == np.float64 and to_np(log_norm).dtype == np.float64
        close(to_np(log_norm), score_samples_block(X32.astype(np.float64), params))


# -- initialisation block functions ----------------------------------------------------
@pytest.fixture
def init_problem():
    X = mixture_data(
        12, n_rows=N_ROWS, n_features=N_FEATURES, n_components=N_COMPONENTS, shift=50.0
    )
    X[[9, 130], [1, 2]] = [np.inf, np.nan]
    rng = np.random.default_rng(12)
    finite = X[np.all(np.isfinite(X), axis=1)]
    centers = finite[rng.choice(finite.shape[0], 5, replace=False)]
    shift = centers[0]
    weights = rng.uniform(0.0, 2.0, size=N_ROWS)
    return X, weights, centers, shift


def test_kmeans_block_strict_equals_numpy(init_problem, covariance_type):
    X, w, centers, shift = init_problem
    want = init.kmeans_block(X, w, OFFSET, centers, shift, covariance_type).to_host()
    got = init.kmeans_block(xps.asarray(X), xps.asarray(w), OFFSET, centers, shift, covariance_type)
    assert is_strict(got.stats.second)
    got = got.to_host()
    assert_stats_match(got.stats, want.stats)
    close(got.inertia, want.inertia, name="inertia")
    assert got.stats.first_nonfinite == OFFSET + 9


def test_cost_and_nearest_weight_blocks_strict_equal_numpy(init_problem):
    X, w, centers, shift = init_problem
    close(
        init.cost_block(xps.asarray(X), xps.asarray(w), OFFSET, centers, shift).values,
        init.cost_block(X, w, OFFSET, centers, shift).values,
    )
    got = init.nearest_weight_block(xps.asarray(X), xps.asarray(w), OFFSET, centers, shift).values
    want = init.nearest_weight_block(X, w, OFFSET, centers, shift).values
    close(got, want)
    np.testing.assert_allclose(want.sum(), w[np.all(np.isfinite(X), axis=1)].sum(), rtol=1e-12)


def test_sample_block_strict_equals_numpy(init_problem):
    X, w, centers, shift = init_problem
    phi = float(init.cost_block(X, w, OFFSET, centers, shift).values[0])
    args = (OFFSET, centers, shift, phi, 20.0, 3, 1)
    want = init.sample_block(X, w, *args)
    got = init.sample_block(xps.asarray(X), xps.asarray(w), *args)
    assert want.index.size > 0  # the draw is not empty, so the comparison has content
    np.testing.assert_array_equal(got.index, want.index)
    np.testing.assert_array_equal(got.rows, want.rows)
    np.testing.assert_array_equal(want.rows, X[want.index - OFFSET])


def test_random_resp_and_nonfinite_blocks_strict_equal_numpy(init_problem, covariance_type):
    X, w, centers, _ = init_problem
    reference = centers[:N_COMPONENTS]
    want = init.random_resp_block(X, w, OFFSET, reference, covariance_type, 5)
    got = init.random_resp_block(
        xps.asarray(X), xps.asarray(w), OFFSET, reference, covariance_type, 5
    )
    assert is_strict(got.resp_sum)
    assert_stats_match(got, want)
    assert init.nonfinite_block(xps.asarray(X), None, OFFSET) == NonFinite(2.0, OFFSET + 9.0)
    assert init.nonfinite_block(X, None, OFFSET) == NonFinite(2.0, OFFSET + 9.0)


# -- CuPy on a GPU ------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_cupy_kernels_equal_numpy(covariance_type):
    cp = cupy_or_skip()
    rng = np.random.default_rng(13)
    X = mixture_data(13, n_rows=5000, n_features=5, n_components=4)
    X[[10, 4000], [0, 4]] = np.nan
    weights = rng.uniform(0.0, 2.0, size=X.shape[0])
    k = 4
    covariances = random_covariances(rng, k, 5, covariance_type)
    finite = np.all(np.isfinite(X), axis=1)
    params = Params.from_covariances(np.full(k, 1 / k), X[finite][:k], covariances, covariance_type)

    got = chunk_stats(cp.asarray(X), params, cp.asarray(weights), row_offset=OFFSET)
    assert isinstance(got.second, cp.ndarray)  # stays on the device until moved
    assert_stats_match(got, chunk_stats(X, params, weights, row_offset=OFFSET))
    for float32 in (False, True):
        Xf = X[finite].astype(np.float32) if float32 else X[finite]
        proba = predict_proba_block(cp.asarray(Xf), params)
        assert isinstance(proba, cp.ndarray) and proba.dtype == cp.float64
        close(proba.get(), predict_proba_block(Xf.astype(np.float64), params))
        close(
            score_samples_block(cp.asarray(Xf), params).get(),
            score_samples_block(Xf.astype(np.float64), params),
        )
