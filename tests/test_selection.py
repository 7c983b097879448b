"""Model selection (issue 14): a grid of candidates fitted side by side, every pass
shared; the true K and type picked by BIC; each candidate exactly its own fit; the
ones that cannot fit marked, not fatal; and ``distmix select``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import run_cli
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.datasets import random_mixture, sample_rows
from distmix.engines import LocalEngine
from distmix.selection import Candidate, choose, fit_grid, n_parameters


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    # three well-separated components with full covariances, 6,000 rows of 4 features
    return sample_rows(random_mixture(4, 3, 1, separation=6.0), 0, 6_000, 0, 65536)


@pytest.fixture(scope="module")
def selection(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return distmix.select(X, range(1, 6), ("full", "diag"), random_state=0, n_init=2)


def test_bic_picks_the_true_number_and_type(selection):
    best = selection.best_estimator_
    assert (best.n_components, best.covariance_type) == (3, "full")
    assert selection.explanation.startswith("BIC picks K=3 full")
    assert len(selection.candidates) == 10
    assert "<" in selection.table().splitlines()[4]  # K = 3 full, marked


def test_every_candidate_is_its_own_fit(X, selection):
    """Each row of the table equals fitting that candidate alone: the same parameters
    bit for bit (restarts side by side), the same scores to 1e-12."""
    for c in selection.candidates[::3]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            alone = distmix.GaussianMixture(
                c.n_components, covariance_type=c.covariance_type, random_state=0, n_init=2
            ).fit(X)
        assert c.log_likelihood == pytest.approx(alone.score(X), rel=1e-12, abs=0)
        assert c.bic == pytest.approx(alone.bic(X), rel=1e-12)
        assert c.aic == pytest.approx(alone.aic(X), rel=1e-12)
        assert c.n_iter == alone.n_iter_ and c.converged == alone.converged_
        assert c.n_parameters == n_parameters(c.n_components, 4, c.covariance_type)
        assert c.icl >= c.bic  # the entropy term is never negative
    best = selection.best_estimator_
    alone = distmix.GaussianMixture(3, random_state=0, n_init=2).fit(X)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(best, name), getattr(alone, name))
    assert best.predict(X[:5]).shape == (5,)


def test_the_grid_shares_every_pass(X):
    """Ten candidates: the EM phase and the scores take one pass per iteration of the
    longest run, plus one, whatever the number of candidates."""

    class Counting(LocalEngine):
        passes: list[str] = []

        def reduce(self, task, *args):
            self.passes.append(task)
            return super().reduce(task, *args)

    engine = Counting(X, block_size=400)
    grid = [(k, t) for t in ("full", "diag") for k in range(1, 6)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = fit_grid(
            engine, grid, [0], init_params="random_from_data", tol=1e-3, max_iter=50,
            reg_covar=1e-6,
        )  # fmt: skip
    em = [t for t in engine.passes if t in ("estep", "estep_many", "scores")]
    assert len(em) == max(c.n_iter for c in fitted.candidates) + 1
    assert em[-1] == "scores"


def test_candidates_that_cannot_fit_are_marked_not_fatal(X):
    few = X[:6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = distmix.select(few, [1, 2, 8], "diag", random_state=0)
    marked = {c.n_components: c for c in chosen.candidates}
    assert marked[8].status.startswith("not enough rows (6 < 8)")
    assert math.isnan(marked[8].bic) and "not enough rows" in chosen.table()
    assert chosen.best_estimator_.n_components in (1, 2)


def test_ties_and_the_choice_are_explained():
    a = Candidate(2, "diag", -1.0, 9, bic=100.0, aic=90.0, icl=110.0)
    b = Candidate(2, "full", -1.0, 11, bic=100.0, aic=88.0, icl=101.0)
    best, line = choose([b, a], "bic")
    assert best is a and "a tie, broken by fewer parameters" in line
    best, line = choose([a, b], "aic")
    assert best is b and "weak evidence" in line and line.startswith("AIC picks K=2 full")
    with pytest.raises(ValueError, match="criterion must be one of"):
        choose([a], "mdl")
    with pytest.raises(ValueError, match="no candidate could be fitted"):
        choose([Candidate(9, "full", status="not enough rows")], "bic")


def test_the_command_prints_the_table_and_saves_the_best(X, tmp_path):
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "best.npz"
    result = run_cli(
        "select", tmp_path / "x.npy", "--components", "2-4", "--covariance-type", "full,diag",
        "--cluster", "threads", "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "BIC picks K=3 full" in result.stdout and result.stdout.count("\n") > 8
    assert distmix.load(out).n_components == 3
    bad = run_cli("select", tmp_path / "x.npy", "--components", "0-2", "--cluster", "threads")
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_the_criteria_plot_draws_every_candidate(selection):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = distmix.plot.criteria(selection)
    lines = {line.get_label(): line for line in ax.get_lines()}
    bic_full = lines["BIC, full"]
    np.testing.assert_array_equal(bic_full.get_xdata(), [1, 2, 3, 4, 5])
    full = [c.bic for c in selection.candidates if c.covariance_type == "full"]
    np.testing.assert_array_equal(bic_full.get_ydata(), full)
    chosen = lines["chosen"]
    assert list(chosen.get_xdata()) == [3] and list(chosen.get_ydata()) == [min(full)]
    assert len(lines) == 2 * 3 + 1
    matplotlib.pyplot.close("all")
