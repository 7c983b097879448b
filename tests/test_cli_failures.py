"""How ``distmix fit`` fails: output paths checked before the first pass (naming the user's
path), one line per failure, Ctrl-C that says where the checkpoint is, a refused scheduler
address that fails at once, and a resume that says where it resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import mixture_data, run_cli

import distmix
from distmix.persist import atomic_write_bytes, load_checkpoint
from distmix.sources.dataset import open_dataset

NAN_ERROR = "contains NaN"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A clean ``.npy`` and one whose last row is NaN: a fit of the latter fails in its
    first pass, so an error other than the NaN error proves a check ran before it."""
    root = tmp_path_factory.mktemp("data")
    X = mixture_data(50, n_rows=3000, n_features=3, n_components=3)
    bad = X.copy()
    bad[-1, 0] = np.nan
    np.save(root / "x.npy", X)
    np.save(root / "nan.npy", bad)
    return {"clean": root / "x.npy", "nan": root / "nan.npy"}


FIT = ("-k", "3", "--cluster", "threads", "--quiet")


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("distmix fit: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert NAN_ERROR not in lines[0] and ".tmp" not in lines[0]
    return lines[0]


def test_same_file_for_out_and_checkpoint_is_refused_before_the_fit(data, tmp_path):
    same = tmp_path / "m.npz"
    result = run_cli("fit", data["nan"], *FIT, "--out", same, "--checkpoint", same)
    _one_line_error(result, f"--out and --checkpoint name the same file ({same})")
    assert not same.exists()
    result = run_cli("fit", data["nan"], *FIT, "--out", data["nan"])
    _one_line_error(result, "--out and DATA name the same file")


@pytest.mark.parametrize("where", ["parent is a file", "read-only file system"])
def test_unwritable_out_or_checkpoint_is_refused_before_the_fit(data, tmp_path, where):
    if where == "parent is a file":
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "m.npz"
    else:  # root ignores permission bits, not a read-only mount
        target = Path("/proc/distmix-test/m.npz")
    for flag in ("--out", "--checkpoint"):
        result = run_cli("fit", data["nan"], *FIT, flag, target)
        _one_line_error(result, f"{flag} {target}: cannot write in")


def test_missing_parent_directories_are_created_and_unwritable_ancestors_refused(data, tmp_path):
    """One policy for every path distmix writes: ``generate``, ``fit --out`` and
    ``fit --checkpoint`` into directories that do not exist yet create them; when the
    nearest existing ancestor cannot be written, the command fails before any work,
    naming the user's path (a read-only file system stops root too)."""
    out = tmp_path / "new3" / "g.zarr"
    result = run_cli("generate", out, "--rows", 1000, "--features", 2, "--components", 2)
    assert result.returncode == 0, result.stderr
    assert open_dataset(str(out)).shape == (1000, 2)
    model, checkpoint = tmp_path / "models" / "a" / "m.npz", tmp_path / "cks" / "fit.ck"
    result = run_cli("fit", data["clean"], *FIT, "--out", model, "--checkpoint", checkpoint)
    assert result.returncode == 0, result.stderr
    assert distmix.load(model).n_components == 3 and checkpoint.is_file()

    blocked = Path("/proc/distmix-test/new3/g.zarr")
    result = run_cli("generate", blocked, "--rows", 1000, "--features", 2, "--components", 2)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"distmix generate: error: {blocked}: cannot write in /proc (")
    result = run_cli("fit", data["nan"], *FIT, "--out", blocked.with_suffix(".npz"))
    _one_line_error(result, f"--out {blocked.with_suffix('.npz')}: cannot write in /proc (")


def test_existing_model_is_never_taken_for_a_checkpoint(data, tmp_path):
    model = tmp_path / "model.npz"
    assert run_cli("fit", data["clean"], *FIT, "--out", model).returncode == 0
    before = model.read_bytes()
    for extra in ((), ("--resume",), ("--overwrite",)):
        result = run_cli("fit", data["nan"], *FIT, "--checkpoint", model, *extra)
        _one_line_error(
            result, f"--checkpoint {model} exists and is a distmix model file, not a distmix "
        )
    assert model.read_bytes() == before


def test_existing_out_and_checkpoint_need_overwrite_or_resume(data, tmp_path):
    model, checkpoint = tmp_path / "model.npz", tmp_path / "fit.ck"
    assert run_cli("fit", data["clean"], *FIT, "--out", model, "--checkpoint", checkpoint)
    before = model.read_bytes(), checkpoint.read_bytes()
    result = run_cli("fit", data["nan"], *FIT, "--out", model)
    _one_line_error(result, f"--out {model} already exists; pass --overwrite")
    result = run_cli("fit", data["nan"], *FIT, "--checkpoint", checkpoint)
    _one_line_error(result, f"--checkpoint {checkpoint} holds a fit already: add --resume")
    assert (model.read_bytes(), checkpoint.read_bytes()) == before
    # --resume continues the checkpoint (and says where); --overwrite replaces the model
    result = run_cli(
        "fit", data["clean"], *FIT, "--checkpoint", checkpoint, "--resume", "--out", model
    )
    _one_line_error(result, "already exists; pass --overwrite")
    result = run_cli(
        "fit",
        data["clean"],
        *FIT,
        "--checkpoint",
        checkpoint,
        "--resume",
        "--out",
        model,
        "--overwrite",
    )
    assert result.returncode == 0, result.stderr
    assert f"resuming the fit in {checkpoint}: the fit it records had finished" in result.stdout
    np.testing.assert_array_equal(
        distmix.load(model).means_, load_checkpoint(checkpoint).best.params.means
    )


def test_failed_write_names_the_users_path(tmp_path):
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "fit.ck"
    with pytest.raises(OSError) as error:
        atomic_write_bytes(target, b"data")
    assert str(error.value).startswith(f"{target}: could not be written")
    assert ".tmp" not in str(error.value)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_refused_scheduler_address_fails_at_once(data):
    address = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    result = run_cli("fit", data["clean"], "-k", "3", "--cluster", address, timeout=60)
    assert time.monotonic() - start < 20  # the client's own timeout alone is 30 s
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "refused" in lines[0], result.stderr


@pytest.mark.slow
def test_failing_block_on_a_local_cluster_prints_one_line(tmp_path):
    """A corrupt chunk read by the workers of the default local cluster: one line, no
    ``Compute Failed`` traceback from the workers; with --debug the traceback shows."""
    path = tmp_path / "c.zarr"
    assert run_cli(
        "generate", path, "--rows", 40_000, "--features", 3, "--components", 2,
        "--chunk-rows", 5_000,
    ).returncode == 0  # fmt: skip
    chunk = path / "c" / "3" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(raw)
    result = run_cli("fit", path, "-k", "2", "--out", tmp_path / "m.npz")
    assert result.returncode == 2
    assert "Compute Failed" not in result.stderr and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "chunk c/3/0" in lines[0], result.stderr
    assert not (tmp_path / "m.npz").exists()
    debug = run_cli("fit", path, "-k", "2", "--cluster", "threads", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.slow
def test_ctrl_c_says_where_the_checkpoint_is(tmp_path):
    """SIGINT to the whole process group (as a terminal's Ctrl-C) during a fit on the
    default local cluster: exit 130, one line naming the checkpoint, no tracebacks from
    the command or its workers; the checkpoint then resumes."""
    X = mixture_data(51, n_rows=200_000, n_features=6, n_components=6, separation=1.0)
    np.save(tmp_path / "x.npy", X)
    checkpoint = tmp_path / "fit.ck"
    args = ["fit", tmp_path / "x.npy", "-k", "6", "--tol", "0", "--max-iter", "500", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distmix", *map(str, args), "--checkpoint", str(checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0] == (
        f"distmix fit: interrupted; the fit's state after its last finished iteration is in "
        f"{checkpoint}: rerun the same command with --resume to continue."
    )
    done = load_checkpoint(checkpoint).current.n_iter
    # the resumed fit says where it resumes (then is interrupted again)
    resumed = subprocess.Popen(
        [sys.executable, "-m", "distmix", *map(str, args), "--checkpoint", str(checkpoint)]
        + ["--resume", "--cluster", "threads"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first_lines = [resumed.stdout.readline() for _ in range(2)]
        os.killpg(resumed.pid, signal.SIGINT)
        resumed.communicate(timeout=60)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
            resumed.wait()
    assert (
        f"resuming the fit in {checkpoint}: initialisation 1 of 1 resumes after iteration"
        in (first_lines[1])
    ), first_lines
    assert int(first_lines[1].split()[-1]) >= done
    assert resumed.returncode == 130


def test_generate_writes_all_or_nothing(tmp_path):
    """``distmix generate`` killed mid-write leaves no array at OUT (its chunks were
    written beside it); a rerun then succeeds; an existing array needs --overwrite."""
    out = tmp_path / "g.zarr"
    args = ["generate", out, "--rows", 4_000_000, "--features", 8, "--components", 3]
    args += ["--chunk-rows", 20_000]
    for extra in (0.0, 0.5):
        proc = subprocess.Popen(
            [sys.executable, "-m", "distmix", *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # kill it mid-write: once its chunks are going into a hidden temporary beside
        # OUT (however long the start took on a busy machine), or a moment later
        deadline = time.monotonic() + 120
        temporaries: list[Path] = []
        while not temporaries and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            temporaries = [p for p in tmp_path.iterdir() if p.name.startswith(".g.zarr.tmp-")]
        time.sleep(extra)
        assert proc.poll() is None, "the generator finished before it could be killed"
        proc.kill()
        proc.wait()
        assert temporaries, "the chunks were not written into a hidden temporary"
        assert not out.exists()
    small = ["generate", out, "--rows", 1000, "--features", 2, "--components", 2]
    assert run_cli(*small).returncode == 0
    assert open_dataset(str(out)).shape == (1000, 2)
    result = run_cli(*small, "--seed", 3)
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert run_cli(*small, "--seed", 3, "--overwrite").returncode == 0
    # a SIGKILLed run leaves its hidden temporary behind, never a visible array
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["g.zarr"]
