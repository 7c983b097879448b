"""M-step (against direct formulas, reg_covar, the empty-component policy), Params
validation and conventions, and the grouping of the tree reductions."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pytest
from conftest import mixture_data, random_covariances

from distmix import EmptyComponentWarning
from distmix.estep import chunk_stats, resp_stats
from distmix.mstep import m_step
from distmix.params import Params
from distmix.reduce import dask_tree_sum, tree_depth, tree_sum

D = 3


# -- helpers -------------------------------------------------------------------
def full_form(covariances: np.ndarray, covariance_type: str, k: int) -> np.ndarray:
    """Covariances as a ``(K, D, D)`` stack, whatever their type."""
    d = D
    return {
        "full": lambda: covariances,
        "tied": lambda: np.broadcast_to(covariances, (k, d, d)),
        "diag": lambda: np.stack([np.diag(c) for c in covariances]),
        "spherical": lambda: np.stack([c * np.eye(d) for c in covariances]),
    }[covariance_type]()


def reg_form(reg: float, covariance_type: str, k: int) -> np.ndarray:
    return {
        "full": lambda: np.broadcast_to(reg * np.eye(D), (k, D, D)),
        "tied": lambda: reg * np.eye(D),
        "diag": lambda: np.full((k, D), reg),
        "spherical": lambda: np.full(k, reg),
    }[covariance_type]()


def direct_m_step(
    X: np.ndarray, resp: np.ndarray, covariance_type: str, reg: float
) -> dict[str, np.ndarray]:
    """Weights, means and covariances straight from responsibilities (no references)."""
    nk = resp.sum(axis=0)
    means = resp.T @ X / nk[:, None]
    full = np.stack(
        [((X - means[k]).T * resp[:, k]) @ (X - means[k]) / nk[k] for k in range(resp.shape[1])]
    )
    cov = {
        "full": lambda: full,
        "tied": lambda: np.einsum("k,kij->ij", nk, full) / nk.sum(),
        "diag": lambda: np.diagonal(full, axis1=1, axis2=2),
        "spherical": lambda: np.trace(full, axis1=1, axis2=2) / D,
    }[covariance_type]()
    return {
        "weights": nk / nk.sum(),
        "means": means,
        "covariances": cov + reg_form(reg, covariance_type, len(nk)),
    }


# -- the M-step ------------------------------------------------------------------
@pytest.mark.parametrize("reference_offset", [0.0, 3.0, 1e6])
def test_m_step_matches_direct_formulas(covariance_type, reference_offset):
    rng = np.random.default_rng(0)
    X = mixture_data(0, n_rows=300, n_features=D) + reference_offset
    resp = rng.dirichlet(np.ones(3), size=X.shape[0])
    reference = X[:3] + rng.normal(size=(3, D))
    params = m_step(resp_stats(X, resp, reference, covariance_type), reg_covar=1e-4)
    want = direct_m_step(X, resp, covariance_type, 1e-4)
    np.testing.assert_allclose(params.weights, want["weights"], rtol=1e-13)
    np.testing.assert_allclose(
        params.means, want["means"], rtol=1e-12, atol=1e-12 * (1 + reference_offset)
    )
    # covariances: relative to the data's spread (about 10), never to the offset
    np.testing.assert_allclose(params.covariances, want["covariances"], rtol=1e-10, atol=1e-10)


def _blas_threads() -> list[tuple[str, int]]:
    from threadpoolctl import threadpool_info

    return sorted(
        (i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"
    )


def test_m_step_runs_on_one_blas_thread_and_restores_it(monkeypatch):
    """During the M-step every BLAS library runs one thread; afterwards (also after
    an error) each has its own count back."""
    import distmix.mstep

    before = _blas_threads()
    inside: list[list[tuple[str, int]]] = []
    body = distmix.mstep._m_step

    def observed(*args):
        inside.append(_blas_threads())
        return body(*args)

    monkeypatch.setattr(distmix.mstep, "_m_step", observed)
    X = mixture_data(2, n_rows=200, n_features=D)
    stats = resp_stats(X, np.full((200, 3), 1 / 3), X[:3], "full")
    assert m_step(stats, reg_covar=1e-6).n_components == 3
    assert inside and all(n == 1 for _, n in inside[0])
    assert _blas_threads() == before
    with pytest.raises(ValueError, match="total weight"):
        m_step(stats.scale(0.0), reg_covar=1e-6)
    assert _blas_threads() == before


def test_blas_limit_is_restored_when_threads_overlap():
    """The limit is process-wide: M-steps on two threads that enter and leave it in
    any interleaving still leave every BLAS library with its own count."""
    from concurrent.futures import ThreadPoolExecutor

    from distmix._blas import one_blas_thread

    before = _blas_threads()
    X = mixture_data(2, n_rows=200, n_features=D)
    stats = resp_stats(X, np.full((200, 3), 1 / 3), X[:3], "full")

    def many(_):
        for _ in range(300):
            m_step(stats, reg_covar=1e-6)
            with one_blas_thread():
                pass

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(many, range(4)))
    assert _blas_threads() == before


def test_reg_covar_is_added(covariance_type):
    X = mixture_data(1, n_rows=200, n_features=D)
    rng = np.random.default_rng(1)
    params = Params.from_covariances(
        np.full(3, 1 / 3), X[:3], random_covariances(rng, 3, D, covariance_type), covariance_type
    )
    stats = chunk_stats(X, params)
    bare = m_step(stats, reg_covar=0.0)
    for reg in (1e-6, 0.25):
        with_reg = m_step(stats, reg_covar=reg)
        np.testing.assert_allclose(
            with_reg.covariances - bare.covariances,
            reg_form(reg, covariance_type, 3),
            rtol=1e-9,
            atol=1e-14,
        )
        np.testing.assert_array_equal(with_reg.means, bare.means)
        np.testing.assert_array_equal(with_reg.weights, bare.weights)


def test_m_step_rejects_zero_total_weight():
    X = mixture_data(2, n_rows=20, n_features=D)
    params = Params.from_covariances(np.full(3, 1 / 3), X[:3], np.ones(3), "spherical")
    with pytest.raises(ValueError, match="total weight of the rows is zero"):
        m_step(chunk_stats(X, params, np.zeros(20)), 1e-6)


# -- empty components ------------------------------------------------------------
@pytest.fixture
def empty_setup(covariance_type: str) -> tuple[np.ndarray, Params]:
    """Data near the origin and Params whose component 1 sits 1e3 away: its
    responsibilities underflow to exact zeros."""
    X = mixture_data(3, n_rows=300, n_features=D, n_components=2, separation=3.0)
    rng = np.random.default_rng(3)
    means = np.stack([X[0], np.full(D, 1e3), X[1]])
    params = Params.from_covariances(
        np.array([0.4, 0.2, 0.4]),
        means,
        random_covariances(rng, 3, D, covariance_type),
        covariance_type,
    )
    return X, params


def test_empty_component_keeps_previous_mean_and_covariance(empty_setup, covariance_type):
    X, previous = empty_setup
    stats = chunk_stats(X, previous).to_host()
    assert stats.resp_sum[1] == 0.0
    with pytest.warns(EmptyComponentWarning, match=r"component\(s\) \[1\]") as caught:
        new = m_step(stats, 1e-6, previous=previous)
    assert caught[0].filename == __file__  # the warning points at m_step's caller
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        assert np.all(np.isfinite(getattr(new, name))), name
    np.testing.assert_array_equal(new.means[1], previous.means[1])
    if covariance_type != "tied":  # a tied covariance belongs to every component
        np.testing.assert_array_equal(new.covariances[1], previous.covariances[1])
    assert 0.0 < new.weights[1] < 1e-12
    np.testing.assert_allclose(new.weights.sum(), 1.0, rtol=1e-15)
    # the other components are estimated as usual
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resp = np.exp(np.asarray(chunk_log_resp(X, previous)))
    want = direct_m_step(X, resp[:, [0, 2]], covariance_type, 1e-6)
    np.testing.assert_allclose(new.means[[0, 2]], want["means"], rtol=1e-12, atol=1e-12)
    if covariance_type != "tied":
        np.testing.assert_allclose(new.covariances[[0, 2]], want["covariances"], rtol=1e-10)
    else:
        np.testing.assert_allclose(new.covariances, want["covariances"], rtol=1e-10)


def chunk_log_resp(X: np.ndarray, params: Params) -> Any:
    from distmix.estep import log_resp_and_norm

    return log_resp_and_norm(X, params)[0]


def test_empty_component_no_warning_when_all_components_get_rows(covariance_type):
    X = mixture_data(4, n_rows=300, n_features=D)
    rng = np.random.default_rng(4)
    params = Params.from_covariances(
        np.full(3, 1 / 3), X[:3], random_covariances(rng, 3, D, covariance_type), covariance_type
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyComponentWarning)
        m_step(chunk_stats(X, params), 1e-6, previous=params)


def pooled_covariance(
    X: np.ndarray, labels: np.ndarray, covariance_type: str, k: int, reg: float
) -> np.ndarray:
    """Within-component scatter of all rows about their own component's mean, / N."""
    scatter = np.zeros((D, D))
    for j in np.unique(labels):
        xc = X[labels == j] - X[labels == j].mean(axis=0)
        scatter += xc.T @ xc
    pooled = scatter / X.shape[0]
    return {
        "full": lambda: np.broadcast_to(pooled + reg * np.eye(D), (k, D, D)),
        "tied": lambda: pooled + reg * np.eye(D),
        "diag": lambda: np.broadcast_to(np.diag(pooled) + reg, (k, D)),
        "spherical": lambda: np.full(k, np.trace(pooled) / D + reg),
    }[covariance_type]()


def test_empty_component_at_init_takes_reference_and_pooled_covariance(covariance_type):
    X = mixture_data(5, n_rows=240, n_features=D, n_components=3)
    rng = np.random.default_rng(5)
    labels = rng.choice([0, 2, 3], size=X.shape[0])  # component 1 gets no row
    resp = np.eye(4)[labels]
    reference = X[:4] + 0.5
    stats = resp_stats(X, resp, reference, covariance_type)
    with pytest.warns(EmptyComponentWarning, match=r"component\(s\) \[1\]"):
        new = m_step(stats, reg_covar=1e-3)
    np.testing.assert_array_equal(new.means[1], reference[1])
    pooled = pooled_covariance(X, labels, covariance_type, 4, 1e-3)
    if covariance_type == "tied":
        np.testing.assert_allclose(new.covariances, pooled, rtol=1e-10)
    else:
        np.testing.assert_allclose(new.covariances[1], pooled[1], rtol=1e-10)
        # and the others are their own components' covariances
        want = direct_m_step(X, resp[:, [0, 2, 3]], covariance_type, 1e-3)["covariances"]
        np.testing.assert_allclose(new.covariances[[0, 2, 3]], want, rtol=1e-10)
    assert np.all(np.isfinite(new.precisions_cholesky))


def test_empty_component_through_a_fit_never_gives_nan(covariance_type):
    """The estimator's EM loop applies the same policy (and warns) instead of failing."""
    from distmix import GaussianMixture

    X = mixture_data(6, n_rows=200, n_features=D, n_components=2)
    means_init = np.stack([X[0], X[1], np.full(D, 1e3)])
    gm = GaussianMixture(3, covariance_type=covariance_type, means_init=means_init, random_state=0)
    with pytest.warns(EmptyComponentWarning):
        gm.fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    np.testing.assert_array_equal(gm.means_[2], means_init[2])


# -- Params -----------------------------------------------------------------------
def make(
    covariance_type: str, seed: int = 0, k: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.dirichlet(np.ones(k)),
        rng.normal(size=(k, D)),
        random_covariances(rng, k, D, covariance_type),
    )


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.5, 0.6, 0.1], r"weights must sum to 1, but they sum to 1\.2"),
        ([1.2, -0.1, -0.1], r"weights must lie in \[0, 1\]"),
        ([0.5, np.nan, 0.5], r"weights must lie in \[0, 1\]"),
        ([0.5, 0.5], r"weights must have shape \(n_components,\) = \(3,\), got \(2,\)"),
    ],
)
def test_params_rejects_bad_weights(covariance_type, weights, match):
    _, means, cov = make(covariance_type)
    with pytest.raises(ValueError, match=match):
        Params.from_covariances(np.array(weights), means, cov, covariance_type)


def test_params_accepts_weights_within_rounding():
    w, means, cov = make("diag")
    w = w / w.sum() * (1 + 1e-9)
    Params.from_covariances(w, means, cov, "diag")


@pytest.mark.parametrize(
    ("covariance_type", "bad_index", "match"),
    [
        ("full", 1, r"covariances_\[1\] is not positive-definite"),
        ("tied", None, r"covariances_ is not positive-definite"),
        ("diag", 2, r"covariances_\[2\] is not positive-definite"),
        ("spherical", 0, r"covariances_\[0\] is not positive-definite"),
    ],
)
def test_params_rejects_non_positive_definite_covariances(covariance_type, bad_index, match):
    w, means, cov = make(covariance_type)
    cov = cov.copy()
    if covariance_type == "tied":
        cov[0, 0] = -1.0
    elif covariance_type == "full":
        cov[bad_index] = np.diag([1.0, -1.0, 1.0])
    else:
        cov[bad_index] = 0.0
    with pytest.raises(ValueError, match=match + ".*increase reg_covar"):
        Params.from_covariances(w, means, cov, covariance_type)


def test_params_rejects_nonfinite_covariances_and_means():
    w, means, cov = make("full")
    bad = cov.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"covariances_\[0\] contains NaN or infinity"):
        Params.from_covariances(w, means, bad, "full")
    bad_means = means.copy()
    bad_means[1, 1] = np.inf
    with pytest.raises(ValueError, match="means contain NaN or infinity"):
        Params.from_covariances(w, bad_means, cov, "full")


@pytest.mark.parametrize(
    ("covariance_type", "shape"),
    [
        ("full", (2, D, D)),
        ("full", (3, D, D + 1)),
        ("tied", (3, D, D)),
        ("diag", (3, D + 1)),
        ("spherical", (2,)),
    ],
)
def test_params_rejects_wrong_covariance_shapes(covariance_type, shape):
    w, means, _ = make(covariance_type)
    u = np.ones(shape)
    with pytest.raises(
        ValueError, match=rf"for covariance_type='{covariance_type}' must have shape"
    ):
        Params(covariance_type, w, means, u, u)


def test_params_rejects_wrong_means_shape_and_unknown_type():
    w, means, cov = make("diag")
    with pytest.raises(ValueError, match=r"means must have shape \(n_components, n_features\)"):
        Params.from_covariances(w, means.ravel(), cov.ravel(), "diag")
    with pytest.raises(ValueError, match="'full', 'tied', 'diag', 'spherical'"):
        Params("diagonal", w, means, cov, cov)  # type: ignore[arg-type]


def test_params_rejects_asymmetric_precisions():
    w, means, cov = make("full")
    prec = np.linalg.inv(cov)
    prec[0, 0, 1] += 0.1
    with pytest.raises(ValueError, match=r"precisions_init\[0\] is not symmetric"):
        Params.from_precisions(w, means, prec, "full")


def test_params_are_immutable_copies(covariance_type):
    w, means, cov = make(covariance_type)
    params = Params.from_covariances(w, means, cov, covariance_type)
    means[0, 0] += 1.0
    assert params.means[0, 0] != means[0, 0]
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(params, name)[...] = 0.0


def to_precisions(cov: np.ndarray, covariance_type: str) -> np.ndarray:
    return np.linalg.inv(cov) if covariance_type in ("full", "tied") else 1.0 / cov


def test_precisions_cholesky_is_upper_triangular_with_u_ut_equal_precision(covariance_type):
    w, means, cov = make(covariance_type, seed=7)
    precision = to_precisions(cov, covariance_type)
    for params in (
        Params.from_covariances(w, means, cov, covariance_type),
        Params.from_precisions(w, means, precision, covariance_type),
    ):
        u = params.precisions_cholesky
        if covariance_type in ("full", "tied"):
            stack = u if covariance_type == "full" else u[None]
            assert np.all(np.tril(stack, k=-1) == 0.0), "U must be upper triangular"
            assert np.all(np.diagonal(stack, axis1=1, axis2=2) > 0)
            np.testing.assert_allclose(
                stack @ np.swapaxes(stack, 1, 2), np.reshape(precision, stack.shape), rtol=1e-10
            )
        else:
            np.testing.assert_allclose(u**2, precision, rtol=1e-13)
        np.testing.assert_allclose(params.precisions, precision, rtol=1e-10)
        # log det U = −½ log det Σ per component
        log_det_cov = np.linalg.slogdet(full_form(cov, covariance_type, 3))[1]
        np.testing.assert_allclose(params.log_det_cholesky, -0.5 * log_det_cov, rtol=1e-12)


def test_from_precisions_from_covariances_round_trip(covariance_type):
    w, means, cov = make(covariance_type, seed=8)
    a = Params.from_covariances(w, means, cov, covariance_type)
    b = Params.from_precisions(w, means, a.precisions, covariance_type)
    np.testing.assert_allclose(b.covariances, cov, rtol=1e-10)
    np.testing.assert_allclose(b.precisions_cholesky, a.precisions_cholesky, rtol=1e-10)
    c = Params.from_covariances(w, means, b.covariances, covariance_type)
    np.testing.assert_allclose(c.precisions, a.precisions, rtol=1e-10)
    assert a.allclose(b) and b.allclose(c)
    np.testing.assert_array_equal(b.weights, w)
    np.testing.assert_array_equal(b.means, means)


# -- tree reductions ---------------------------------------------------------------
@dataclass(frozen=True)
class Grouping:
    """A partial result whose ``+`` records the grouping instead of a value."""

    tree: Any

    def __add__(self, other: Grouping) -> Grouping:
        return Grouping((self.tree, other.tree))


def dask_grouping(n: int, split_every: int) -> tuple[Any, dict]:
    leaves = [dask.delayed(Grouping(i), pure=True) for i in range(n)]
    total = dask_tree_sum(leaves, split_every, "grouping")
    (result,) = dask.compute(total, scheduler="sync")
    return result.tree, dict(total.dask)


def depth_of(tree: Any) -> int:
    return 0 if not isinstance(tree, tuple) else 1 + max(depth_of(t) for t in tree)


def leaves_of(tree: Any) -> list[int]:
    return [tree] if not isinstance(tree, tuple) else [x for t in tree for x in leaves_of(t)]


@pytest.mark.parametrize("split_every", [2, 3, 4, 8])
def test_tree_sum_groups_exactly_like_dask_tree_sum(split_every):
    for n in range(1, 80):
        local = tree_sum([Grouping(i) for i in range(n)], split_every).tree
        local_lazy = tree_sum(iter(Grouping(i) for i in range(n)), split_every).tree
        remote, graph = dask_grouping(n, split_every)
        assert local == remote == local_lazy, (n, split_every)
        assert leaves_of(local) == list(range(n))  # consecutive runs, in order
        levels = {key[1] for key in graph if isinstance(key, tuple) and key[0] == "grouping"}
        assert max(levels, default=0) == tree_depth(n, split_every), (n, split_every)
        # every combine node adds at most split_every partial results
        # (a left fold of a run of m items nests m − 1 deep)
        assert depth_of(local) <= tree_depth(n, split_every) * (split_every - 1)


def test_tree_sum_of_suffstats_is_bit_identical_to_dask_tree_sum(covariance_type):
    rng = np.random.default_rng(9)
    X = mixture_data(9, n_rows=2000, n_features=D) * rng.uniform(1e-3, 1e3, size=(2000, 1))
    params = Params.from_covariances(
        np.full(3, 1 / 3), X[:3], random_covariances(rng, 3, D, covariance_type), covariance_type
    )
    cuts = np.sort(rng.choice(np.arange(1, 2000), size=40, replace=False))
    parts = [chunk_stats(b, params).to_host() for b in np.split(X, cuts)]
    for split_every in (2, 3, 7):
        local = tree_sum(parts, split_every).pack()
        delayed = dask_tree_sum(
            [dask.delayed(p, pure=True) for p in parts], split_every, f"s{split_every}"
        )
        (remote,) = dask.compute(delayed, scheduler="sync")
        np.testing.assert_array_equal(local, remote.pack())


def test_tree_depth_small_cases():
    assert tree_depth(1, 2) == 0
    assert tree_depth(2, 8) == 1
    assert tree_depth(8, 8) == 1
    assert tree_depth(9, 8) == 2
    assert tree_depth(64, 8) == 2
    assert tree_depth(65, 8) == 3
    assert tree_depth(1000, 10) == 3
    assert tree_depth(1001, 10) == 4
    for s in range(2, 10):
        for n in range(1, 500):
            assert tree_depth(n, s) == next(m for m in range(64) if s**m >= n), (n, s)


@pytest.mark.parametrize("split_every", [2, 3, 8, 16])
def test_tree_depth_at_powers_of_split_every(split_every):
    """Exact for every block count a float64 can index: at ``s**m`` and ``s**m + 1``."""
    m = 1
    while split_every**m + 1 <= 2**53:
        n = split_every**m
        assert tree_depth(n, split_every) == m, (n, split_every)
        assert tree_depth(n + 1, split_every) == m + 1, (n + 1, split_every)
        m += 1


def test_tree_sum_rejects_no_parts_and_bad_split_every():
    with pytest.raises(ValueError, match="no parts"):
        tree_sum([], 4)
    for bad in (1, 0, 2.0, True):
        with pytest.raises(ValueError, match="split_every must be an integer >= 2"):
            tree_sum([Grouping(0)], bad)
        with pytest.raises(ValueError, match="split_every must be an integer >= 2"):
            dask_tree_sum([dask.delayed(Grouping(0))], bad, "x")
