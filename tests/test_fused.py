"""The fused compiled E-step kernel against the array-API kernel, and the kernel registry.

The array-API kernel (:func:`distmix.estep.chunk_stats`) is the reference: on
random, offset (1e6), float32, weighted, NaN-row and underflowing blocks of any
shape (one row, K = 1, D = 1 included) the compiled kernel's statistics agree to
1e-12 of each statistic's largest value, and counts and the first bad row
exactly. The registry picks the compiled kernel for NumPy blocks only, as
chosen, and a fit does not depend on the number of threads.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from distmix import GaussianMixture, estep, fused, kernels  # noqa: E402
from distmix.engines.local import LocalEngine  # noqa: E402
from distmix.params import Params  # noqa: E402
from distmix.tasks import run_block, run_map_block  # noqa: E402
from distmix.testing.engines import random_params as kit_random_params  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def random_params(rng, means, covariance_type, scale=1.0):
    """The conformance kit's random Params, their covariances times ``scale``."""
    params = kit_random_params(rng, means, covariance_type)
    if scale == 1.0:
        return params
    return Params.from_covariances(
        params.weights, params.means, params.covariances * scale, covariance_type
    )


def assert_same_stats(got, want, rtol=1e-12):
    got, want = got.to_host(), want.to_host()
    assert got.covariance_type == want.covariance_type
    np.testing.assert_array_equal(got.reference, want.reference)
    for name in ("n_rows", "n_nonfinite", "first_nonfinite"):
        assert getattr(got, name) == getattr(want, name), name
    for name in ("resp_sum", "x_sum", "second", "log_lik"):
        g, w = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        scale = float(np.max(np.abs(w), initial=0.0))
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale, err_msg=name)


def case(seed, n, d, k, covariance_type, *, offset=0.0, dtype=np.float64, weighted=False, bad=()):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, d)) * 2.0 + offset).astype(dtype)
    for i, row in enumerate(bad):
        X[row, i % d] = (np.nan, np.inf, -np.inf)[i % 3]
    finite = np.flatnonzero(np.all(np.isfinite(X), axis=1))
    means = X[rng.choice(finite, k)].astype(np.float64)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    if weighted:
        w[rng.random(n) < 0.1] = 0.0
    return X, w, random_params(rng, means, covariance_type)


#: the blocks every compiled task is compared on (``case``'s options by name)
CASES = {
    "plain": dict(n=500, d=4, k=3),
    "offset": dict(n=500, d=5, k=4, offset=1e6),
    "float32": dict(n=300, d=3, k=2, dtype=np.float32),
    "weighted": dict(n=400, d=3, k=3, weighted=True),
    "nan_rows": dict(n=200, d=3, k=2, bad=(7, 150, 199), weighted=True),
    "one_row": dict(n=1, d=3, k=2),
    "k1_d1": dict(n=90, d=1, k=1),
}
#: wider blocks: tiles of 128 (D = 20) and 64 rows (D = 40); narrower ones take 256
WIDE = {
    "d20": dict(n=300, d=20, k=3, weighted=True),
    "d40": dict(n=200, d=40, k=2, offset=1e6),
}


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    "kind",
    [
        "plain",
        "offset",
        "float32",
        "weighted",
        "nan_rows",
        "one_row",
        "k1_d1",
        "long",
        "d20",
        "d40",
    ],
)
def test_the_compiled_kernel_equals_the_array_api_kernel(covariance_type, kind):
    """(``d20`` and ``d40``: tiles of 128 and 64 rows; narrower blocks take 256.)"""
    options = {
        **CASES,
        "long": dict(n=5000, d=16, k=8),
        "d20": dict(n=700, d=20, k=3, weighted=True, bad=(3,)),
        "d40": dict(n=300, d=40, k=2, offset=1e6),
    }[kind]
    X, w, params = case(11, covariance_type=covariance_type, **options)
    got = fused.chunk_stats(X, params, w, 1000)
    want = estep.chunk_stats(X, params, w, 1000)
    assert_same_stats(got, want)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_underflowing_rows_add_nothing_and_minus_inf(covariance_type):
    """A finite row so far out that every density underflows adds nothing to the moments
    and −inf to the log-likelihood (weight > 0), as in the array-API kernel."""
    X, w, params = case(3, 50, 3, 2, covariance_type)
    params = random_params(np.random.default_rng(1), params.means, covariance_type, scale=1e-6)
    X = X.copy()
    X[10] = 1e200
    got = fused.chunk_stats(X, params)
    with np.errstate(over="ignore"):  # the array-API kernel's squares overflow on the way
        want = estep.chunk_stats(X, params)
    assert got.log_lik == want.log_lik == -np.inf
    for name in ("resp_sum", "x_sum", "second"):
        np.testing.assert_allclose(
            getattr(got, name), getattr(want, name), rtol=1e-12, atol=1e-300, err_msg=name
        )
    assert np.all(np.isfinite(got.second))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    d=st.integers(1, 6),
    k=st.integers(1, 5),
    covariance_type=st.sampled_from(COVARIANCE_TYPES),
    offset=st.sampled_from([0.0, -3.0, 1e6]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_shape(n, d, k, covariance_type, offset, weighted, seed):
    X, w, params = case(seed, n, d, k, covariance_type, offset=offset, weighted=weighted)
    assert_same_stats(fused.chunk_stats(X, params, w, 0), estep.chunk_stats(X, params, w, 0))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    "kind", ["plain", "offset", "float32", "weighted", "nan_rows", "k1_d1", "d40"]
)
def test_the_compiled_log_likelihood_equals_the_array_api_one(covariance_type, kind):
    options = {**CASES, **WIDE}[kind]
    X, w, params = case(12, covariance_type=covariance_type, **options)
    with kernels.use_kernel("compiled"):
        got = run_block("log_likelihood", X, w, 100, (params,))
    with kernels.use_kernel("array-api"):
        want = run_block("log_likelihood", X, w, 100, (params,))
    assert got.log_lik == pytest.approx(want.log_lik, rel=1e-12)
    assert got.weight == pytest.approx(want.weight, rel=1e-14)
    assert got.nonfinite == want.nonfinite


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    "kind", ["plain", "offset", "float32", "one_row", "k1_d1", "far_row", "d20", "d40"]
)
def test_the_compiled_predictions_equal_the_array_api_ones(covariance_type, kind):
    options = {
        **CASES,
        "far_row": dict(n=70, d=3, k=3),
        "d20": dict(n=300, d=20, k=3),
        "d40": dict(n=200, d=40, k=2),
    }[kind]
    X, _, params = case(13, covariance_type=covariance_type, **options)
    if kind == "far_row":  # every density of row 5 underflows: NaN responsibilities
        X[5] = 1e200
    results = {}
    for choice in ("compiled", "array-api"):
        with kernels.use_kernel(choice), np.errstate(all="ignore"):
            results[choice] = {
                name: run_map_block(name, X, 0, (params,))
                for name in ("score_samples", "predict_proba", "predict")
            }
    got, want = results["compiled"], results["array-api"]
    np.testing.assert_allclose(got["score_samples"], want["score_samples"], rtol=1e-12)
    np.testing.assert_allclose(got["predict_proba"], want["predict_proba"], rtol=0, atol=1e-12)
    assert got["predict"].dtype == want["predict"].dtype
    np.testing.assert_array_equal(got["predict"], want["predict"])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    "kind", ["plain", "offset", "float32", "weighted", "nan_rows", "k1_d1", "d20", "d40"]
)
def test_the_compiled_kmeans_tasks_equal_the_array_api_ones(covariance_type, kind):
    """Hard assignments by exact differences (compiled) and by the shifted expansion
    (array-API) agree on these blocks; statistics to 1e-12, counts exactly."""
    options = {**CASES, **WIDE}[kind]
    X, w, params = case(14, covariance_type=covariance_type, **options)
    centers = params.means
    shift = centers.mean(axis=0)
    results = {}
    for choice in ("compiled", "array-api"):
        with kernels.use_kernel(choice):
            results[choice] = {
                "kmeans": run_block("kmeans", X, w, 5, (centers, shift, covariance_type)),
                "kmeans_cost": run_block("kmeans_cost", X, w, 5, (centers, shift)),
                "nearest_weight": run_block("nearest_weight", X, w, 5, (centers, shift)),
            }
    got, want = results["compiled"], results["array-api"]
    assert_same_stats(got["kmeans"].stats, want["kmeans"].stats)
    assert got["kmeans"].inertia == pytest.approx(want["kmeans"].inertia, rel=1e-10)
    np.testing.assert_allclose(got["kmeans_cost"].values, want["kmeans_cost"].values, rtol=1e-10)
    np.testing.assert_allclose(
        got["nearest_weight"].values, want["nearest_weight"].values, rtol=1e-13
    )


def test_a_read_only_block_reads_as_a_writable_one():
    X, w, params = case(5, 200, 3, 2, "full")
    frozen = X.copy()
    frozen.setflags(write=False)
    a, b = fused.chunk_stats(X, params), fused.chunk_stats(frozen, params)
    np.testing.assert_array_equal(a.second, b.second)


# --------------------------------------------------------------------------- #
# the registry                                                                #
# --------------------------------------------------------------------------- #
def test_the_registry_picks_by_choice_and_block_type():
    X, w, params = case(2, 100, 3, 2, "diag")
    with kernels.use_kernel("array-api"):
        assert kernels.estep_kernel(X) is None
    with kernels.use_kernel("compiled"):
        assert kernels.estep_kernel(X) is fused.chunk_stats
        with pytest.raises(ValueError, match="NumPy blocks only"):
            kernels.estep_kernel(np.ma.masked_array(X).tolist())
    with kernels.use_kernel("auto"):
        assert kernels.estep_kernel(X) is fused.chunk_stats
        assert kernels.estep_kernel([[1.0, 2.0, 3.0]]) is None  # not NumPy: array-API
    with pytest.raises(ValueError, match="kernel='fast'"):
        kernels.set_kernel("fast")


def test_the_estep_task_runs_the_chosen_kernel():
    X, w, params = case(4, 3000, 4, 3, "full")
    with kernels.use_kernel("compiled"):
        compiled = run_block("estep", X, w, 0, (params,))
    with kernels.use_kernel("array-api"):
        reference = run_block("estep", X, w, 0, (params,))
    np.testing.assert_array_equal(compiled.second, fused.chunk_stats(X, params, w, 0).second)
    assert_same_stats(compiled, reference)


def test_a_compiled_fit_does_not_depend_on_the_number_of_threads():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(3000, 3)) + c for c in (0.0, 6.0, 12.0)])
    with kernels.use_kernel("compiled"):
        fits = []
        for threads in (1, 2):
            engine = LocalEngine(X, block_size=700, n_threads=threads)
            fits.append(engine.reduce("estep", random_params(rng, X[:3], "full")))
            rng = np.random.default_rng(0)
            X = np.concatenate([rng.normal(size=(3000, 3)) + c for c in (0.0, 6.0, 12.0)])
    np.testing.assert_array_equal(fits[0].second, fits[1].second)
    np.testing.assert_array_equal(fits[0].x_sum, fits[1].x_sum)


def test_a_compiled_fit_equals_the_array_api_fit():
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(2000, 3)) * s + c for s, c in ((1, 0), (0.5, 5), (2, 9))])
    fits = {}
    for choice in ("compiled", "array-api"):
        with kernels.use_kernel(choice):
            fits[choice] = GaussianMixture(3, random_state=0, tol=1e-8).fit(X)
    a, b = fits["compiled"], fits["array-api"]
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-10)
