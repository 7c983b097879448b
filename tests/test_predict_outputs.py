"""``distmix predict --out`` writes all or nothing: a failed, interrupted or killed
predict leaves no output (and no temporary), an existing output is refused unless
``--overwrite``, outputs are checksummed with a fill value that is never data, and
a bad output path is refused before the first pass, naming the user's path."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

import distmix
from distmix.chunks import create_zarr_array

pytestmark = pytest.mark.slow

N_FEATURES = 3
CHUNK_ROWS = 2_000


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distmix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def predict(*args: object) -> subprocess.CompletedProcess:
    return run_cli("predict", *args, "--cluster", "threads")


def write_rows(path: Path, rows: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> Path:
    array = create_zarr_array(str(path), rows.shape, chunk_rows)
    array[:] = rows
    return path


def leftovers(directory: Path) -> list[str]:
    """Hidden temporaries (``.NAME.tmp-…``, ``.NAME.old-…``, ``.NAME.check-…``)."""
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A model, clean rows over 10 blocks as Zarr, and the same with a NaN row in
    block 8, in a directory of their own (outputs go to each test's tmp_path)."""
    root = tmp_path_factory.mktemp("inputs")
    rows = np.concatenate(
        [
            np.random.default_rng(0).normal(size=(10_000, N_FEATURES)),
            np.random.default_rng(1).normal(6.0, 1.0, size=(10_000, N_FEATURES)),
        ]
    )[np.random.default_rng(2).permutation(20_000)]
    model = distmix.GaussianMixture(2, random_state=0).fit(rows)
    model.save(root / "model.npz")
    bad = rows.copy()
    bad[17_123, 1] = np.nan  # in block 8 of 10: blocks before it are written first
    return {
        "model": root / "model.npz",
        "clean": write_rows(root / "clean.zarr", rows),
        "bad": write_rows(root / "bad.zarr", bad),
        "labels": model.predict(rows),
        "proba": model.predict_proba(rows),
        "rows": rows,
    }


def read_output(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    return np.asarray(zarr.open_array(str(path), mode="r")[:])


@pytest.mark.parametrize(("flag", "expected"), [(None, "labels"), ("--proba", "proba")])
def test_a_predict_failing_halfway_leaves_nothing_and_a_rerun_succeeds(
    setup, tmp_path, flag, expected
):
    """Blocks 0-7 are written before block 8's NaN row stops the predict."""
    out = tmp_path / f"{expected}.zarr"
    options = ("--out", out, *([flag] if flag else []))
    failed = predict(setup["model"], setup["bad"], *options)
    assert failed.returncode != 0
    assert "row 17123" in failed.stderr
    assert not out.exists() and not out.is_symlink()
    assert leftovers(tmp_path) == []

    rerun = predict(setup["model"], setup["clean"], *options)
    assert rerun.returncode == 0, rerun.stderr
    np.testing.assert_allclose(read_output(out), setup[expected], rtol=1e-12)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["labels.zarr", "labels.npy"])
def test_an_existing_output_is_refused_without_overwrite_and_replaced_with_it(
    setup, tmp_path, name
):
    out = tmp_path / name
    assert predict(setup["model"], setup["clean"], "--out", out, "--proba").returncode == 0
    # refused before any work: the data's NaN row would be the error otherwise
    refused = predict(setup["model"], setup["bad"], "--out", out)
    assert refused.returncode == 2
    message = one_line(refused)
    assert str(out) in message and "--overwrite" in message and "NaN" not in message
    np.testing.assert_allclose(read_output(out), setup["proba"], rtol=1e-12)

    replaced = predict(setup["model"], setup["clean"], "--out", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    np.testing.assert_array_equal(read_output(out), setup["labels"])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["labels.zarr", "labels.npy"])
def test_a_failed_overwrite_keeps_the_old_output(setup, tmp_path, name):
    out = tmp_path / name
    assert predict(setup["model"], setup["clean"], "--out", out).returncode == 0
    failed = predict(setup["model"], setup["bad"], "--out", out, "--overwrite", "--proba")
    assert failed.returncode != 0 and "row 17123" in failed.stderr
    np.testing.assert_array_equal(read_output(out), setup["labels"])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("flag", "dtype", "fill", "expected"),
    [
        (None, np.int64, -1, "labels"),
        ("--proba", np.float64, np.nan, "proba"),
        ("--score-samples", np.float64, np.nan, None),
    ],
)
def test_output_arrays_end_with_crc32c_and_fill_with_a_value_that_is_never_data(
    setup, tmp_path, flag, dtype, fill, expected
):
    out = tmp_path / "out.zarr"
    result = predict(setup["model"], setup["clean"], "--out", out, *([flag] if flag else []))
    assert result.returncode == 0, result.stderr
    array = zarr.open_array(str(out), mode="r")
    assert isinstance(array.compressors[-1], Crc32cCodec)
    assert array.dtype == dtype
    np.testing.assert_array_equal(np.asarray(array.fill_value), np.asarray(fill, dtype=dtype))
    assert array.chunks[0] == CHUNK_ROWS  # the blocks, one chunk each
    if expected is not None:
        np.testing.assert_allclose(array[:], setup[expected], rtol=1e-12)
    else:
        model = distmix.load(setup["model"])
        np.testing.assert_allclose(array[:], model.score_samples(setup["rows"]), rtol=1e-12)
    # a flipped bit in a chunk is an error, not other numbers
    chunk = out / "c" / "3" / "0" if array.ndim == 2 else out / "c" / "3"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(Exception, match="(?i)checksum|crc"):
        zarr.open_array(str(out), mode="r")[:]


def _unwritable_directory(tmp_path: Path) -> Path:
    """A read-only directory; root ignores permission bits, so then ``/sys``."""
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        fd, probe = tempfile.mkstemp(dir=directory)
    except OSError:
        return directory
    os.close(fd)
    os.unlink(probe)
    return Path("/sys")  # read-only to root too (sysfs)


@pytest.mark.parametrize("case", ["read-only", "missing", "file"])
def test_an_unwritable_output_is_refused_before_the_first_pass(setup, tmp_path, case):
    if case == "read-only":
        out, expected = _unwritable_directory(tmp_path) / "labels.zarr", "cannot write in"
    elif case == "missing":
        out, expected = tmp_path / "no-such-dir" / "labels.zarr", "does not exist"
    else:
        (tmp_path / "a-file").write_text("")
        out, expected = tmp_path / "a-file" / "labels.npy", "is not a directory"
    start = time.perf_counter()
    # the data hold a NaN row: a pass over them would fail with that error instead
    refused = predict(setup["model"], setup["bad"], "--out", out)
    assert refused.returncode == 2
    message = one_line(refused)
    assert message.startswith(f"distmix predict: error: {out}:")
    assert expected in message and "NaN" not in message and ".tmp-" not in message
    assert not (tmp_path / "no-such-dir").exists()
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("kind", ["directory", "group"])
def test_overwrite_replaces_only_a_zarr_array(setup, tmp_path, kind):
    out = tmp_path / "results"
    if kind == "group":
        zarr.open_group(str(out), mode="w").create_array("x", shape=(3,), dtype="f8")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    refused = predict(setup["model"], setup["clean"], "--out", out, "--overwrite")
    assert refused.returncode == 2
    assert f"{out} exists and is not a Zarr array" in one_line(refused)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


@pytest.mark.parametrize("role", ["model", "clean"])
def test_the_output_may_not_replace_an_input(setup, tmp_path, role):
    before = sorted(p.name for p in setup[role].parent.iterdir())
    refused = predict(setup["model"], setup["clean"], "--out", setup[role], "--overwrite")
    assert refused.returncode == 2
    message = one_line(refused)
    assert str(setup[role]) in message and ("MODEL" if role == "model" else "DATA") in message
    assert sorted(p.name for p in setup[role].parent.iterdir()) == before
    distmix.load(setup["model"])  # both still whole


def test_a_url_output_is_refused_as_unsupported(setup):
    refused = predict(setup["model"], setup["clean"], "--out", "s3://bucket/labels.zarr")
    assert refused.returncode == 2
    assert "s3://bucket/labels.zarr: only local output paths" in one_line(refused)


# -- interrupted writers ------------------------------------------------------------


@pytest.fixture(scope="module")
def many_chunks(tmp_path_factory, setup) -> dict:
    """400,000 rows in 200 chunks, so that writing the labels takes a second or two."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    rows = setup["rows"][rng.integers(0, len(setup["rows"]), size=400_000)]
    rows = rows + rng.normal(scale=0.01, size=rows.shape)
    model = distmix.load(setup["model"])
    return {"data": write_rows(root / "rows.zarr", rows), "labels": model.predict(rows)}


def _start_predict(setup: dict, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "distmix", "predict", str(setup["model"]), str(data)]
    return subprocess.Popen(
        [*command, "--out", str(out), "--cluster", "threads", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_until_writing(process: subprocess.Popen, out: Path, *, replacing: bool = False) -> None:
    """Return once the process writes (a temporary beside ``out`` appears, or ``out``
    itself unless it existed before), ends, or 120 s pass."""
    start = time.perf_counter()
    while time.perf_counter() - start < 120 and process.poll() is None:
        if any(name.startswith(f".{out.name}.tmp-") for name in os.listdir(out.parent)):
            return
        if out.exists() and not replacing:
            return
        time.sleep(0.002)


def _assert_absent_or_complete(out: Path, expected: np.ndarray, when: str) -> bool:
    if not out.exists():
        return False
    try:
        values = np.asarray(zarr.open_array(str(out), mode="r")[:])
    except Exception as error:  # a store without its metadata is partial too
        raise AssertionError(f"{when}: {out} exists but does not read: {error!r}") from error
    assert values.shape == expected.shape, when
    assert np.array_equal(values, expected), f"{when}: {out} is partial"
    return True


def test_sigkill_mid_write_never_leaves_a_partial_output(setup, many_chunks, tmp_path):
    """Kill ``distmix predict --out X.zarr`` at random moments while it writes: a reader
    finds no X.zarr or a complete, correct one, with and without --overwrite."""
    out = tmp_path / "labels.zarr"
    expected = many_chunks["labels"]
    # one undisturbed run measures how long the write lasts once it has started
    process = _start_predict(setup, many_chunks["data"], out)
    _wait_until_writing(process, out)
    start = time.perf_counter()
    assert process.wait(timeout=300) == 0, process.stderr.read()  # type: ignore[union-attr]
    writing = time.perf_counter() - start
    assert _assert_absent_or_complete(out, expected, "undisturbed run")

    rng = random.Random(0)
    killed_mid_write = 0
    for attempt in range(6):
        overwrite = attempt % 2 == 1
        if not overwrite and out.exists():
            _remove_tree(out)
        if overwrite and not out.exists():
            assert _start_predict(setup, many_chunks["data"], out).wait(timeout=300) == 0
        extra = ("--overwrite",) if overwrite else ()
        process = _start_predict(setup, many_chunks["data"], out, *extra)
        _wait_until_writing(process, out, replacing=overwrite)
        time.sleep(rng.uniform(0.0, writing))
        killed_mid_write += process.poll() is None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        when = f"kill {attempt} (overwrite={overwrite})"
        _assert_absent_or_complete(out, expected, when)
        for name in leftovers(tmp_path):  # what a kill leaves is hidden, never read
            _remove_tree(tmp_path / name)
    assert killed_mid_write >= 3  # the kills did land while writing

    # and a clean run afterwards succeeds
    if out.exists():
        _remove_tree(out)
    assert _start_predict(setup, many_chunks["data"], out).wait(timeout=300) == 0
    assert _assert_absent_or_complete(out, expected, "final run")


def test_ctrl_c_mid_write_removes_the_temporary(setup, many_chunks, tmp_path):
    out = tmp_path / "labels.zarr"
    rng = random.Random(1)
    for attempt in range(3):
        process = _start_predict(setup, many_chunks["data"], out)
        _wait_until_writing(process, out)
        time.sleep(rng.uniform(0.0, 0.5))
        if process.poll() is not None:  # finished first: nothing to interrupt
            _remove_tree(out)
            continue
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        assert not out.exists(), f"attempt {attempt}"
        assert leftovers(tmp_path) == [], f"attempt {attempt}"


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
