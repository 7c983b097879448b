"""``distmix fit --stream``: online EM from the command line.

What must hold: the command fits exactly what :func:`distmix.fit_stream` fits with
the same settings; a stream killed mid-pass continues from its checkpoint to the
uninterrupted model, and the checkpoint can be read at any moment; a Zarr array
that grows is continued by reading only its new rows, to the model of one stream
over the whole array; flags that a stream cannot use are refused in one line,
before anything is read or written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import stop_process_group

import distmix
from distmix.cli import main
from distmix.datasets import random_mixture, sample_rows, write_zarr
from distmix.persist import load_stream_checkpoint
from distmix.sources.zarr_write import create_zarr_array

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")
N_FEATURES, N_COMPONENTS, SEED = 3, 3, 7


def assert_same_model(a: distmix.GaussianMixture, b: distmix.GaussianMixture, rtol: float) -> None:
    assert a.n_steps_ == b.n_steps_
    assert a.n_samples_seen_ == b.n_samples_seen_
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(a, name), getattr(b, name), rtol=rtol, atol=0, err_msg=name
        )


def fit_args(data: Path, *flags: object) -> list[str]:
    """``distmix fit DATA --stream`` on Dask's threaded scheduler (no cluster to start)."""
    return ["fit", str(data), "-k", str(N_COMPONENTS), "--stream", "--cluster", "threads"] + [
        str(f) for f in flags
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 rows in 12 Zarr chunks of 500."""
    path = tmp_path_factory.mktemp("data") / "mix.zarr"
    write_zarr(str(path), 6000, N_FEATURES, N_COMPONENTS, seed=SEED, chunk_rows=500)
    return path


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 more rows from the same mixture, as a .npy file."""
    path = tmp_path_factory.mktemp("data") / "held_out.npy"
    mixture = random_mixture(N_FEATURES, N_COMPONENTS, SEED)
    np.save(path, sample_rows(mixture, 10**6, 10**6 + 600, SEED, 500))
    return path


@pytest.mark.parametrize(
    ("flags", "settings"),
    [
        ([], {}),
        (
            [
                "--passes", 2, "--window", 3, "--covariance-type", "diag",
                "--learning-decay", 0.7, "--learning-offset", 2, "--average-after", 4,
                "--forgetting-factor", 0.05, "--random-state", 5, "--reg-covar", 1e-4,
                "--init-params", "k-means++", "--report-every", 2,
            ],
            {
                "n_passes": 2, "window": 3, "covariance_type": "diag",
                "learning_decay": 0.7, "learning_offset": 2.0, "average_after": 4,
                "forgetting_factor": 0.05, "random_state": 5, "reg_covar": 1e-4,
                "init_params": "k-means++", "report_every": 2,
            },
        ),
    ],
    ids=["defaults", "every stream flag"],
)  # fmt: skip
def test_fit_stream_command_equals_fit_stream(dataset, held_out, tmp_path, capsys, flags, settings):
    """``distmix fit --stream`` saves bit for bit the model ``distmix.fit_stream`` fits, and
    prints a line per report: step, rows, rows/s, step size, running and held-out ll."""
    model_path = tmp_path / "model.npz"
    assert main(fit_args(dataset, *flags, "--validation", held_out, "--out", model_path)) == 0
    out = capsys.readouterr().out
    fitted = distmix.load(model_path)

    settings = {"random_state": 0, **settings}
    reference = distmix.fit_stream(str(dataset), n_components=N_COMPONENTS, **settings)
    assert_same_model(fitted, reference, rtol=0)
    assert fitted.converged_ is False  # online EM has no convergence test

    lines = re.findall(
        r"Step (\d+)\s+rows ([\d,]+)\s+[\d,]+ rows/s\s+step ([\d.]+)\s+running ll (-?[\d.]+)"
        r"\s+held-out ll (-?[\d.]+)",
        out,
    )
    every = settings.get("report_every", 10)
    steps = [*range(every, reference.n_steps_ + 1, every)]
    if not steps or steps[-1] != reference.n_steps_:
        steps.append(reference.n_steps_)  # the last update always reports
    assert [int(line[0]) for line in lines] == steps, out
    history = {r["n_steps"]: r for r in reference.stream_history_}
    for step, rows, _, running, _ in lines:
        assert int(rows.replace(",", "")) == history[int(step)]["n_samples_seen"]
        assert float(running) == pytest.approx(history[int(step)]["running_log_likelihood"])
    # the summary ends with the final model's mean log-likelihood on the held-out rows
    summary = re.search(r"running mean log-likelihood (-?[\d.]+); held-out (-?[\d.]+)", out)
    assert summary is not None, out
    assert float(summary[1]) == pytest.approx(reference.lower_bound_, abs=1e-6)
    assert float(summary[2]) == pytest.approx(reference.score(np.load(held_out)), abs=1e-6)
    assert f"{reference.n_steps_} updates over {reference.n_samples_seen_:,} rows" in out

    assert main(["info", str(model_path)]) == 0
    assert f"online EM: {reference.n_steps_} updates" in capsys.readouterr().out


def test_killed_stream_resumes_to_the_uninterrupted_model(tmp_path, capsys):
    """SIGKILL mid-pass, then ``--resume``: the model of a stream never interrupted; the
    checkpoint (written atomically after every update) is readable at every poll."""
    data = tmp_path / "small_chunks.zarr"
    write_zarr(str(data), 2000, 2, 2, seed=3, chunk_rows=100)  # 20 chunks: 40 updates
    checkpoint = tmp_path / "state.npz"
    flags = ["--window", 1, "--passes", 2, "--average-after", 2, "--checkpoint", checkpoint]
    flags += ["-k", 2]
    process = subprocess.Popen(
        [sys.executable, "-m", "distmix", *fit_args(data, *flags, "--quiet")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    polls, steps_seen = 0, 0
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if checkpoint.exists():
                _, state, position, _ = load_stream_checkpoint(checkpoint)  # never partial
                polls += 1
                steps_seen = state.n_steps
                if steps_seen >= 3:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        if steps_seen < 3:
            stop_process_group(process)  # it never got that far: stop it, and fail below
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr
    assert polls >= 1
    _, killed_at, position, _ = load_stream_checkpoint(checkpoint)
    assert 3 <= killed_at.n_steps < 40 and position.in_segment  # stopped mid-stream

    model_path = tmp_path / "model.npz"
    assert main(fit_args(data, *flags, "--resume", "--quiet", "--out", model_path)) == 0
    out = capsys.readouterr().out
    assert f"resuming the stream in {checkpoint} after {killed_at.n_steps} updates" in out
    assert f"stopped in pass {position.pass_index + 1} over rows 0–2,000" in out
    read_now = 4000 - killed_at.n_samples_seen
    assert f"{read_now:,} read in this run" in out

    uninterrupted = distmix.fit_stream(
        str(data), n_components=2, window=1, n_passes=2, average_after=2, random_state=0
    )
    assert_same_model(distmix.load(model_path), uninterrupted, rtol=1e-12)
    assert uninterrupted.n_steps_ == 40


def test_growing_array_reads_only_the_new_rows(dataset, tmp_path, capsys):
    """Stream 3,000 rows with a checkpoint, append 1,500 (whole chunks), rerun with
    ``--resume``: only the new rows are read, and the model is that of one stream over
    the 4,500 rows. Left out, --window and --no-shuffle continue the checkpoint's."""
    rows = np.asarray(zarr.open_array(str(dataset), mode="r")[:4500])
    growing = tmp_path / "growing.zarr"
    array = create_zarr_array(str(growing), (3000, N_FEATURES), chunks=500)
    array[:] = rows[:3000]
    checkpoint, model_path = tmp_path / "state.npz", tmp_path / "model.npz"
    # window 3 (not the default on 2 cores): a rerun that forgot it could not resume
    first = ["--no-shuffle", "--window", 3, "--checkpoint", checkpoint, "--out", model_path]
    assert main(fit_args(growing, *first)) == 0
    assert "3 blocks per update, 1 pass, blocks in order" in capsys.readouterr().out
    assert distmix.load(model_path).n_samples_seen_ == 3000

    array.append(rows[3000:])
    rerun = ["--checkpoint", checkpoint, "--resume", "--out", model_path, "--overwrite"]
    assert main(fit_args(growing, *rerun)) == 0
    out = capsys.readouterr().out
    assert "the first 3,000 rows streamed in full" in out
    assert "3 blocks per update, 1 pass, blocks in order" in out
    assert "over 4,500 rows (1,500 read in this run" in out
    _, state, position, _ = load_stream_checkpoint(checkpoint)
    assert (state.n_samples_seen, position.rows_done, position.in_segment) == (4500, 4500, False)

    whole = tmp_path / "whole.zarr"
    create_zarr_array(str(whole), rows.shape, chunks=500)[:] = rows
    one_go = distmix.fit_stream(
        str(whole), n_components=N_COMPONENTS, window=3, shuffle=False, random_state=0
    )
    assert_same_model(distmix.load(model_path), one_go, rtol=1e-12)

    # nothing appended since: nothing read, the same model written again
    assert main(fit_args(growing, *rerun)) == 0
    assert "nothing new to read in this run" in capsys.readouterr().out
    assert_same_model(distmix.load(model_path), one_go, rtol=1e-12)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--stream", "--max-iter", 5], r"--max-iter does not apply with --stream"),
        (["--stream", "--max-iter", 0], r"--max-iter does not apply with --stream"),
        (["--stream", "--tol", 1e-4], r"--tol does not apply with --stream: .*no convergence"),
        (["--stream", "--n-init", 3], r"--n-init does not apply with --stream"),
        (["--stream", "--progress"], r"--progress does not apply with --stream"),
        (["--stream", "--passes", 0], r"--passes must be an integer >= 1, got 0"),
        (["--stream", "--window", 0], r"--window must be an integer >= 1, got 0"),
        (["--stream", "--report-every", -1], r"--report-every must be an integer >= 1"),
        (["--stream", "--learning-decay", 0.3], r"--learning-decay must be a number in \(0\.5"),
        (["--stream", "--learning-offset", -1], r"--learning-offset must be a finite number"),
        (["--stream", "--forgetting-factor", 2], r"--forgetting-factor must be a number in \(0"),
        (["--stream", "--average-after", -1], r"--average-after must be an integer >= 0"),
        (["--stream", "--reg-covar", -1], r"--reg-covar must be a finite number >= 0"),
        (["--stream", "--resume"], r"--resume needs --checkpoint"),
        (["--passes", 2], r"--passes applies only to online EM: add --stream"),
        (["--no-shuffle"], r"--no-shuffle applies only to online EM"),
        (["--learning-decay", 0.7], r"--learning-decay applies only to online EM"),
        (["--validation", "held.npy"], r"--validation applies only to online EM"),
    ],
)
def test_flags_a_stream_cannot_use_are_refused_in_one_line(
    dataset, tmp_path, capsys, flags, message
):
    model_path, checkpoint = tmp_path / "model.npz", tmp_path / "state.npz"
    args = ["fit", str(dataset), "-k", "3", "--cluster", "threads", "--out", str(model_path)]
    if "--resume" not in flags:
        args += ["--checkpoint", str(checkpoint)]
    assert main(args + [str(f) for f in flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the data were opened
    assert captured.err.startswith("distmix fit: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert re.search(message, captured.err), captured.err
    assert not model_path.exists() and not checkpoint.exists()


def test_resuming_with_other_settings_is_refused(dataset, tmp_path, capsys):
    checkpoint, model_path = tmp_path / "state.npz", tmp_path / "model.npz"
    assert main(fit_args(dataset, "--window", 6, "--checkpoint", checkpoint, "--quiet")) == 0
    rerun = ["--checkpoint", checkpoint, "--resume", "--learning-decay", 0.9]
    assert main(fit_args(dataset, *rerun, "--out", model_path)) == 2
    error = capsys.readouterr().err
    assert error.startswith("distmix fit: error: checkpoint ") and error.count("\n") == 1
    assert "learning_decay 0.6 in the checkpoint, 0.9 now" in error
    assert not model_path.exists()


def test_fit_help_explains_streaming(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "streaming (online EM):" in text and "batch EM (not with --stream):" in text
    assert "--checkpoint state.npz --resume" in text
    for flag in ("--passes", "--window", "--no-shuffle", "--learning-decay", "--validation"):
        assert flag in text
