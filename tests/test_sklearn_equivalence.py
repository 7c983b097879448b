"""distmix.GaussianMixture against scikit-learn's, EM step for EM step.

scikit-learn is the oracle: started from the same ``weights_init``,
``means_init`` and ``precisions_init``, both estimators run the same EM
iterations, so every fitted attribute, the whole log-likelihood history, the
iteration count, the convergence flag and every prediction must agree to
rounding. ``tol`` is small (1e-8) so that many iterations run and a drift in
any of them would show.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import mixture_data, starting_params
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from distmix import GaussianMixture

PARAM_RTOL = 1e-6
LOWER_BOUND_RTOL = 1e-8
TOL = 1e-8
MAX_ITER = 1000

# (seed, n_rows, n_features, n_components): varied sizes, overlapping clusters
# (separation 3) so that EM needs tens of iterations at tol=1e-8
DATASETS = [
    pytest.param(0, 300, 2, 2, id="seed0-n300-D2-K2"),
    pytest.param(1, 500, 3, 3, id="seed1-n500-D3-K3"),
    pytest.param(2, 800, 5, 4, id="seed2-n800-D5-K4"),
]
N_TEST_ROWS = 200
FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


def _split_data(seed: int, n_rows: int, n_features: int, n_components: int):
    X = mixture_data(
        seed,
        n_rows=n_rows + N_TEST_ROWS,
        n_features=n_features,
        n_components=n_components,
        separation=3.0,
    )
    return X[:n_rows], X[n_rows:]


@functools.cache
def fitted_pair(seed: int, n_rows: int, n_features: int, n_components: int, covariance_type: str):
    """``(X_train, X_test, sklearn model, distmix model)`` fitted from the same start.

    Cached: the tests below only read the fitted models.
    """
    X, X_test = _split_data(seed, n_rows, n_features, n_components)
    start = starting_params(X, n_components, covariance_type, seed + 100)
    kwargs = dict(
        n_components=n_components,
        covariance_type=covariance_type,
        tol=TOL,
        max_iter=MAX_ITER,
        random_state=seed,
        **start,
    )
    sk = SkGaussianMixture(**kwargs).fit(X)
    dm = GaussianMixture(**kwargs).fit(X)
    return X, X_test, sk, dm


def assert_fitted_equal(dm, sk, rtol: float = PARAM_RTOL) -> None:
    """Every fitted parameter equal within ``rtol`` (relative to the array's scale)."""
    for name in FITTED:
        ours, theirs = np.asarray(getattr(dm, name)), np.asarray(getattr(sk, name))
        assert ours.shape == theirs.shape, name
        np.testing.assert_allclose(
            ours, theirs, rtol=rtol, atol=rtol * np.max(np.abs(theirs)), err_msg=name
        )


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS)
def test_fitted_parameters_match_sklearn(seed, n_rows, n_features, n_components, covariance_type):
    _, _, sk, dm = fitted_pair(seed, n_rows, n_features, n_components, covariance_type)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(
            getattr(dm, name), getattr(sk, name), rtol=PARAM_RTOL, err_msg=name
        )
    assert_fitted_equal(dm, sk)
    assert dm.n_features_in_ == sk.n_features_in_ == n_features


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS)
def test_convergence_history_matches_sklearn(
    seed, n_rows, n_features, n_components, covariance_type
):
    _, _, sk, dm = fitted_pair(seed, n_rows, n_features, n_components, covariance_type)
    assert sk.converged_ and dm.converged_
    assert dm.n_iter_ == sk.n_iter_
    assert dm.n_iter_ >= 5, "tol should be small enough that several iterations run"
    assert dm.lower_bound_ == pytest.approx(sk.lower_bound_, rel=LOWER_BOUND_RTOL, abs=0)
    assert len(dm.lower_bounds_) == len(sk.lower_bounds_) == dm.n_iter_
    np.testing.assert_allclose(dm.lower_bounds_, sk.lower_bounds_, rtol=LOWER_BOUND_RTOL, atol=0)
    assert dm.lower_bounds_[-1] == dm.lower_bound_
    # EM never decreases the likelihood
    assert np.all(np.diff(dm.lower_bounds_) > -1e-12)


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS)
def test_predictions_match_sklearn(seed, n_rows, n_features, n_components, covariance_type):
    X, X_test, sk, dm = fitted_pair(seed, n_rows, n_features, n_components, covariance_type)
    for data in (X, X_test):
        np.testing.assert_array_equal(dm.predict(data), sk.predict(data))
        proba = dm.predict_proba(data)
        assert proba.shape == (data.shape[0], n_components)
        np.testing.assert_allclose(proba, sk.predict_proba(data), rtol=PARAM_RTOL, atol=1e-9)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
        np.testing.assert_allclose(dm.score_samples(data), sk.score_samples(data), rtol=PARAM_RTOL)
        assert dm.score(data) == pytest.approx(sk.score(data), rel=PARAM_RTOL)
        assert dm.bic(data) == pytest.approx(sk.bic(data), rel=PARAM_RTOL)
        assert dm.aic(data) == pytest.approx(sk.aic(data), rel=PARAM_RTOL)
    # the training score is the log-likelihood after the last M-step: not below the bound
    assert dm.score(X) >= dm.lower_bound_ - 1e-12


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS)
def test_sample_matches_sklearn(seed, n_rows, n_features, n_components, covariance_type):
    _, _, sk, dm = fitted_pair(seed, n_rows, n_features, n_components, covariance_type)
    n_samples = 257
    X_dm, labels_dm = dm.sample(n_samples)
    X_sk, labels_sk = sk.sample(n_samples)
    assert X_dm.shape == (n_samples, n_features)
    assert labels_dm.shape == (n_samples,)
    assert np.issubdtype(labels_dm.dtype, np.integer)
    assert labels_dm.min() >= 0 and labels_dm.max() < n_components
    # labels come grouped by component, as in scikit-learn
    assert np.all(np.diff(labels_dm) >= 0)
    np.testing.assert_array_equal(labels_dm, labels_sk)
    # same random_state and same fitted parameters: the same draws
    np.testing.assert_allclose(X_dm, X_sk, rtol=PARAM_RTOL, atol=PARAM_RTOL * np.max(np.abs(X_sk)))
    X_one, labels_one = dm.sample(1)
    assert X_one.shape == (1, n_features) and labels_one.shape == (1,)


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS[:2])
def test_max_iter_stops_both_with_convergence_warning(
    seed, n_rows, n_features, n_components, covariance_type
):
    X, _ = _split_data(seed, n_rows, n_features, n_components)
    start = starting_params(X, n_components, covariance_type, seed + 100)
    max_iter = 3
    kwargs = dict(
        n_components=n_components,
        covariance_type=covariance_type,
        tol=TOL,
        max_iter=max_iter,
        random_state=seed,
        **start,
    )
    with pytest.warns(ConvergenceWarning):
        sk = SkGaussianMixture(**kwargs).fit(X)
    with pytest.warns(ConvergenceWarning):
        dm = GaussianMixture(**kwargs).fit(X)
    assert not sk.converged_ and not dm.converged_
    assert dm.n_iter_ == sk.n_iter_ == max_iter
    assert len(dm.lower_bounds_) == max_iter
    np.testing.assert_allclose(dm.lower_bounds_, sk.lower_bounds_, rtol=LOWER_BOUND_RTOL, atol=0)
    assert dm.lower_bound_ == pytest.approx(sk.lower_bound_, rel=LOWER_BOUND_RTOL, abs=0)
    assert_fitted_equal(dm, sk)


@pytest.mark.parametrize(("seed", "n_rows", "n_features", "n_components"), DATASETS[:2])
def test_warm_start_continues_like_sklearn(seed, n_rows, n_features, n_components, covariance_type):
    X, _ = _split_data(seed, n_rows, n_features, n_components)
    start = starting_params(X, n_components, covariance_type, seed + 100)
    kwargs = dict(
        n_components=n_components,
        covariance_type=covariance_type,
        tol=TOL,
        max_iter=2,
        warm_start=True,
        random_state=seed,
        **start,
    )
    sk, dm = SkGaussianMixture(**kwargs), GaussianMixture(**kwargs)
    with pytest.warns(ConvergenceWarning):
        sk.fit(X)
    with pytest.warns(ConvergenceWarning):
        dm.fit(X)
    assert dm.n_iter_ == sk.n_iter_ == 2
    assert_fitted_equal(dm, sk)
    first_bound = dm.lower_bound_

    sk.set_params(max_iter=MAX_ITER)
    dm.set_params(max_iter=MAX_ITER)
    sk.fit(X)
    dm.fit(X)
    assert sk.converged_ and dm.converged_
    assert dm.n_iter_ == sk.n_iter_
    assert dm.n_iter_ >= 2
    assert_fitted_equal(dm, sk)
    assert dm.lower_bound_ == pytest.approx(sk.lower_bound_, rel=LOWER_BOUND_RTOL, abs=0)
    np.testing.assert_allclose(dm.lower_bounds_, sk.lower_bounds_, rtol=LOWER_BOUND_RTOL, atol=0)
    # it continued from the first fit rather than starting again
    assert dm.lower_bounds_[0] > first_bound

    # and continuing two + n iterations equals one cold fit of the same length
    cold = GaussianMixture(**{**kwargs, "warm_start": False, "max_iter": MAX_ITER}).fit(X)
    assert cold.n_iter_ == 2 + dm.n_iter_
    np.testing.assert_allclose(
        cold.lower_bounds_[2:], dm.lower_bounds_, rtol=LOWER_BOUND_RTOL, atol=0
    )
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(dm, name), getattr(cold, name), rtol=1e-10, err_msg=name)
