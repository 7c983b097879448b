"""Personalised weights (each site its own π_s over shared components) and batch rounds.

The per-site-weights model: site ``s`` draws its rows from ``Σ_k π_sk N(μ_k, Σ_k)``.
Its EM is exact when each site's E-step uses its own π_s, the M-step of π_s
is the site's own responsibilities (never sent), and the shared components
come from the secure sum. The reference below is that EM written out in NumPy
and SciPy over the pooled rows, site by site.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from distmix import GaussianMixture
from distmix.federated import Federation, Site

REG = 1e-6


def site_rows(seed: int, n: int, proportions: list[float]) -> np.ndarray:
    """Rows of shared components drawn with this site's own proportions."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 4.0], [0.0, 5.0]]) + 20.0
    labels = rng.choice(3, size=n, p=proportions)
    return centres[labels] + rng.normal(size=(n, 2)) * np.array([1.0, 0.7])


PROPORTIONS = ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4])
ROWS = [
    site_rows(30 + i, n, p)
    for i, (n, p) in enumerate(zip((300, 450, 200), PROPORTIONS, strict=True))
]
W0 = np.full(3, 1.0 / 3.0)
MEANS0 = np.array([[1.0, 1.0], [3.0, 3.0], [1.0, 4.0]]) + 20.0
COVS0 = np.stack([np.eye(2)] * 3)


def reference_em(n_iter: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[float]]:
    """EM of the per-site-weights model in NumPy: each site's π_s, the shared μ, Σ, and
    the mean log-likelihood of each iteration's E-step."""
    pis = [W0.copy() for _ in ROWS]
    means, covs = MEANS0.copy(), COVS0.copy()
    history = []
    n_total = sum(r.shape[0] for r in ROWS)
    for _ in range(n_iter):
        resps, loglik = [], 0.0
        for rows, pi in zip(ROWS, pis, strict=True):
            logp = np.stack(
                [multivariate_normal(means[k], covs[k]).logpdf(rows) for k in range(3)], axis=1
            ) + np.log(pi)
            norm = logsumexp(logp, axis=1)
            loglik += norm.sum()
            resps.append(np.exp(logp - norm[:, None]))
        history.append(loglik / n_total)
        pis = [r.sum(axis=0) / r.shape[0] for r in resps]
        nk = sum(r.sum(axis=0) for r in resps)
        means = sum(r.T @ x for r, x in zip(resps, ROWS, strict=True)) / nk[:, None]
        covs = np.stack(
            [
                sum(
                    (r[:, k, None] * (x - means[k])).T @ (x - means[k])
                    for r, x in zip(resps, ROWS, strict=True)
                )
                / nk[k]
                + REG * np.eye(2)
                for k in range(3)
            ]
        )
    return pis, means, covs, history


def personal_federation() -> tuple[Federation, list[Site]]:
    sites = [Site(rows, name, block_size=64) for rows, name in zip(ROWS, "abc", strict=True)]
    return Federation(sites, personal_weights=True), sites


def personal_model(n_iter: int) -> GaussianMixture:
    return GaussianMixture(
        3,
        weights_init=W0,
        means_init=MEANS0,
        precisions_init=np.linalg.inv(COVS0),
        max_iter=n_iter,
        tol=0.0,
        reg_covar=REG,
    )


def test_personalised_weights_equal_the_pooled_reference():
    n_iter = 12
    federation, sites = personal_federation()
    with pytest.warns(Warning, match="did not converge"):
        fitted = personal_model(n_iter).fit(federation)
    pis, means, covs, history = reference_em(n_iter)
    assert fitted.n_iter_ == n_iter
    np.testing.assert_allclose(fitted.means_, means, rtol=1e-12)
    np.testing.assert_allclose(
        fitted.covariances_, covs, rtol=1e-12, atol=1e-12 * np.abs(covs).max()
    )
    for site, pi in zip(sites, pis, strict=True):
        np.testing.assert_allclose(site.personal_weights, pi, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fitted.lower_bounds_, history, rtol=1e-12)
    # the two sites dominated by one component found it (the start's means are in order)
    for site, proportions in zip(sites[:2], PROPORTIONS[:2], strict=True):
        assert np.argmax(site.personal_weights) == int(np.argmax(proportions))


def test_the_personalised_log_likelihood_never_decreases():
    federation, _ = personal_federation()
    with pytest.warns(Warning, match="did not converge"):
        fitted = personal_model(25).fit(federation)
    steps = np.diff(fitted.lower_bounds_)
    assert np.all(steps >= -1e-12 * np.abs(fitted.lower_bounds_[1:])), steps.min()
    # and personal weights fit better than one set of weights for all sites
    with pytest.warns(Warning, match="did not converge"):
        shared = personal_model(25).fit(
            Federation([Site(r, n) for r, n in zip(ROWS, "abc", strict=True)])
        )
    assert fitted.lower_bounds_[-1] > shared.lower_bounds_[-1] + 0.05


def test_personal_weights_never_leave_the_site():
    """Whatever a site sends is masked words and sealed shares: its weights (or anything
    close) appear nowhere in what it sent."""
    federation, sites = personal_federation()
    sent: list[bytes] = []
    federation.transport.listeners.append(
        lambda name, request, reply: sent.extend(
            [a.tobytes() for a in reply.arrays.values()]
            + [v if isinstance(v, bytes) else repr(v).encode() for v in reply.config.values()]
        )
    )
    with pytest.warns(Warning, match="did not converge"):
        personal_model(6).fit(federation)
    blob = b"".join(sent)
    for site in sites:
        for value in site.personal_weights:
            assert np.float64(value).tobytes() not in blob
            assert repr(float(value)).encode() not in blob


def test_a_new_site_adapts_its_weights_without_changing_the_components():
    federation, _ = personal_federation()
    with pytest.warns(Warning, match="did not converge"):
        fitted = personal_model(15).fit(federation)
    means, covs = fitted.means_.copy(), fitted.covariances_.copy()
    newcomer = Site(site_rows(99, 500, [0.05, 0.15, 0.8]), "newcomer")
    pi = newcomer.adapt_weights(fitted.weights_, fitted.means_, fitted.covariances_, "full")
    np.testing.assert_array_equal(fitted.means_, means)
    np.testing.assert_array_equal(fitted.covariances_, covs)
    assert np.argmax(pi) == 2 and pi[2] == pytest.approx(0.8, abs=0.05)
    np.testing.assert_array_equal(newcomer.personal_weights, pi)


def test_partial_fit_rounds_where_sites_bring_new_batches():
    """Each round every site holds a new batch; the federated partial_fit equals the
    partial_fit of the round's pooled rows."""
    sites = [Site(site_rows(40 + i, 120, PROPORTIONS[i]), name) for i, name in enumerate("abc")]
    federation = Federation(sites, max_rows_per_site=1024)
    fed = GaussianMixture(3, init_params="moments", random_state=1)
    pooled = GaussianMixture(3, init_params="moments", random_state=1)
    for round_id in range(4):
        batches = [site_rows(100 * round_id + i, 80 + 30 * i, PROPORTIONS[i]) for i in range(3)]
        for site, batch in zip(sites, batches, strict=True):
            site.set_batch(batch)
        fed.partial_fit(federation)
        pooled.partial_fit(np.concatenate(batches))
        np.testing.assert_allclose(fed.means_, pooled.means_, rtol=1e-12)
        np.testing.assert_allclose(fed.covariances_, pooled.covariances_, rtol=1e-12, atol=1e-15)
        assert fed.n_samples_seen_ == pooled.n_samples_seen_
