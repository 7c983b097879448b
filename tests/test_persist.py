"""Model files and checkpoints: exact round trips, refused tampering, crash-safe resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import dask
import dask.array as da
import dask.callbacks
import numpy as np
import pytest
from conftest import mixture_data, starting_params
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.fingerprint import DataChangedError
from distmix.persist import (
    ModelFileError,
    load_checkpoint,
    read_archive,
    write_archive,
)

FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


@pytest.fixture
def fitted(covariance_type):
    X = mixture_data(3, n_rows=500, n_features=3, n_components=3)
    model = distmix.GaussianMixture(
        3, covariance_type=covariance_type, random_state=0, tol=1e-6, block_size=128
    )
    return model.fit(X), X


def test_model_file_round_trip_is_exact(fitted, tmp_path):
    model, X = fitted
    model.save(tmp_path / "model.npz")
    loaded = distmix.load(tmp_path / "model.npz")
    for name in FITTED:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name), err_msg=name)
    assert loaded.lower_bounds_ == model.lower_bounds_
    assert (loaded.n_iter_, loaded.converged_, loaded.lower_bound_) == (
        model.n_iter_,
        model.converged_,
        model.lower_bound_,
    )
    assert loaded.get_params() == model.get_params()
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("written_by", ["save", "an older distmix"])
def test_loaded_model_is_a_model_not_a_running_fit(tmp_path, monkeypatch, capsys, written_by):
    """A model saved from a checkpointed, resumable, verbose fit loads without those
    run-time options: in the checkpoint's own directory, ``fit`` on other data starts
    afresh, prints nothing and leaves the checkpoint alone."""
    monkeypatch.chdir(tmp_path)
    X = mixture_data(5, n_rows=400, n_features=2, n_components=2)
    other = mixture_data(6, n_rows=400, n_features=2, n_components=2)
    run_time = dict(checkpoint="fit.ck", resume=True, warm_start=True, verbose=2)
    model = distmix.GaussianMixture(2, random_state=0, verbose_interval=3, **run_time)
    model.fit(X)
    model.save("model.npz")
    if written_by != "save":  # files from before kept the run-time settings: not obeyed
        meta, arrays = read_archive("model.npz", "distmix-model")
        meta["estimator_params"].update(run_time, verbose_interval=3)
        write_archive("model.npz", meta, arrays)
    checkpoint = Path("fit.ck").read_bytes()
    loaded = distmix.load("model.npz")
    params = loaded.get_params()
    assert (params["checkpoint"], params["resume"], params["warm_start"]) == (None, False, False)
    assert (params["verbose"], params["verbose_interval"]) == (0, 10)
    assert params["random_state"] == 0 and params["n_components"] == 2
    capsys.readouterr()
    loaded.fit(other)
    assert capsys.readouterr().out == ""
    fresh = distmix.GaussianMixture(2, random_state=0).fit(other)
    np.testing.assert_array_equal(loaded.means_, fresh.means_)
    assert Path("fit.ck").read_bytes() == checkpoint
    if written_by == "save":
        meta, _ = read_archive("model.npz", "distmix-model")
        assert not set(run_time) & set(meta["estimator_params"])


def test_model_file_keeps_array_valued_settings(tmp_path):
    X = mixture_data(4, n_rows=300, n_features=2, n_components=2)
    start = starting_params(X, 2, "diag", seed=1)
    model = distmix.GaussianMixture(2, covariance_type="diag", **start).fit(X)
    model.save(tmp_path / "m.npz")
    loaded = distmix.load(tmp_path / "m.npz")
    for name, value in start.items():
        np.testing.assert_array_equal(getattr(loaded, name), value)


def _rewrite(path: Path, edit) -> None:
    meta, arrays = read_archive(path, "distmix-model")
    edit(meta, arrays)
    write_archive(path, meta, arrays)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda m, a: a.update(means=a["means"][:, :-1]),
            r"covariances has shape|n_features_in 3 does not match the means' 2 features",
        ),
        (lambda m, a: a.update(weights=a["weights"][:-1]), r"weights has shape"),
        (lambda m, a: a.update(weights=a["weights"] * 2), r"weights must sum to 1"),
        (lambda m, a: a["means"].__setitem__((0, 0), np.nan), r"means contains NaN"),
        (lambda m, a: m.update(version=2), r"format version 2; this distmix reads version 1"),
        (lambda m, a: m.update(format="something-else"), r"format 'something-else'"),
        (lambda m, a: a.pop("covariances"), r"array 'covariances' is missing"),
        (lambda m, a: m.update(n_features_in=7), r"n_features_in 7 does not match"),
        (lambda m, a: a.update(lower_bounds=a["lower_bounds"][:-1]), r"lower_bounds does not"),
    ],
)
def test_tampered_model_file_is_refused(fitted, tmp_path, edit, match):
    model, _ = fitted
    path = tmp_path / "model.npz"
    model.save(path)
    _rewrite(path, edit)
    with pytest.raises(ModelFileError, match=match) as info:
        distmix.load(path)
    assert str(path) in str(info.value)


def test_non_positive_definite_covariance_is_refused(tmp_path):
    X = mixture_data(5, n_rows=300, n_features=3, n_components=2)
    model = distmix.GaussianMixture(2, random_state=0).fit(X)
    path = tmp_path / "model.npz"
    model.save(path)

    def break_covariance(meta, arrays):
        cov = arrays["covariances"].copy()
        cov[1] = -np.eye(3)
        arrays["covariances"] = cov

    _rewrite(path, break_covariance)
    with pytest.raises(
        ModelFileError, match=r"covariances_\[0\] is not positive-definite|not positive-definite"
    ):
        distmix.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_unreadable_model_file_is_refused(fitted, tmp_path, damage):
    model, _ = fitted
    path = tmp_path / "model.npz"
    model.save(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip archive at all")
    else:
        path.unlink()
    with pytest.raises(ModelFileError, match=str(path).replace("\\", "\\\\")):
        distmix.load(path)


def test_save_leaves_no_temporary_file_and_replaces_atomically(fitted, tmp_path):
    model, _ = fitted
    path = tmp_path / "model.npz"
    model.save(path)
    first = path.read_bytes()
    model.save(path, overwrite=True)
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_existing_files_are_refused_before_any_work(fitted, tmp_path):
    """``save`` refuses an existing file unless ``overwrite=True``, and never replaces a
    file that is not a distmix model; ``checkpoint=`` never replaces a model file (nor a
    stream checkpoint) — refused before the first pass, the file left as it was."""
    model, X = fitted
    path = tmp_path / "model.npz"
    model.save(path)
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match=f"model file {path} already exists"):
        model.save(path)
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    with pytest.raises(FileExistsError, match="not a file distmix wrote"):
        model.save(other, overwrite=True)
    assert other.read_text() == "mine"
    fresh = distmix.GaussianMixture(3, random_state=0, checkpoint=path)
    with pytest.raises(FileExistsError, match="is a distmix model file, not a distmix checkpoint"):
        fresh.fit(X)
    with pytest.raises(FileExistsError, match="not a distmix stream checkpoint"):
        fresh.fit_stream(X)
    assert path.read_bytes() == first
    assert not hasattr(fresh, "means_")
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        model.save(path)
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(
        NotADirectoryError,
        match=rf"checkpoint {blocked}/ck.npz: cannot write in {blocked} \(not a directory\)",
    ):
        distmix.GaussianMixture(3, checkpoint=blocked / "ck.npz").fit(X)
    # a directory that does not exist yet is created, as for predict and generate outputs
    nested = tmp_path / "new" / "dir" / "model.npz"
    model.save(nested)
    np.testing.assert_array_equal(distmix.load(nested).means_, model.means_)


# -- checkpoints ------------------------------------------------------------------------
def _fit_kwargs(**extra):
    return dict(n_components=3, random_state=0, tol=1e-10, max_iter=25, n_init=2, **extra)


def test_resume_from_each_iteration_equals_uninterrupted(tmp_path, monkeypatch):
    """Stop a fit after every possible iteration (by copying its checkpoint as it is
    written), resume each copy, and get the uninterrupted result exactly."""
    X = mixture_data(8, n_rows=800, n_features=2, n_components=3, separation=2.0)
    path = tmp_path / "ck.npz"
    copies: list[Path] = []
    model = distmix.GaussianMixture(**_fit_kwargs(checkpoint=path))
    original = distmix.em.save_checkpoint

    def spy(target, checkpoint):
        original(target, checkpoint)
        if checkpoint.current is not None:  # written after an iteration, within a run
            copy = tmp_path / f"copy-{len(copies)}.npz"
            copy.write_bytes(path.read_bytes())
            copies.append(copy)

    monkeypatch.setattr(distmix.em, "save_checkpoint", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X)
    assert len(copies) >= 10
    for copy in copies[:: max(1, len(copies) // 6)]:
        state = load_checkpoint(copy)
        assert state.current is not None and not state.finished
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            resumed = distmix.GaussianMixture(**_fit_kwargs(checkpoint=copy, resume=True)).fit(X)
        for name in FITTED:
            np.testing.assert_array_equal(getattr(resumed, name), getattr(model, name))
        assert resumed.lower_bounds_ == model.lower_bounds_
        assert resumed.n_iter_ == model.n_iter_


def test_resume_refuses_a_checkpoint_of_another_fit(tmp_path):
    X = mixture_data(9, n_rows=300, n_features=2, n_components=2)
    path = tmp_path / "ck.npz"
    distmix.GaussianMixture(2, random_state=0, checkpoint=path).fit(X)
    other = distmix.GaussianMixture(3, random_state=0, checkpoint=path, resume=True)
    with pytest.raises(
        ValueError, match=r"different fit \(n_components 2 in the checkpoint, 3 now"
    ):
        other.fit(X)
    with pytest.raises(ValueError, match=r"n_rows 300 in the checkpoint, 299 now"):
        distmix.GaussianMixture(2, random_state=0, checkpoint=path, resume=True).fit(X[:-1])
    assert not hasattr(other, "means_")


def test_finished_checkpoint_resumes_with_one_read_that_checks_the_data(tmp_path):
    """A finished fit resumed runs no E-step: one read fingerprints the rows, and other
    rows of the same shape are refused (the checkpoint is not theirs)."""
    X = mixture_data(10, n_rows=300, n_features=2, n_components=2)
    path = tmp_path / "ck.npz"
    first = distmix.GaussianMixture(2, random_state=0, checkpoint=path).fit(X)
    computes = []
    with dask.callbacks.Callback(start=lambda dsk: computes.append(len(dsk))):
        again = distmix.GaussianMixture(
            2, random_state=0, checkpoint=path, resume=True, persist=False
        )
        again.fit(da.from_array(X, chunks=100))
    np.testing.assert_array_equal(again.means_, first.means_)
    assert len(computes) == 1  # the fingerprint's read, no EM pass
    other = X.copy()
    other[123, 1] += 1e-9
    with pytest.raises(DataChangedError, match="written for other data"):
        distmix.GaussianMixture(2, random_state=0, checkpoint=path, resume=True).fit(other)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distmix", *args]


@pytest.mark.slow
def test_killed_cli_fit_resumes_to_the_uninterrupted_model(tmp_path):
    """``distmix fit --checkpoint`` killed with SIGKILL mid-fit, then ``--resume``: the
    model equals an uninterrupted fit, and the checkpoint was readable at every moment."""
    X = mixture_data(11, n_rows=60_000, n_features=4, n_components=4, separation=1.5)
    data = tmp_path / "x.npy"
    np.save(data, X)
    common = ["-k", "4", "--cluster", "threads", "--tol", "0", "--max-iter", "60", "--quiet"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        _cli("fit", str(data), *common, "--out", str(tmp_path / "ref.npz")), check=True, env=env
    )

    checkpoint = tmp_path / "ck.npz"
    proc = subprocess.Popen(
        _cli(
            "fit",
            str(data),
            *common,
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "m.npz"),
        ),
        env=env,
    )
    seen = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if checkpoint.exists():
                state = load_checkpoint(checkpoint)  # never half-written: always loads
                seen = state.current.n_iter if state.current else seen
                if seen >= 5:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the fit ended before it could be killed"
    assert not (tmp_path / "m.npz").exists()
    state = load_checkpoint(checkpoint)
    assert 5 <= state.current.n_iter < 60

    subprocess.run(
        _cli(
            "fit",
            str(data),
            *common,
            "--checkpoint",
            str(checkpoint),
            "--resume",
            "--out",
            str(tmp_path / "m.npz"),
        ),
        check=True,
        env=env,
    )
    reference, resumed = distmix.load(tmp_path / "ref.npz"), distmix.load(tmp_path / "m.npz")
    for name in FITTED:
        np.testing.assert_allclose(
            getattr(resumed, name), getattr(reference, name), rtol=1e-12, atol=0
        )
    assert resumed.lower_bounds_ == pytest.approx(reference.lower_bounds_, rel=1e-12)
