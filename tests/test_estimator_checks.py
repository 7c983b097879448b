"""scikit-learn's estimator checks on ``distmix.GaussianMixture``.

Every check of ``sklearn.utils.estimator_checks`` runs as its own test, for the
default estimator and for two-component mixtures of every covariance type cut
into several row blocks (so the tree reduction is exercised on the checks' tiny
data sets too).

Checks that are expected to fail are listed in ``EXPECTED_FAILED_CHECKS`` with
the reason; with ``xfail_strict = true`` a listed check that starts passing
fails the suite, so the list cannot go stale silently.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import (
    check_sample_weight_equivalence_on_dense_data,
    parametrize_with_checks,
)

from distmix import GaussianMixture

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: check name → why it must fail for a mixture with more than one component.
#: The check fits on rows with integer sample_weight and on the same rows repeated
#: and shuffled. Initialisation (k-means‖ sampling, random responsibilities) draws
#: its random numbers from streams keyed by the row index, so repeating or
#: reordering rows changes the starting Params, and EM on the check's 15 random
#: points in 30 dimensions ends in another local optimum. With identical starting
#: Params the two fits agree (test_sample_weight_equivalence_with_identical_init);
#: a one-component mixture does not depend on its start and passes the check.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "random initialisation is keyed by row index, so repeated/shuffled rows start "
        "EM elsewhere; equivalence holds with identical init (tested below)"
    ),
}


def _expected_failed_checks(estimator: GaussianMixture) -> dict[str, str]:
    if estimator.n_components > 1 and estimator.means_init is None:
        return EXPECTED_FAILED_CHECKS
    return {}


ESTIMATORS = [GaussianMixture()] + [
    GaussianMixture(n_components=2, covariance_type=c, block_size=4, split_every=2, random_state=0)
    for c in COVARIANCE_TYPES
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def _identical_start(covariance_type: str, n_features: int) -> dict:
    """Starting Params given in full, so that no random initialisation runs."""
    d = n_features
    precisions = {
        "full": np.stack([10.0 * np.eye(d)] * 2),
        "tied": 10.0 * np.eye(d),
        "diag": np.full((2, d), 10.0),
        "spherical": np.full(2, 10.0),
    }[covariance_type]
    return {
        "weights_init": np.array([0.5, 0.5]),
        "means_init": np.vstack([np.full(d, 0.3), np.full(d, 0.7)]),
        "precisions_init": precisions,
    }


@pytest.mark.parametrize("block_size", [None, 4])
def test_sample_weight_equivalence_with_identical_init(covariance_type, block_size):
    """The listed sample-weight check passes once the start is the same for both fits.

    The check fits on 15 rows × 30 features; the starting Params are given in
    full, so the only difference between the two fits is weights versus
    repeated rows.
    """
    estimator = GaussianMixture(
        n_components=2,
        covariance_type=covariance_type,
        block_size=block_size,
        split_every=2,
        **_identical_start(covariance_type, n_features=30),
    )
    check_sample_weight_equivalence_on_dense_data("GaussianMixture", estimator)
