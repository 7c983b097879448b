"""Streaming (``distmix.online``, the arithmetic of ``distmix.stepwise``): stepwise
online EM through partial_fit and fit_stream, growing arrays, checkpoints.

What must hold: with γ = 1 an update is exactly one EM iteration (the same
kernel and M-step as ``fit``); the running average is the stated recursion;
the stream reads blocks in a seeded order that does not depend on the input's
kind (NumPy, dask, Zarr give the same model); a growing Zarr array is continued
by reading only its new rows, to the same model as one stream over the whole
array; an interrupted stream resumes to the uninterrupted result; a bad batch
changes nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import COVARIANCE_TYPES, local_cluster, mixture_data, starting_params

import distmix
from distmix import GaussianMixture, fit_stream
from distmix.persist import ModelFileError, load_stream_checkpoint
from distmix.sources.zarr_arrays import ChunkReadError
from distmix.sources.zarr_write import create_zarr_array
from distmix.stepwise import StepSchedule, StreamPlan, StreamPosition

N_FEATURES, N_COMPONENTS = 3, 3
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_")


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return mixture_data(21, n_rows=4000, n_features=N_FEATURES, n_components=N_COMPONENTS)


@pytest.fixture(scope="module")
def X_val() -> np.ndarray:
    return mixture_data(21, n_rows=4000, n_features=N_FEATURES, n_components=N_COMPONENTS)[::7]


def start_for(X: np.ndarray, covariance_type: str = "full") -> dict[str, Any]:
    return starting_params(X, N_COMPONENTS, covariance_type, seed=5)


def assert_same_model(a: GaussianMixture, b: GaussianMixture, rtol: float = 1e-12) -> None:
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=rtol, atol=0, err_msg=name
        )


def warmup_rows_auto(n_features: int, covariance_type: str = "full") -> int:
    """``warmup_rows="auto"``'s rows for these tests' mixtures: 60 per free parameter."""
    return 60 * distmix.selection.n_parameters(N_COMPONENTS, n_features, covariance_type)


def write_array(path: Any, X: np.ndarray, chunk_rows: int) -> zarr.Array:
    array = create_zarr_array(str(path), X.shape, chunks=(chunk_rows, X.shape[1]))
    array[:] = X
    return array


# --------------------------------------------------------------------------- #
# one update = one EM step                                                    #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
def test_partial_fit_with_step_one_is_one_em_iteration(X, covariance_type, kind, tmp_path):
    start = start_for(X, covariance_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one iteration does not converge
        one = GaussianMixture(
            N_COMPONENTS, covariance_type=covariance_type, max_iter=1, **start
        ).fit(X)
    batch: Any = {
        "numpy": lambda: X,
        "dask": lambda: da.from_array(X, chunks=(700, N_FEATURES)),
        "zarr": lambda: str(write_array(tmp_path / "x.zarr", X, 900).store_path.store.root),
    }[kind]()
    model = GaussianMixture(
        N_COMPONENTS, covariance_type=covariance_type, learning_offset=0.0, **start
    )
    model.partial_fit(batch)
    assert model.n_steps_ == 1 and model.n_samples_seen_ == len(X)
    assert model.stream_history_[0]["step_size"] == 1.0
    assert_same_model(model, one)
    # the mean log-likelihood of the batch before the update is fit's lower bound
    assert model.stream_history_[0]["batch_log_likelihood"] == pytest.approx(
        one.lower_bound_, rel=1e-12
    )


def test_running_average_follows_the_recursion(X):
    """κ = 1, t0 = 0 gives γ_t = 1/t: three equal-size batches with a fixed
    starting point each, averaged, equal one M-step on the pooled statistics."""
    start = start_for(X)
    schedule = StepSchedule(learning_decay=1.0, learning_offset=0.0)
    assert [schedule.step(t) for t in (1, 2, 4)] == [1.0, 0.5, 0.25]
    model = GaussianMixture(N_COMPONENTS, learning_decay=1.0, learning_offset=0.0, **start)
    parts = np.array_split(X, 4)
    for part in parts:
        model.partial_fit(part)
    steps = [r["step_size"] for r in model.stream_history_]
    np.testing.assert_allclose(steps, [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-15)
    # by hand: s_t = s_{t-1} + (stats_t/|b_t| - s_{t-1}) / t, each about its own reference
    from distmix.mstep import m_step
    from distmix.params import Params
    from distmix.tasks import estep_block

    params = Params.from_precisions(
        start["weights_init"], start["means_init"], start["precisions_init"], "full"
    )
    s = None
    for t, part in enumerate(parts, start=1):
        stats = estep_block(part, None, 0, params)
        stats = stats.scale(1.0 / len(part))
        s = (
            stats
            if s is None
            else s.recentre(stats.reference).scale(1 - 1 / t) + stats.scale(1 / t)
        )
        params = m_step(s.scale(len(part)), 1e-6, previous=params)
    np.testing.assert_allclose(model.means_, params.means, rtol=1e-12)
    np.testing.assert_allclose(model.covariances_, params.covariances, rtol=1e-12)


def test_first_partial_fit_initialises_from_the_batch_and_warm_models_continue(X):
    model = GaussianMixture(N_COMPONENTS, random_state=3).partial_fit(X[:1000])
    assert model.n_steps_ == 1 and model.n_features_in_ == N_FEATURES
    again = GaussianMixture(N_COMPONENTS, random_state=3).partial_fit(X[:1000])
    assert_same_model(model, again, rtol=0)  # seeded
    # a fitted model continues from its parameters
    fitted = GaussianMixture(N_COMPONENTS, random_state=0).fit(X)
    means = fitted.means_.copy()
    fitted.partial_fit(X[:500])
    assert fitted.n_steps_ == 1
    assert np.abs(fitted.means_ - means).max() < 0.5  # moved a little, not re-initialised
    # fit afterwards forgets the stream
    fitted.fit(X)
    assert not hasattr(fitted, "n_steps_")


def test_polyak_averaging_averages_the_updates_parameters(X):
    start = start_for(X)
    batches = np.array_split(X, 8)
    plain = GaussianMixture(N_COMPONENTS, **start)
    seen = []
    for batch in batches:
        plain.partial_fit(batch)
        seen.append((plain.weights_.copy(), plain.means_.copy(), plain.covariances_.copy()))
    averaged = GaussianMixture(N_COMPONENTS, average_after=3, **start)
    for batch in batches:
        averaged.partial_fit(batch)
    tail = seen[3:]
    np.testing.assert_allclose(
        averaged.means_, np.mean([m for _, m, _ in tail], axis=0), rtol=1e-12
    )
    np.testing.assert_allclose(
        averaged.covariances_, np.mean([c for _, _, c in tail], axis=0), rtol=1e-12
    )
    np.testing.assert_allclose(
        averaged.weights_, np.mean([w for w, _, _ in tail], axis=0), rtol=1e-12
    )
    # the E-steps use the latest (not the averaged) parameters: the running state is the same
    np.testing.assert_allclose(averaged._stream.state.params.means, plain.means_, rtol=1e-12)


def test_forgetting_factor_floors_the_step_and_follows_a_drift():
    rng = np.random.default_rng(0)

    def batch(shift: float) -> np.ndarray:
        return rng.normal(size=(400, 2)) + shift

    models = {
        "forgetting": GaussianMixture(1, forgetting_factor=0.3, random_state=0),
        "decaying": GaussianMixture(1, random_state=0),
    }
    for model in models.values():
        for t in range(40):
            model.partial_fit(batch(0.0 if t < 20 else 5.0))
    steps = [r["step_size"] for r in models["forgetting"].stream_history_]
    assert min(steps) == pytest.approx(0.3)
    # after the drift, forgetting tracks the new mean; the 1/t^0.6 average lags
    error = {name: abs(m.means_[0] - 5.0).max() for name, m in models.items()}
    assert error["forgetting"] < 0.05 < error["decaying"], error


# --------------------------------------------------------------------------- #
# fit_stream                                                                  #
# --------------------------------------------------------------------------- #
def test_one_pass_is_close_to_batch_em():
    """From the same (k-means) start, one pass of online EM gets within 0.02
    nats per held-out row of batch EM run to convergence."""
    from distmix.engines.local import LocalEngine
    from distmix.init import initial_params

    data = mixture_data(8, n_rows=44_000, n_features=4, n_components=4)
    X, X_val = data[:40_000], data[40_000:]
    p = initial_params(LocalEngine(X[:2000]), "kmeans", 4, "full", 1e-6, seed=0)
    start = {"weights_init": p.weights, "means_init": p.means, "precisions_init": p.precisions}
    batch = GaussianMixture(4, tol=1e-8, max_iter=500, **start).fit(X)
    stream = fit_stream(X, n_components=4, block_size=500, window=2, random_state=0, **start)
    assert stream.n_samples_seen_ == len(X) and stream.n_steps_ == 40
    assert batch.n_iter_ > 1
    gap = batch.score(X_val) - stream.score(X_val)
    assert abs(gap) < 0.02, gap


def test_numpy_dask_and_zarr_sources_give_the_same_stream(X, tmp_path):
    start = start_for(X)
    opts = dict(n_components=N_COMPONENTS, random_state=4, window=2, **start)
    a = fit_stream(X, block_size=250, **opts)
    b = fit_stream(da.from_array(X, chunks=(250, N_FEATURES)), **opts)
    c = fit_stream(str(write_array(tmp_path / "x.zarr", X, 250).store_path.store.root), **opts)
    assert a.n_steps_ == b.n_steps_ == c.n_steps_ == 8
    assert_same_model(a, b)
    assert_same_model(a, c)
    # another seed reads the blocks in another order: another (similar) model
    d = fit_stream(X, block_size=250, **{**opts, "random_state": 5})
    assert not np.allclose(d.means_, a.means_, rtol=1e-12)


def test_stream_windows_run_on_a_dask_cluster(X, tmp_path):
    """Each update's window of Zarr blocks is one compute on a real two-process
    LocalCluster: the same model as the stream in this process."""
    start = start_for(X)
    path = str(write_array(tmp_path / "x.zarr", X, 250).store_path.store.root)
    opts = dict(n_components=N_COMPONENTS, random_state=1, **start)
    here = fit_stream(path, window=2, **opts)
    from distributed import get_task_stream

    with local_cluster(2) as client, get_task_stream(client) as tasks:
        there = fit_stream(path, **opts)  # window: the cluster's 2 worker threads
    workers = {t["worker"] for t in tasks.data if "distmix-estep-" in str(t["key"])}
    assert len(workers) == 2, workers  # the E-steps ran on both worker processes
    assert there.n_steps_ == here.n_steps_ == 8
    assert_same_model(there, here, rtol=1e-10)


def test_a_damaged_chunk_fails_its_own_update(X, tmp_path):
    """The next window is read while this one updates the model: a chunk that cannot
    be read fails the update that needs it, naming it, after every update before it
    was made and checkpointed (its read ahead does not fail an earlier one)."""
    array = write_array(tmp_path / "x.zarr", X, 250)
    path = str(array.store_path.store.root)
    chunk = os.path.join(path, array.metadata.encode_chunk_key((3, 0)))
    data = bytearray(open(chunk, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(chunk, "wb").write(bytes(data))
    checkpoint = tmp_path / "c.npz"
    # a warm-up of the first two blocks, then an update a block
    opts = dict(n_components=N_COMPONENTS, random_state=1, window=1, shuffle=False, warmup_rows=500)
    with pytest.raises(ChunkReadError, match="c/3/0"):
        fit_stream(path, checkpoint=checkpoint, **opts, **start_for(X))
    _, state, position, _ = load_stream_checkpoint(checkpoint)
    assert state.n_steps == 3 and position is not None and position.batch_index == 3
    # the same three updates as a stream of the readable rows alone
    first = fit_stream(X[:750], block_size=250, **opts, **start_for(X))
    np.testing.assert_array_equal(state.params.means, first.means_)


@contextlib.contextmanager
def workerless_cluster(X, tmp_path, threads_per_worker, reference_window):
    """A LocalCluster on 127.0.0.1 started without workers, its client the
    default; yields ``(cluster, client, path, opts, reference)``: a Zarr copy of
    X, the stream options, and the in-process stream with ``reference_window``."""
    from distributed import Client, LocalCluster

    path = str(write_array(tmp_path / "x.zarr", X, 250).store_path.store.root)
    opts = dict(n_components=N_COMPONENTS, random_state=1, **start_for(X))
    reference = fit_stream(path, window=reference_window, **opts)
    with (
        LocalCluster(
            n_workers=0,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):
        yield cluster, client, path, opts, reference


def test_default_window_waits_for_a_cluster_s_first_worker(X, tmp_path, monkeypatch):
    """A cluster whose worker has not joined yet: the default window waits for it
    (its 2 threads → window 2) instead of streaming one block per update; with no
    worker after the wait, one block per update and a warning."""
    import threading

    import distmix.engines.dask

    with workerless_cluster(X, tmp_path, 2, 2) as (cluster, client, path, opts, here):
        monkeypatch.setattr(distmix.engines.dask, "WORKER_WAIT_S", 0.5)
        with pytest.warns(UserWarning, match=r"no worker yet \(it had none within 0.5 s\)"):
            assert distmix.engines.dask.parallel_blocks() == 1
        assert not client.nthreads()
        monkeypatch.setattr(distmix.engines.dask, "WORKER_WAIT_S", 60.0)
        late = threading.Timer(1.0, cluster.scale, args=(1,))
        late.start()
        try:
            there = fit_stream(path, **opts)
        finally:
            late.join()
    assert there.n_steps_ == here.n_steps_ == 8
    assert_same_model(there, here, rtol=1e-10)


def test_default_window_on_an_adaptive_cluster_does_not_wait(X, tmp_path):
    """An adaptive cluster starts workers only when there is work: the stream
    starts at once with one block per update (and says so), and the cluster scales
    up to run it."""
    with workerless_cluster(X, tmp_path, 1, 1) as (cluster, _, path, opts, here):
        cluster.adapt(minimum=0, maximum=1, interval="200ms")
        with pytest.warns(UserWarning, match=r"no worker yet \(it is adaptive\)"):
            there = fit_stream(path, **opts)
    assert there.n_steps_ == here.n_steps_ == 16
    assert_same_model(there, here, rtol=1e-10)


def test_iterables_of_batches(X, X_val):
    start = start_for(X)
    batches = np.array_split(X, 10)
    from_list = fit_stream(batches, n_components=N_COMPONENTS, shuffle=False, **start)
    from_generator = fit_stream(
        (b for b in batches), n_components=N_COMPONENTS, validation=X_val, **start
    )
    assert from_list.n_steps_ == from_generator.n_steps_ == 10
    assert_same_model(from_list, from_generator)
    last = from_generator.stream_history_[-1]
    assert last["validation_log_likelihood"] == pytest.approx(
        from_generator.score(X_val), rel=1e-12
    )
    two_passes = fit_stream(batches, n_components=N_COMPONENTS, n_passes=2, **start)
    assert two_passes.n_steps_ == 20 and two_passes.n_samples_seen_ == 2 * len(X)
    with pytest.raises(ValueError, match="iterator is read once"):
        fit_stream(iter(batches), n_components=N_COMPONENTS, n_passes=2)
    weighted = fit_stream(
        [(b, np.full(len(b), 2.0)) for b in batches],
        n_components=N_COMPONENTS,
        shuffle=False,
        **start,
    )
    assert_same_model(weighted, from_list, rtol=1e-10)  # uniform weights change nothing


def test_history_and_validation(X, X_val):
    records = []
    model = fit_stream(
        X,
        n_components=N_COMPONENTS,
        block_size=200,
        window=1,
        validation=X_val,
        report_every=5,
        callback=records.append,
        random_state=0,
    )
    # the warm-up is the first entry: the batches that hold its rows, counted as updates
    warm = -(-warmup_rows_auto(N_FEATURES) // 200)
    assert [r.n_steps for r in records] == [s for s in (5, 10, 15, 20) if s >= warm]
    assert all(r.validation_log_likelihood is not None for r in records)
    assert records[-1].validation_log_likelihood == pytest.approx(model.score(X_val), rel=1e-12)
    assert model.stream_history_[0]["n_steps"] == warm > 1
    assert [h["n_samples_seen"] for h in model.stream_history_] == list(
        range(200 * warm, 4001, 200)
    )
    assert model.lower_bound_ == model.stream_history_[-1]["running_log_likelihood"]


# --------------------------------------------------------------------------- #
# growing arrays, checkpoints                                                 #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("partial_chunk", [False, True], ids=["whole-chunks", "partial-chunk"])
def test_growing_zarr_array_reads_only_new_rows(X, tmp_path, partial_chunk):
    start = start_for(X)
    first = 2000 + (130 if partial_chunk else 0)
    path = str(tmp_path / "grow.zarr")
    array = write_array(path, X[:first], 250)
    opts = dict(n_components=N_COMPONENTS, window=1, shuffle=False, **start)
    model = fit_stream(path, warm_start=True, **opts)
    assert model.n_samples_seen_ == first
    array.append(X[first:])
    fit_stream(path, model)  # warm_start: continue after the rows already read
    assert model.n_samples_seen_ == len(X)
    whole_path = str(tmp_path / "whole.zarr")
    write_array(whole_path, X, 250)
    whole = fit_stream(whole_path, **opts)
    if partial_chunk:
        # the old last chunk was read in two pieces (130 rows, then 120 after the append)
        assert model.n_steps_ == whole.n_steps_ + 1
        seen = [0] + [h["n_samples_seen"] for h in model.stream_history_]
        warm = -(-warmup_rows_auto(N_FEATURES) // 250)  # the warm-up's blocks, one update
        assert np.diff(seen).tolist() == [250 * warm] + [250] * (8 - warm) + [130, 120] + [250] * 7
    else:
        assert model.n_steps_ == whole.n_steps_
        assert_same_model(model, whole)
    n_steps = model.n_steps_
    fit_stream(path, model)  # nothing new: nothing changes
    assert model.n_steps_ == n_steps
    # a shuffled stream also continues with exactly the new rows
    shuffled = fit_stream(
        path.replace("grow", "grow"), **{**opts, "shuffle": True, "warm_start": True}
    )
    assert shuffled.n_samples_seen_ == len(X)


def test_interrupted_stream_resumes_to_the_same_model(X, tmp_path):
    start = start_for(X)
    checkpoint = tmp_path / "stream.npz"
    opts = dict(n_components=N_COMPONENTS, block_size=200, random_state=2, **start)
    whole = fit_stream(X, window=1, **opts)

    class Stop(Exception):
        pass

    stop = -(-warmup_rows_auto(N_FEATURES) // 200) + 3  # the third update after the warm-up

    def stop_after(record) -> None:
        if record.n_steps == stop:
            raise Stop

    model = GaussianMixture(checkpoint=checkpoint, resume=True, **opts)
    with pytest.raises(Stop):
        model.fit_stream(X, window=1, report_every=1, callback=stop_after)
    assert not hasattr(model, "n_steps_")  # the failed call left the model as it was
    _, state, position, _ = load_stream_checkpoint(checkpoint)
    assert state.n_steps == stop - 1  # the update in flight: at most it is lost
    model.fit_stream(X)  # window, shuffle, passes and seed come from the checkpoint
    assert model.n_steps_ == whole.n_steps_
    assert_same_model(model, whole, rtol=0)  # bit for bit
    # the finished checkpoint is a no-op to resume, and a different stream is refused
    model.fit_stream(X)
    assert model.n_steps_ == whole.n_steps_
    other = GaussianMixture(checkpoint=checkpoint, resume=True, **{**opts, "random_state": 9})
    with pytest.raises(ValueError, match="different stream .*seed"):
        other.fit_stream(X)


def test_saved_stream_model_round_trips_and_continues(X, tmp_path):
    start = start_for(X)
    path = str(tmp_path / "grow.zarr")
    array = write_array(path, X[:2000], 250)
    opts = dict(n_components=N_COMPONENTS, window=1, shuffle=False, **start)
    model = fit_stream(path, **opts)
    model.save(tmp_path / "m.npz")
    loaded = distmix.load(tmp_path / "m.npz")
    assert_same_model(loaded, model, rtol=0)
    assert loaded.n_steps_ == model.n_steps_ and loaded.stream_history_ == model.stream_history_
    array.append(X[2000:])
    loaded.set_params(warm_start=True)
    fit_stream(path, loaded)
    whole = fit_stream(write_array(tmp_path / "whole.zarr", X, 250), **opts)
    assert_same_model(loaded, whole)


def test_corrupt_stream_checkpoint_is_refused(X, tmp_path):
    checkpoint = tmp_path / "c.npz"
    fit_stream(X[:1000], n_components=2, checkpoint=checkpoint, random_state=0)
    with np.load(checkpoint) as archive:
        contents = {k: archive[k] for k in archive.files}
    contents["stream_stats"] = contents["stream_stats"][:-3]
    np.savez(checkpoint, **contents)
    with pytest.raises(ModelFileError, match="c.npz"):
        load_stream_checkpoint(checkpoint)


# --------------------------------------------------------------------------- #
# bad input                                                                   #
# --------------------------------------------------------------------------- #
def _state_of(model: GaussianMixture) -> dict[str, Any]:
    return copy.deepcopy({k: v for k, v in vars(model).items() if k != "_stream"})


BAD_BATCHES = {
    "nan": (lambda X: np.where(np.arange(len(X))[:, None] == 7, np.nan, X), "row 7"),
    "features": (lambda X: X[:, :2], "2 features"),
    "strings": (lambda X: X.astype(str), "dtype"),
    "complex": (lambda X: X.astype(complex), "omplex"),
    "empty": (lambda X: X[:0], "0 sample|0 rows"),
    "one-dimensional": (lambda X: X[:, 0], "2D array|2-D"),
    "zero weight": (lambda X: X, "non-zero|total weight is zero"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_bad_batch_leaves_the_model_as_it_was(X, case, kind):
    make, message = BAD_BATCHES[case]
    model = GaussianMixture(N_COMPONENTS, random_state=0)
    for batch in np.array_split(X, 3):
        model.partial_fit(batch)
    before = _state_of(model)
    stream = model._stream
    bad = make(X[:300])
    if kind == "dask":
        bad = da.from_array(bad, chunks=(100,) + bad.shape[1:])
    weight = np.zeros(len(X[:300])) if case == "zero weight" else None
    with pytest.raises((ValueError, TypeError), match=message):
        model.partial_fit(bad, sample_weight=weight)
    after = _state_of(model)
    assert sorted(after) == sorted(before)
    for name, old in before.items():
        if isinstance(old, np.ndarray):
            assert np.array_equal(after[name], old), name
        else:
            assert after[name] == old, name
    assert model._stream is stream
    model.partial_fit(X[:300])  # and it still works
    assert model.n_steps_ == 4


def test_invalid_stream_settings_are_named(X):
    for params, message in [
        ({"learning_decay": 0.5}, "learning_decay"),
        ({"learning_decay": 1.5}, "learning_decay"),
        ({"learning_offset": -1}, "learning_offset"),
        ({"forgetting_factor": 0.0}, "forgetting_factor"),
        ({"average_after": -2}, "average_after"),
    ]:
        with pytest.raises(ValueError, match=message):
            GaussianMixture(2, **params).partial_fit(X)
    for kwargs, message in [
        ({"n_passes": 0}, "n_passes"),
        ({"window": 0}, "window"),
        ({"report_every": 0}, "report_every"),
    ]:
        with pytest.raises(ValueError, match=message):
            fit_stream(X, n_components=2, **kwargs)
    with pytest.raises(ValueError, match="appended .* not removed"):
        list(StreamPlan.for_blocks([10, 10]).walk(StreamPosition(rows_done=30), 20))


def test_lists_of_rows_are_arrays_and_lists_of_blocks_are_batches(X):
    rows_as_list = [row for row in X[:600]]  # 1-D rows: one array-like
    model = fit_stream(rows_as_list, n_components=2, random_state=0, block_size=100, window=2)
    assert model.n_samples_seen_ == 600 and model.n_steps_ == 3  # 6 blocks, 2 per update
    tuples = [tuple(row) for row in X[:600]]
    assert (
        fit_stream(tuples, n_components=2, random_state=0, block_size=100, window=2).n_steps_ == 3
    )
    batches = [X[:300], X[300:600]]
    assert fit_stream(batches, n_components=2, random_state=0).n_steps_ == 2
