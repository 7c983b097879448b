"""The SuffStats algebra, and the E-step kernel against an independent oracle.

Property-based (hypothesis): any cut of the rows into blocks, added as a tree of
any fan-in or in any order, gives the statistics of the single block; addition
is commutative and associative; pack/unpack round-trips exactly and checks its
schema; re-centring is exact. Example-based: ``chunk_stats`` equals statistics
computed row by row with SciPy; far-from-origin data keep their centred moments;
non-finite rows are counted and named by their global index.
"""

from __future__ import annotations

import warnings
from dataclasses import fields
from typing import Any

import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, mixture_data
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from distmix.estep import chunk_stats, resp_stats, score_samples_block
from distmix.mstep import m_step
from distmix.params import Params
from distmix.reduce import tree_sum
from distmix.suffstats import ReferenceMismatchError, SuffStats

RTOL = 1e-12
SETTINGS = settings(max_examples=60, deadline=None)


# -- problems ------------------------------------------------------------------
def random_params(rng: np.random.Generator, X: np.ndarray, k: int, covariance_type: str) -> Params:
    """Random but sensible Params: means near the data, covariances of the data's scale."""
    n, d = X.shape
    spread = float(np.std(X)) + 0.5
    weights = rng.dirichlet(np.full(k, 2.0))
    means = X[rng.integers(n, size=k)] + rng.normal(scale=0.3 * spread, size=(k, d))

    def spd() -> np.ndarray:
        a = rng.normal(size=(d, d)) * spread / np.sqrt(d)
        return a @ a.T + (0.3 * spread) ** 2 * np.eye(d)

    covariances = {
        "full": lambda: np.stack([spd() for _ in range(k)]),
        "tied": spd,
        "diag": lambda: rng.uniform(0.3, 2.0, size=(k, d)) * spread**2,
        "spherical": lambda: rng.uniform(0.3, 2.0, size=k) * spread**2,
    }[covariance_type]()
    return Params.from_covariances(weights, means, covariances, covariance_type)


@st.composite
def problems(draw: Any, max_rows: int = 40) -> tuple[np.ndarray, Params, np.ndarray | None]:
    """``(X, params, sample_weight)``: rows, Params and optional weights; some rows NaN/inf."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 4))
    covariance_type = draw(st.sampled_from(COVARIANCE_TYPES))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0) + rng.normal(scale=5.0, size=d)
    params = random_params(rng, X, k, covariance_type)
    weights = rng.uniform(0.0, 3.0, size=n) if draw(st.booleans()) else None
    bad = draw(st.sets(st.integers(0, n - 1), max_size=3))
    for i in bad:
        X[i, rng.integers(d)] = rng.choice([np.nan, np.inf, -np.inf])
    return X, params, weights


def blocks_of(X: np.ndarray, weights: np.ndarray | None, cuts: list[int]) -> list[tuple]:
    """``(block, weights, row_offset)`` for the cut points ``cuts``."""
    edges = [0, *cuts, X.shape[0]]
    return [
        (X[a:b], None if weights is None else weights[a:b], a)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]


@st.composite
def cut_points(draw: Any, n: int) -> list[int]:
    return sorted(draw(st.sets(st.integers(1, n - 1), max_size=12))) if n > 1 else []


def block_stats(
    X: np.ndarray, params: Params, weights: np.ndarray | None, cuts: list[int]
) -> list[SuffStats]:
    return [
        chunk_stats(block, params, w, row_offset=offset).to_host()
        for block, w, offset in blocks_of(X, weights, cuts)
    ]


# -- comparison -------------------------------------------------------------------
def field_scales(X: np.ndarray, params: Params, weights: np.ndarray | None) -> dict[str, float]:
    """Magnitude of the sum of absolute terms behind each statistic.

    Rounding error of a sum is relative to the sum of the absolute values of its
    terms, not to the (possibly cancelling) total: ``x_sum`` about a reference
    can be near zero. These bounds make a "1e-12 relative" comparison meaningful
    field by field.
    """
    finite = np.all(np.isfinite(X), axis=1)
    x = X[finite]
    w = np.ones(X.shape[0])[finite] if weights is None else weights[finite]
    total = float(np.sum(w)) or 1.0
    dev = np.max(np.abs(x[:, None, :] - params.means[None]), initial=1.0) if x.size else 1.0
    log_p = score_samples_block(x, params) if x.size else np.zeros(0)
    return {
        "resp_sum": total,
        "x_sum": total * dev,
        "second": total * dev**2 * X.shape[1],
        "log_lik": float(np.sum(w * np.abs(log_p))) or 1.0,
    }


def assert_stats_close(
    got: SuffStats, want: SuffStats, scales: dict[str, float], rtol: float = RTOL
) -> None:
    got, want = got.to_host(), want.to_host()
    assert got.covariance_type == want.covariance_type
    np.testing.assert_array_equal(got.reference, want.reference)
    for name in ("n_rows", "n_nonfinite", "first_nonfinite"):
        assert getattr(got, name) == getattr(want, name), name
    for name, scale in scales.items():
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=name)


def assert_stats_equal(a: SuffStats, b: SuffStats) -> None:
    """Bit-for-bit equality of every field."""
    a, b = a.to_host(), b.to_host()
    for f in fields(SuffStats):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "covariance_type":
            assert x == y
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f.name)


# -- any split, any tree, any order -------------------------------------------------
@SETTINGS
@given(data=st.data(), problem=problems())
def test_any_split_tree_and_order_gives_single_block_stats(data, problem):
    X, params, weights = problem
    n = X.shape[0]
    whole = chunk_stats(X, params, weights).to_host()
    scales = field_scales(X, params, weights)
    parts = block_stats(X, params, weights, data.draw(cut_points(n), label="cuts"))

    split_every = data.draw(st.integers(2, 6), label="split_every")
    assert_stats_close(tree_sum(parts, split_every), whole, scales)
    assert_stats_close(tree_sum(iter(parts), split_every), whole, scales)

    order = data.draw(st.permutations(range(len(parts))), label="order")
    total = parts[order[0]]
    for i in order[1:]:
        total = total + parts[i]
    assert_stats_close(total, whole, scales)


@SETTINGS
@given(problem=problems())
def test_nonfinite_rows_counted_with_global_first_index(problem):
    X, params, weights = problem
    bad = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
    whole = chunk_stats(X, params, weights, row_offset=1000).to_host()
    assert whole.n_nonfinite == len(bad)
    assert whole.first_nonfinite == (1000 + bad[0] if len(bad) else np.inf)
    assert whole.n_rows == X.shape[0]  # every row read, finite or not
    # the non-finite rows add exact nothing to the moments
    keep = np.setdiff1d(np.arange(X.shape[0]), bad)
    if keep.size:
        clean = chunk_stats(X[keep], params, None if weights is None else weights[keep]).to_host()
        assert_stats_close(
            SuffStats(
                **{
                    **vars(whole),
                    "n_rows": clean.n_rows,
                    "n_nonfinite": 0.0,
                    "first_nonfinite": np.inf,
                }
            ),
            clean,
            field_scales(X, params, weights),
        )
    else:
        np.testing.assert_array_equal(whole.resp_sum, 0.0)
        np.testing.assert_array_equal(whole.second, 0.0)
        assert whole.log_lik == 0.0


def test_nonfinite_first_row_is_the_minimum_over_blocks():
    X = mixture_data(0, n_rows=90)
    params = random_params(np.random.default_rng(0), X, 3, "full")
    X[[75, 31, 32, 88], [0, 1, 2, 0]] = [np.nan, np.inf, -np.inf, np.nan]
    # blocks added last-first, so the minimum must not depend on the order
    parts = block_stats(X, params, None, [30, 60])[::-1]
    total = tree_sum(parts, split_every=2)
    assert (total.n_nonfinite, total.first_nonfinite) == (4.0, 31.0)
    assert [p.first_nonfinite for p in parts] == [75.0, 31.0, np.inf]


# -- commutative, associative, identity --------------------------------------------
@SETTINGS
@given(data=st.data(), problem=problems())
def test_addition_commutative_associative_with_zero_identity(data, problem):
    X, params, weights = problem
    n = X.shape[0]
    cuts = data.draw(cut_points(n), label="cuts")
    parts = block_stats(X, params, weights, cuts)
    while len(parts) < 3:
        parts.append(parts[-1])
    a, b, c = parts[:3]
    assert_stats_equal(a + b, b + a)  # elementwise float addition commutes exactly
    assert_stats_close((a + b) + c, a + (b + c), field_scales(X, params, weights))
    zero = SuffStats.zeros(params.covariance_type, params.means)
    assert_stats_equal(a + zero, a)
    assert_stats_equal(zero + a, a)


def test_addition_of_wrong_type_is_not_implemented():
    stats = SuffStats.zeros("diag", np.zeros((2, 3)))
    with pytest.raises(TypeError):
        stats + 1.0  # noqa: B018


# -- pack / unpack -----------------------------------------------------------------
@SETTINGS
@given(problem=problems())
def test_pack_unpack_round_trip_is_exact(problem):
    X, params, weights = problem
    stats = chunk_stats(X, params, weights, row_offset=17)
    vector = stats.pack()
    k, d = params.means.shape
    assert vector.dtype == np.float64 and vector.ndim == 1
    assert vector.size == SuffStats.packed_size(params.covariance_type, k, d)
    back = SuffStats.unpack(vector, params.covariance_type, params.means)
    assert_stats_equal(back, stats)
    np.testing.assert_array_equal(back.pack(), vector)


@pytest.fixture
def packed(covariance_type: str) -> tuple[SuffStats, np.ndarray]:
    X = mixture_data(1, n_rows=50)
    params = random_params(np.random.default_rng(1), X, 3, covariance_type)
    stats = chunk_stats(X, params)
    return stats, stats.pack()


def test_unpack_rejects_wrong_size(packed):
    stats, vector = packed
    size = vector.size
    for bad in (vector[:-1], np.append(vector, 0.0), vector.reshape(1, -1)):
        with pytest.raises(ValueError, match=rf"has {size} values, got an array of shape"):
            SuffStats.unpack(bad, stats.covariance_type, stats.reference)


@pytest.mark.parametrize("position", [0, 2, 3], ids=["magic", "K", "D"])
def test_unpack_rejects_wrong_header(packed, position):
    stats, vector = packed
    bad = vector.copy()
    bad[position] += 1
    with pytest.raises(ValueError, match="does not match the expected schema"):
        SuffStats.unpack(bad, stats.covariance_type, stats.reference)


@pytest.mark.parametrize("packed_as", COVARIANCE_TYPES)
def test_unpack_rejects_wrong_covariance_type(packed_as):
    # with K = D = 1 every covariance type packs to the same size: only the header tells
    X = mixture_data(2, n_rows=20, n_features=1, n_components=1)
    params = random_params(np.random.default_rng(2), X, 1, packed_as)
    vector = chunk_stats(X, params).pack()
    for other in COVARIANCE_TYPES:
        if other == packed_as:
            continue
        assert SuffStats.packed_size(other, 1, 1) == vector.size
        with pytest.raises(ValueError, match="does not match the expected schema"):
            SuffStats.unpack(vector, other, params.means)
    # and with more features the size already differs
    X = mixture_data(2, n_rows=20, n_features=3, n_components=2)
    params = random_params(np.random.default_rng(2), X, 2, packed_as)
    vector = chunk_stats(X, params).pack()
    for other in COVARIANCE_TYPES:
        if other != packed_as:
            with pytest.raises(ValueError, match=f"covariance_type={other!r}"):
                SuffStats.unpack(vector, other, params.means)


# -- references -----------------------------------------------------------------------
def test_adding_different_references_raises(covariance_type):
    X = mixture_data(3, n_rows=60)
    rng = np.random.default_rng(3)
    p1 = random_params(rng, X, 3, covariance_type)
    p2 = Params.from_covariances(p1.weights, p1.means + 1e-9, p1.covariances, covariance_type)
    a, b = chunk_stats(X[:30], p1), chunk_stats(X[30:], p2)
    with pytest.raises(ReferenceMismatchError, match="different reference points"):
        a + b  # noqa: B018
    with pytest.raises(ReferenceMismatchError):
        tree_sum([a, a, b], split_every=2)
    # the same reference values in another array object add fine
    p3 = Params.from_covariances(p1.weights, p1.means.copy(), p1.covariances, covariance_type)
    assert_stats_close(a + chunk_stats(X[30:], p3), chunk_stats(X, p1), field_scales(X, p1, None))


def test_adding_different_covariance_types_raises():
    X = mixture_data(4, n_rows=40)
    rng = np.random.default_rng(4)
    p = random_params(rng, X, 3, "diag")
    q = Params.from_covariances(p.weights, p.means, p.covariances[:, 0], "spherical")
    with pytest.raises(
        ValueError, match="cannot add SuffStats of covariance_type 'diag' and 'spherical'"
    ):
        chunk_stats(X, p) + chunk_stats(X, q)  # noqa: B018


@st.composite
def resp_problems(draw: Any) -> tuple:
    """Rows, fixed responsibilities (every component gets mass) and two references."""
    seed = draw(st.integers(0, 2**32 - 1))
    n, d, k = draw(st.integers(2, 40)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    covariance_type = draw(st.sampled_from(COVARIANCE_TYPES))
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 2.0 + rng.normal(scale=10.0, size=d)
    resp = rng.dirichlet(np.ones(k), size=n)
    ref_a = X.mean(axis=0) + rng.normal(scale=2.0, size=(k, d))
    ref_b = ref_a + rng.normal(scale=2.0, size=(k, d))
    weights = rng.uniform(0.5, 2.0, size=n) if draw(st.booleans()) else None
    return X, resp, ref_a, ref_b, covariance_type, weights


@SETTINGS
@given(problem=resp_problems())
def test_recentre_equals_statistics_about_the_new_reference(problem):
    X, resp, ref_a, ref_b, covariance_type, weights = problem
    about_a = resp_stats(X, resp, ref_a, covariance_type, weights).to_host()
    about_b = resp_stats(X, resp, ref_b, covariance_type, weights).to_host()
    moved = about_a.recentre(ref_b)
    np.testing.assert_array_equal(moved.reference, ref_b)
    dev = max(np.abs(X[:, None] - ref_a[None]).max(), np.abs(X[:, None] - ref_b[None]).max())
    w = float(np.sum(about_a.resp_sum))
    scales = {"resp_sum": w, "x_sum": w * dev, "second": w * dev**2 * X.shape[1]}
    assert_stats_close(moved, about_b, scales, rtol=1e-11)
    assert_stats_close(moved.recentre(ref_a), about_a, scales, rtol=1e-11)


@SETTINGS
@given(problem=resp_problems())
def test_recentre_then_m_step_gives_the_same_params(problem):
    X, resp, ref_a, ref_b, covariance_type, weights = problem
    stats = resp_stats(X, resp, ref_a, covariance_type, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no component is empty here
        direct = m_step(stats, reg_covar=1e-6)
        moved = m_step(stats.recentre(ref_b), reg_covar=1e-6)
    # absolute scales of each quantity: rounding in the re-centring is relative to
    # them (the precisions add the covariances' conditioning, so they are left out)
    dev = max(np.abs(X[:, None] - ref_a[None]).max(), np.abs(X[:, None] - ref_b[None]).max())
    for name, scale in (("weights", 1.0), ("means", dev), ("covariances", dev**2)):
        a, b = getattr(moved, name), getattr(direct, name)
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * scale, err_msg=name)


# -- the kernel against a row-by-row oracle --------------------------------------------
def full_covariance(params: Params, k: int) -> np.ndarray:
    d = params.n_features
    cov = params.covariances
    return {
        "full": lambda: cov[k],
        "tied": lambda: cov,
        "diag": lambda: np.diag(cov[k]),
        "spherical": lambda: cov[k] * np.eye(d),
    }[params.covariance_type]()


def oracle_stats(X: np.ndarray, params: Params, weights: np.ndarray | None) -> dict[str, Any]:
    """Sufficient statistics by explicit loops over rows and components (SciPy densities)."""
    n, d = X.shape
    k = params.n_components
    w = np.ones(n) if weights is None else weights
    covs = [full_covariance(params, j) for j in range(k)]
    resp_sum, x_sum = np.zeros(k), np.zeros((k, d))
    second = np.zeros(
        {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
            params.covariance_type
        ]
    )
    log_lik = 0.0
    for i in range(n):
        log_p = np.array(
            [
                np.log(params.weights[j])
                + multivariate_normal.logpdf(X[i], params.means[j], covs[j])
                for j in range(k)
            ]
        )
        norm = logsumexp(log_p)
        log_lik += w[i] * norm
        for j in range(k):
            r = w[i] * np.exp(log_p[j] - norm)
            xc = X[i] - params.means[j]
            outer = r * np.outer(xc, xc)
            resp_sum[j] += r
            x_sum[j] += r * xc
            if params.covariance_type == "full":
                second[j] += outer
            elif params.covariance_type == "tied":
                second += outer
            elif params.covariance_type == "diag":
                second[j] += np.diag(outer)
            else:
                second[j] += np.trace(outer)
    return {"resp_sum": resp_sum, "x_sum": x_sum, "second": second, "log_lik": log_lik}


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunk_stats_matches_row_by_row_oracle(covariance_type, weighted, seed):
    rng = np.random.default_rng(seed)
    X = mixture_data(seed, n_rows=40, n_features=3, n_components=3, separation=2.0)
    params = random_params(rng, X, 3, covariance_type)
    weights = rng.uniform(0.0, 2.0, size=X.shape[0]) if weighted else None
    got = chunk_stats(X, params, weights).to_host()
    want = oracle_stats(X, params, weights)
    scales = field_scales(X, params, weights)
    for name, value in want.items():
        np.testing.assert_allclose(
            getattr(got, name), value, rtol=1e-11, atol=1e-11 * scales[name], err_msg=name
        )
    assert got.n_rows == X.shape[0] and got.n_nonfinite == 0 and got.first_nonfinite == np.inf
    np.testing.assert_array_equal(got.reference, params.means)
    # and the responsibilities genuinely mix components (the oracle test is not trivial)
    assert np.all(got.resp_sum > 1e-3 * got.resp_sum.sum())


# -- far from the origin ------------------------------------------------------------------
SHIFT = 1e8


def on_grid(a: np.ndarray) -> np.ndarray:
    """Round to multiples of 2⁻²⁰, so that ``a + 1e8`` is exact in float64."""
    return np.round(a * 2.0**20) / 2.0**20


@pytest.mark.parametrize("weighted", [False, True])
def test_far_from_origin_gives_the_same_centred_moments(covariance_type, weighted):
    rng = np.random.default_rng(5)
    X = on_grid(mixture_data(5, n_rows=300, separation=3.0))
    params = random_params(rng, X, 3, covariance_type)
    params = Params.from_covariances(
        params.weights, on_grid(params.means), params.covariances, covariance_type
    )
    far = Params.from_covariances(
        params.weights, params.means + SHIFT, params.covariances, covariance_type
    )
    weights = rng.uniform(0.0, 2.0, size=X.shape[0]) if weighted else None
    assert np.array_equal((X + SHIFT) - SHIFT, X)  # the shifted data are exact
    near_stats = chunk_stats(X, params, weights).to_host()
    far_stats = chunk_stats(X + SHIFT, far, weights).to_host()
    scales = field_scales(X, params, weights)
    for name, scale in scales.items():
        np.testing.assert_allclose(
            getattr(far_stats, name),
            getattr(near_stats, name),
            rtol=RTOL,
            atol=RTOL * scale,
            err_msg=name,
        )
    # and the M-step lands on the shifted Params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        near_new, far_new = m_step(near_stats, 1e-6, params), m_step(far_stats, 1e-6, far)
    np.testing.assert_allclose(far_new.means - SHIFT, near_new.means, rtol=0, atol=1e-7)
    np.testing.assert_allclose(far_new.covariances, near_new.covariances, rtol=1e-10)


def test_far_from_origin_off_grid_keeps_the_covariance():
    """Without exact inputs, only the representation error of the input remains.

    ``x + 1e8`` is rounded to ~7.5e-9, so centred moments of unit-scale data can
    agree to ~1e-8 at best; a raw ``Σ x xᵀ / N − μ μᵀ`` would be wrong by O(1).
    """
    X = mixture_data(6, n_rows=500, separation=3.0)
    params = random_params(np.random.default_rng(6), X, 3, "full")
    far = Params.from_covariances(params.weights, params.means + SHIFT, params.covariances, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        near_new = m_step(chunk_stats(X, params), 0.0, params)
        far_new = m_step(chunk_stats(X + SHIFT, far), 0.0, far)
    np.testing.assert_allclose(far_new.covariances, near_new.covariances, rtol=1e-6)
    np.testing.assert_allclose(far_new.means - SHIFT, near_new.means, rtol=0, atol=1e-6)
