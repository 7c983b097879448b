"""Checkpoints belong to their data: resuming on other values is refused before any write.

The fingerprint (distmix.fingerprint) is a sum modulo 2⁶⁴ of per-row hashes of
the values, weights and global row indices, computed in the pass that reads the
blocks anyway. These tests check the fingerprint itself (chunking-independent,
sensitive to any one value) and that batch fits, streams and grown arrays refuse
a checkpoint written for other values — leaving the checkpoint, the model and
any output file exactly as they were.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import mixture_data

import distmix
from distmix.engines import DaskEngine, LocalEngine
from distmix.fingerprint import DataChangedError, DataFingerprint
from distmix.persist import load_checkpoint, load_stream_checkpoint, save_checkpoint
from distmix.sources.zarr_write import create_zarr_array
from distmix.stepwise import StreamPlan


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return mixture_data(40, n_rows=2000, n_features=3, n_components=3)


def _fingerprint(engine) -> DataFingerprint:
    return engine.reduce("fingerprint")


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --------------------------------------------------------------------------- #
# the fingerprint                                                             #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("blocks", [(2000,), (7, 993, 1000), (250,) * 8, (1,) * 3 + (1997,)])
def test_fingerprint_is_independent_of_chunking_and_engine(X, blocks):
    whole = _fingerprint(LocalEngine(X, None, (2000,)))
    assert _fingerprint(LocalEngine(X, None, blocks, split_every=3)) == whole
    assert _fingerprint(DaskEngine(da.from_array(X, chunks=(blocks, 3)), split_every=2)) == whole
    assert whole.n_rows == 2000
    # float32 values hash as their float64 values
    X32 = X.astype(np.float32)
    assert _fingerprint(LocalEngine(X32, None, blocks)) == _fingerprint(
        LocalEngine(X32.astype(np.float64), None, (2000,))
    )


def test_fingerprint_changes_with_any_value_weight_or_order(X):
    base = _fingerprint(LocalEngine(X, None, (500,) * 4))
    rng = np.random.default_rng(0)
    for _ in range(20):
        i, j = int(rng.integers(2000)), int(rng.integers(3))
        changed = X.copy()
        changed[i, j] = np.nextafter(changed[i, j], np.inf)  # one ulp of one value
        assert _fingerprint(LocalEngine(changed, None, (500,) * 4)) != base
    swapped = X.copy()
    swapped[[3, 4]] = swapped[[4, 3]]  # the same rows in another order
    assert _fingerprint(LocalEngine(swapped, None, (500,) * 4)) != base
    ones = np.ones(2000)
    weighted = _fingerprint(LocalEngine(X, ones, (500,) * 4))
    assert weighted != base
    ones[17] = 2.0
    assert _fingerprint(LocalEngine(X, ones, (500,) * 4)) != weighted


# --------------------------------------------------------------------------- #
# batch EM                                                                    #
# --------------------------------------------------------------------------- #
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_batch_resume_on_other_values_is_refused_before_any_write(X, tmp_path):
    checkpoint = tmp_path / "fit.ck"
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint, tol=0, max_iter=6)
    distmix.GaussianMixture(**opts).fit(X)
    before = _snapshot(checkpoint)
    other = mixture_data(41, n_rows=2000, n_features=3, n_components=3)  # same shape
    model = distmix.GaussianMixture(resume=True, **opts)
    with pytest.raises(DataChangedError, match=f"checkpoint {checkpoint} was written for other"):
        model.fit(other)
    assert _snapshot(checkpoint) == before
    assert not hasattr(model, "means_")
    # the same rows in other blocks (and as a dask array) are the same data
    resumed = distmix.GaussianMixture(resume=True, block_size=333, **opts).fit(
        da.from_array(X, chunks=(700, 3))
    )
    assert resumed.n_iter_ == 6


def test_checkpoint_without_a_data_fingerprint_is_refused(X, tmp_path):
    checkpoint = tmp_path / "old.ck"
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint)
    distmix.GaussianMixture(**opts).fit(X)
    state = load_checkpoint(checkpoint)
    assert state.extra["data_fingerprint"]["n_rows"] == 2000
    save_checkpoint(checkpoint, replace(state, extra={}))  # as an older distmix wrote it
    with pytest.raises(DataChangedError, match="records no fingerprint"):
        distmix.GaussianMixture(resume=True, **opts).fit(X)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distmix", *args]


@pytest.mark.slow
def test_killed_cli_fit_refuses_to_resume_on_rewritten_data(tmp_path):
    """The issue's reproduction, with a kill: ``distmix fit --checkpoint`` SIGKILLed mid-fit;
    one value of the data file is rewritten; ``--resume`` fails (exit 2) naming the
    checkpoint, writes no model and leaves the checkpoint as it was."""
    X = mixture_data(42, n_rows=60_000, n_features=4, n_components=4, separation=1.5)
    data, checkpoint, out = tmp_path / "x.npy", tmp_path / "fit.ck", tmp_path / "m.npz"
    np.save(data, X)
    common = ["-k", "4", "--cluster", "threads", "--tol", "0", "--max-iter", "60", "--quiet"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        _cli("fit", str(data), *common, "--checkpoint", str(checkpoint)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if checkpoint.exists() and load_checkpoint(checkpoint).current is not None:
                if load_checkpoint(checkpoint).current.n_iter >= 2:
                    break
            assert proc.poll() is None, "the fit ended before it could be killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = _snapshot(checkpoint)
    rewritten = X.copy()
    rewritten[31_337, 2] = -rewritten[31_337, 2]
    np.save(data, rewritten)
    result = subprocess.run(
        _cli("fit", str(data), *common, "--checkpoint", str(checkpoint), "--resume")
        + ["--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert f"checkpoint {checkpoint} was written for other data" in result.stderr
    assert not out.exists()
    assert _snapshot(checkpoint) == before


# --------------------------------------------------------------------------- #
# streams                                                                     #
# --------------------------------------------------------------------------- #
def _zarr(path: Path, X: np.ndarray, chunk_rows: int = 250) -> zarr.Array:
    array = create_zarr_array(str(path), X.shape, chunk_rows)
    array[:] = X
    return array


def test_stream_resume_on_other_values_is_refused(X, tmp_path):
    checkpoint = tmp_path / "stream.ck"
    path = tmp_path / "x.zarr"
    _zarr(path, X)
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint, resume=True)
    distmix.fit_stream(str(path), window=2, **opts)
    before = _snapshot(checkpoint)
    _zarr(tmp_path / "other.zarr", mixture_data(43, n_rows=2000, n_features=3, n_components=3))
    with pytest.raises(DataChangedError, match="written for other data"):
        distmix.fit_stream(str(tmp_path / "other.zarr"), **opts)
    assert _snapshot(checkpoint) == before


def test_interrupted_stream_checks_only_the_rows_it_has_read(X, tmp_path):
    """Stopped mid-pass, a stream has read some blocks: a change there is refused, a
    change in a block it has not read yet is not (those rows were never fitted)."""
    checkpoint = tmp_path / "stream.ck"
    # a warm-up of one block: an update a block, as the counts of rows read below assume
    opts = dict(
        n_components=3, random_state=0, block_size=250, checkpoint=checkpoint, warmup_rows=250
    )

    class Stop(Exception):
        pass

    def stop_after_3(record) -> None:
        if record.n_steps == 3:
            raise Stop

    model = distmix.GaussianMixture(resume=True, **opts)
    with pytest.raises(Stop):
        model.fit_stream(X, window=1, report_every=1, callback=stop_after_3)
    _, state, position, extra = load_stream_checkpoint(checkpoint)
    assert state.n_steps == 2 and extra["data_fingerprint"]["n_rows"] == 500
    read = _rows_read(checkpoint)
    assert len(read) == 2
    unread = sorted(set(range(8)) - read)
    changed = X.copy()
    changed[250 * unread[0] + 5, 1] += 1.0
    resumed = distmix.GaussianMixture(resume=True, **opts).fit_stream(changed)
    assert resumed.n_samples_seen_ == 2000
    # a fresh interrupted stream, then a change in a block already read
    checkpoint.unlink()
    with pytest.raises(Stop):
        distmix.GaussianMixture(resume=True, **opts).fit_stream(
            X, window=1, report_every=1, callback=stop_after_3
        )
    before = _snapshot(checkpoint)
    changed = X.copy()
    changed[250 * min(read) + 7, 0] += 1e-9
    with pytest.raises(DataChangedError):
        distmix.GaussianMixture(resume=True, **opts).fit_stream(changed)
    assert _snapshot(checkpoint) == before


def _rows_read(checkpoint: Path) -> set[int]:
    """The blocks (of 250 rows) an interrupted stream's checkpoint has read."""
    fingerprint, _, position, _ = load_stream_checkpoint(checkpoint)
    plan = StreamPlan.for_blocks(
        (250,) * 8,
        window=fingerprint["window"],
        n_passes=fingerprint["n_passes"],
        shuffle=fingerprint["shuffle"],
        seed=fingerprint["seed"],
    )
    return {a // 250 for a, _ in plan.ranges_read(position)}


def test_grown_array_with_a_rewritten_prefix_is_refused(X, tmp_path):
    """A stream resumed after rows were appended reads only the new rows, but first
    checks the rows it had read: a rewritten prefix is refused."""
    checkpoint = tmp_path / "stream.ck"
    path = tmp_path / "grow.zarr"
    array = _zarr(path, X[:1000])
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint, resume=True)
    distmix.fit_stream(str(path), window=2, **opts)
    array.append(X[1000:])
    array[999, 2] = array[999, 2] + 0.5  # the last row of the old prefix, rewritten
    before = _snapshot(checkpoint)
    with pytest.raises(DataChangedError, match="written for other data"):
        distmix.fit_stream(str(path), **opts)
    assert _snapshot(checkpoint) == before
    array[999, 2] = X[999, 2]  # restored: the stream continues with the new rows only
    model = distmix.fit_stream(str(path), **opts)
    assert model.n_samples_seen_ == 2000
    _, _, _, extra = load_stream_checkpoint(checkpoint)
    # every row counted once: the fingerprint of the whole grown array
    whole = _fingerprint(LocalEngine(X, None, (2000,)))
    assert DataFingerprint.from_json(extra["data_fingerprint"]) == whole


@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_of_batches_resumes_only_on_the_batches_it_has_read(X, tmp_path, shuffle):
    """A stream over a list of batches, interrupted after 3: resuming with one of the
    batches already read changed is refused; with an unread one changed, it goes on."""
    checkpoint = tmp_path / "batches.ck"
    batches = [X[i : i + 250] for i in range(0, 2000, 250)]
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint)

    class Stop(Exception):
        pass

    def stop_after_4(record) -> None:
        if record.n_steps == 4:
            raise Stop

    def interrupted() -> None:
        checkpoint.unlink(missing_ok=True)
        with pytest.raises(Stop):
            distmix.GaussianMixture(resume=True, **opts).fit_stream(
                batches, shuffle=shuffle, report_every=1, callback=stop_after_4
            )

    interrupted()
    _, state, position, extra = load_stream_checkpoint(checkpoint)
    assert state.n_steps == 3 and extra["data_fingerprint"]["n_rows"] == 750
    order = np.random.default_rng([load_stream_checkpoint(checkpoint)[0]["seed"], 0, 0x5EED])
    read = [int(i) for i in order.permutation(8)[:3]] if shuffle else [0, 1, 2]
    before = _snapshot(checkpoint)
    changed = [b.copy() for b in batches]
    changed[read[-1]][17, 1] += 1e-6
    with pytest.raises(DataChangedError):
        distmix.GaussianMixture(resume=True, **opts).fit_stream(changed, shuffle=shuffle)
    assert _snapshot(checkpoint) == before
    unread = next(i for i in range(8) if i not in read)
    changed = [b.copy() for b in batches]
    changed[unread][3, 0] += 1.0
    model = distmix.GaussianMixture(resume=True, **opts).fit_stream(changed, shuffle=shuffle)
    assert model.n_samples_seen_ == 2000


def test_stream_resumed_with_other_blocks_keeps_the_blocks_it_read(X, tmp_path):
    """A stream stopped mid-pass and resumed with another ``block_size`` goes on over the
    blocks it had started with (a position counts them), to the uninterrupted model."""
    checkpoint = tmp_path / "stream.ck"
    # a warm-up of one block: an update a block
    opts = dict(n_components=3, random_state=0, checkpoint=checkpoint, warmup_rows=500)
    whole = distmix.GaussianMixture(3, random_state=0, block_size=500, warmup_rows=500).fit_stream(
        X, window=1
    )

    class Stop(Exception):
        pass

    def stop_after_3(record) -> None:
        if record.n_steps == 3:
            raise Stop

    with pytest.raises(Stop):
        distmix.GaussianMixture(block_size=500, resume=True, **opts).fit_stream(
            X, window=1, report_every=1, callback=stop_after_3
        )
    resumed = distmix.GaussianMixture(block_size=1000, resume=True, **opts).fit_stream(X)
    assert resumed.n_steps_ == whole.n_steps_ == 4
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    np.testing.assert_array_equal(resumed.covariances_, whole.covariances_)


def test_continued_stream_keeps_its_fingerprint(X, tmp_path):
    """A stream continued with ``warm_start`` (in memory, or from its saved model) over a
    grown array still binds its checkpoint to every row read: it resumes, and refuses a
    rewritten row."""
    checkpoint = tmp_path / "stream.ck"
    model = distmix.GaussianMixture(3, random_state=0, checkpoint=checkpoint, warm_start=True)
    model.fit_stream(X[:1000])
    model.fit_stream(X)
    _, _, _, extra = load_stream_checkpoint(checkpoint)
    whole = _fingerprint(LocalEngine(X, None, (2000,)))
    assert DataFingerprint.from_json(extra["data_fingerprint"]) == whole
    resumed = distmix.GaussianMixture(3, random_state=0, checkpoint=checkpoint, resume=True)
    assert resumed.fit_stream(X).n_samples_seen_ == 2000
    changed = X.copy()
    changed[10, 0] += 1.0
    with pytest.raises(DataChangedError):
        distmix.GaussianMixture(3, random_state=0, checkpoint=checkpoint, resume=True).fit_stream(
            changed
        )
    # a saved model carries what it read: continued after a load, the checkpoint binds too
    model.save(tmp_path / "m.npz")
    loaded = distmix.load(tmp_path / "m.npz")
    loaded.set_params(warm_start=True, checkpoint=tmp_path / "again.ck")
    grown = np.concatenate([X, X[:500] + 0.5])
    loaded.fit_stream(grown)
    _, _, _, extra = load_stream_checkpoint(tmp_path / "again.ck")
    assert extra["data_fingerprint"]["n_rows"] == 2500


def test_dask_batches_are_read_once_with_a_checkpoint(X, tmp_path):
    import dask

    batches = [da.from_array(X[i : i + 500], chunks=250) for i in range(0, 2000, 500)]
    counts = []
    for checkpoint in (None, tmp_path / "b.ck"):
        computes: list[int] = []
        with dask.callbacks.Callback(start=lambda dsk, seen=computes: seen.append(1)):
            distmix.GaussianMixture(3, random_state=0, checkpoint=checkpoint).fit_stream(
                batches, shuffle=False
            )
        counts.append(len(computes))
    assert counts[0] == counts[1]
