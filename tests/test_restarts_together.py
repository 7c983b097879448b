"""Restarts in one pass (issue 14): ``n_init > 1`` runs every restart side by side - one
read of each block per iteration for all of them - and gives what running them one
after another gives, bit for bit, on every engine."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import COVARIANCE_TYPES, mixture_data
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.em import run_em, run_em_together
from distmix.engines import DaskEngine, LocalEngine
from distmix.init import initial_params

FIELDS = ("weights_", "means_", "covariances_", "precisions_cholesky_")


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return mixture_data(81, n_rows=2_400, n_features=3, n_components=3, separation=3.0)


def starts(engine, covariance_type: str, seeds=(0, 1, 2, 3)):
    return [
        initial_params(engine, "random_from_data", 3, covariance_type, 1e-6, seed) for seed in seeds
    ]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["local", "dask"])
def test_side_by_side_runs_equal_runs_one_after_another(X, covariance_type, kind):
    engine = (
        LocalEngine(X, block_size=500, split_every=2)
        if kind == "local"
        else DaskEngine(da.from_array(X, chunks=(500, 3)), split_every=2, scheduler="sync")
    )
    begin = starts(engine, covariance_type)
    options = dict(tol=1e-4, max_iter=30, reg_covar=1e-6)
    together = run_em_together(engine, begin, **options)
    alone = [run_em(engine, params, **options) for params in begin]
    assert len({r.n_iter for r in alone}) > 1  # the runs stop at different iterations
    for a, b in zip(together, alone, strict=True):
        assert (a.n_iter, a.converged, a.lower_bounds) == (b.n_iter, b.converged, b.lower_bounds)
        for name in ("weights", "means", "covariances", "precisions_cholesky"):
            np.testing.assert_array_equal(getattr(a.params, name), getattr(b.params, name))


class CountingEngine(LocalEngine):
    """A local engine that counts its passes over the rows, by task."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes: list[str] = []

    def reduce(self, task, *args):
        self.passes.append(task)
        return super().reduce(task, *args)


@pytest.mark.parametrize("n_init", [1, 4, 10])
def test_one_pass_per_iteration_whatever_n_init(X, n_init):
    """The EM phase reads the rows once per iteration, for every restart at once: as many
    E-step passes as the longest run has iterations."""
    engine = CountingEngine(X, block_size=600)
    begin = starts(engine, "full", seeds=range(n_init))
    engine.passes.clear()
    runs = run_em_together(engine, begin, tol=1e-4, max_iter=25, reg_covar=1e-6)
    e_steps = [task for task in engine.passes if task in ("estep", "estep_many")]
    assert e_steps == engine.passes  # nothing else was asked
    assert len(e_steps) == max(run.n_iter for run in runs)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_the_estimator_keeps_the_run_it_kept_before(X, covariance_type, tmp_path):
    """n_init = 5 side by side against the same fit run one restart after another (with a
    checkpoint, the runs go one by one): the same best run, to the last bit."""
    model = dict(n_components=3, covariance_type=covariance_type, n_init=5, random_state=7)
    model.update(init_params="random_from_data", max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        together = distmix.GaussianMixture(**model).fit(X)
        one_by_one = distmix.GaussianMixture(**model, checkpoint=tmp_path / "c.npz").fit(X)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(together, name), getattr(one_by_one, name))
    assert together.lower_bounds_ == one_by_one.lower_bounds_
    assert together.n_iter_ == one_by_one.n_iter_


def test_restarts_on_a_cluster_equal_restarts_in_memory(X, cluster_client):
    """Dask chunks on a real LocalCluster: the same fit as the NumPy rows, bit for bit."""
    model = dict(n_components=3, n_init=3, random_state=3, init_params="random_from_data")
    in_memory = distmix.GaussianMixture(**model, block_size=600).fit(X)
    with cluster_client.as_current():
        on_cluster = distmix.GaussianMixture(**model).fit(da.from_array(X, chunks=(600, 3)))
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(on_cluster, name), getattr(in_memory, name))
