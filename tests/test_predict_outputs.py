"""``distmix predict --out`` writes all or nothing: a failed, interrupted or killed
predict leaves no output (and no temporary), an existing output is refused unless
``--overwrite``, outputs are checksummed with a fill value that is never data, and
a bad output path is refused before the first pass, naming the user's path."""

from __future__ import annotations

import contextlib
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
from distmix.sources.zarr_write import create_zarr_array

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


@pytest.mark.parametrize("case", ["read-only", "new directory in a read-only one", "file"])
def test_an_unwritable_output_is_refused_before_the_first_pass(setup, tmp_path, case):
    """Refused naming the user's path (and the flag), never a temporary's: the
    directory where the output would be created (or its nearest existing ancestor,
    when the directories in between do not exist yet) must take a new file."""
    if case == "read-only":
        out, expected = _unwritable_directory(tmp_path) / "labels.zarr", "cannot write in"
    elif case == "new directory in a read-only one":
        out = _unwritable_directory(tmp_path) / "new" / "deeper" / "labels.zarr"
        expected = f"cannot write in {out.parent.parent.parent}"
    else:
        (tmp_path / "a-file").write_text("")
        out, expected = tmp_path / "a-file" / "labels.npy", "(not a directory)"
    start = time.perf_counter()
    # the data hold a NaN row: a pass over them would fail with that error instead
    refused = predict(setup["model"], setup["bad"], "--out", out)
    assert refused.returncode == 2
    message = one_line(refused)
    assert message.startswith(f"distmix predict: error: --out {out}:")
    assert expected in message and "NaN" not in message and ".tmp-" not in message
    if case == "new directory in a read-only one":
        assert not out.parent.parent.exists()  # the check creates nothing
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("name", ["labels.zarr", "labels.npy"])
def test_predict_into_a_directory_that_does_not_exist_yet_creates_it(setup, tmp_path, name):
    """As ``model.save`` and ``distmix generate`` do; a failed predict removes the
    directories it made."""
    out = tmp_path / "new" / "deeper" / name
    failed = predict(setup["model"], setup["bad"], "--out", out)
    assert failed.returncode == 2 and "row 17123" in failed.stderr
    assert os.listdir(tmp_path) == []
    result = predict(setup["model"], setup["clean"], "--out", out)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_output(out), setup["labels"])
    assert leftovers(out.parent) == []


def test_model_files_and_outputs_share_one_path_policy(setup, tmp_path):
    """``check_file_target`` (models, checkpoints) and ``check_output_path`` (predict,
    generate): a parent that does not exist yet is fine, nothing is created by the
    check, and an unwritable nearest ancestor is refused in the same words."""
    from distmix.outputs import check_output_path
    from distmix.persist import MODEL_FORMAT, check_file_target

    new = tmp_path / "a" / "b"
    assert check_file_target(new / "m.npz", what="--out", kinds=(MODEL_FORMAT,), replace=False)
    assert check_output_path(new / "labels.zarr", what="--out")
    assert os.listdir(tmp_path) == []
    blocked = _unwritable_directory(tmp_path) / "a" / "b"
    messages = []
    for path, check in [
        (blocked / "m.npz", lambda p: check_file_target(p, what="--out", kinds=(), replace=False)),
        (blocked / "labels.zarr", lambda p: check_output_path(p, what="--out")),
    ]:
        with pytest.raises(PermissionError) as error:
            check(path)
        messages.append(str(error.value).replace(path.name, "NAME"))
        assert str(error.value).startswith(f"--out {path}: cannot write in {blocked.parent.parent}")
    assert messages[0] == messages[1]
    for url in ("s3://bucket/x", "gs:bucket/x"):
        with pytest.raises(ValueError, match=f"^--out {url}: .*local"):
            check_file_target(url, what="--out", kinds=(), replace=False)
        with pytest.raises(ValueError, match=f"^--out {url}: .*local"):
            check_output_path(url, what="--out")


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


def _chunks_written(out: Path) -> int:
    """How many chunks the hidden temporaries beside ``out`` hold (none once the
    complete output was renamed onto ``out``)."""
    count = 0
    for name in os.listdir(out.parent):
        if name.startswith(f".{out.name}.tmp-"):
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                count += len(os.listdir(out.parent / name / "c"))
    return count


def _wait_until_written(process: subprocess.Popen, out: Path, chunks: int) -> None:
    """Return once the process has written ``chunks`` chunks into its temporary, ends,
    or 120 s pass: a moment chosen by progress, whatever the machine's speed."""
    start = time.perf_counter()
    while time.perf_counter() - start < 120 and process.poll() is None:
        if _chunks_written(out) >= chunks:
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
    """Kill ``distmix predict --out X.zarr`` at random points of its write (after a
    random number of its 200 chunks): a reader finds no X.zarr or a complete, correct
    one, with and without --overwrite. A kill counts as mid-write only if it left the
    temporary behind with chunks in it (it came before the rename); most kills must."""
    out = tmp_path / "labels.zarr"
    expected = many_chunks["labels"]
    n_chunks = len(expected) // CHUNK_ROWS
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
        _wait_until_written(process, out, rng.randint(1, n_chunks))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        when = f"kill {attempt} (overwrite={overwrite})"
        _assert_absent_or_complete(out, expected, when)
        killed_mid_write += _chunks_written(out) > 0
        for name in leftovers(tmp_path):  # what a kill leaves is hidden, never read
            _remove_tree(tmp_path / name)
    assert killed_mid_write >= 4, f"{killed_mid_write} of 6 kills landed mid-write"

    # and a clean run afterwards succeeds
    if out.exists():
        _remove_tree(out)
    assert _start_predict(setup, many_chunks["data"], out).wait(timeout=300) == 0
    assert _assert_absent_or_complete(out, expected, "final run")


def test_ctrl_c_mid_write_removes_the_temporary(setup, many_chunks, tmp_path):
    """SIGINT while chunks go into the hidden temporary (after a random number of the
    first half of its 200 chunks): exit 130, no output and no temporary left. An
    attempt counts only if the temporary held chunks just before the signal and the
    process then exited 130 (a signal that came after the rename finds a complete
    output, which is correct too but interrupts nothing); most must count."""
    out = tmp_path / "labels.zarr"
    n_chunks = len(many_chunks["labels"]) // CHUNK_ROWS
    rng = random.Random(1)
    interrupted = 0
    for attempt in range(4):
        process = _start_predict(setup, many_chunks["data"], out)
        _wait_until_written(process, out, rng.randint(1, n_chunks // 2))
        mid_write = process.poll() is None and _chunks_written(out) > 0
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        if _assert_absent_or_complete(out, many_chunks["labels"], f"attempt {attempt}"):
            _remove_tree(out)  # the signal came after the rename: nothing to interrupt
            continue
        assert leftovers(tmp_path) == [], f"attempt {attempt}"
        if mid_write:
            assert code == 130, process.stderr.read()  # type: ignore[union-attr]
            interrupted += 1
    assert interrupted >= 3, f"{interrupted} of 4 signals interrupted a write"


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


# -- a failed write on a cluster --------------------------------------------------------


def _first_block_fails_others_write_late(block: np.ndarray, block_info=None) -> np.ndarray:
    """Block 0 raises at once; every other block is ready only 3 s later."""
    if block_info[0]["chunk-location"][0] == 0:
        raise ValueError("block 0 is bad")
    time.sleep(3.0)
    return block


def test_a_failed_write_on_a_cluster_leaves_no_late_temporary(tmp_path):
    """On a real LocalCluster (2 threads), block 0 fails while blocks 1 and 2 are still
    computing: once ``write_output`` raises, no task of that write may still write a
    chunk, which would create the removed temporary again (it is removed only after
    every block task that had started has ended)."""
    import dask.array as da
    from distributed import Client, LocalCluster

    from distmix.outputs import write_output

    out = tmp_path / "lab.zarr"
    result = da.zeros((40, 2), chunks=(10, 2)).map_blocks(
        _first_block_fails_others_write_late, dtype=float
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        with pytest.raises(ValueError, match="block 0 is bad"):
            write_output(out, result, client=client)
        assert os.listdir(tmp_path) == []
        deadline = time.monotonic() + 4.0  # past the late blocks' 3 s
        while time.monotonic() < deadline:
            assert os.listdir(tmp_path) == [], "a late block wrote into the removed temporary"
            time.sleep(0.05)
