"""The ``distmix`` command end to end: generate, fit on a real scheduler, predict, score,
info — and bad datasets that stop a fit with a clear error and no model file."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import dask_processes

import distmix
from distmix.sources.dataset import open_dataset

pytestmark = pytest.mark.slow


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "distmix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"distmix {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mix.zarr"
    run_cli(
        "generate",
        path,
        "--rows",
        30_000,
        "--features",
        4,
        "--components",
        3,
        "--seed",
        1,
        "--chunk-rows",
        4_000,
    )
    return path


def test_fit_through_a_real_scheduler_equals_the_in_memory_fit(dataset, tmp_path):
    """``distmix fit --cluster tcp://…`` against a `dask scheduler` and two `dask worker`
    processes gives the in-memory fit of the same rows to 1e-10."""
    model_path = tmp_path / "model.npz"
    with dask_processes(tmp_path, n_workers=2) as cluster:
        result = run_cli(
            "fit",
            dataset,
            "-k",
            3,
            "--cluster",
            cluster["address"],
            "--tol",
            "1e-6",
            "--out",
            model_path,
            "--progress",
        )
    assert "Iteration 1" in result.stdout and "rows/s" in result.stdout
    assert "blocks (100%)" in result.stdout  # the fit's progress line, with the blocks of a pass
    assert cluster["address"] in result.stdout
    fitted = distmix.load(model_path)

    rows = np.asarray(zarr.open_array(str(dataset), mode="r")[:])
    blocks = tuple(int(c) for c in open_dataset(dataset).chunks[0])
    reference = distmix.GaussianMixture(3, random_state=0, tol=1e-6, block_size=blocks).fit(rows)
    assert fitted.n_iter_ == reference.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(fitted, name), getattr(reference, name), rtol=1e-10)

    truth = zarr.open_array(str(dataset), mode="r").attrs["distmix_true_means"]
    order = np.argsort(np.asarray(truth)[:, 0])
    np.testing.assert_allclose(np.sort(fitted.means_[:, 0]), np.asarray(truth)[order, 0], atol=0.1)


def test_predict_score_and_info(dataset, tmp_path):
    model_path = tmp_path / "model.npz"
    run_cli("fit", dataset, "-k", 3, "--cluster", "threads", "--quiet", "--out", model_path)
    model = distmix.load(model_path)
    rows = np.asarray(zarr.open_array(str(dataset), mode="r")[:])

    run_cli(
        "predict", model_path, dataset, "--cluster", "threads", "--out", tmp_path / "labels.npy"
    )
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), model.predict(rows))
    run_cli(
        "predict",
        model_path,
        dataset,
        "--proba",
        "--cluster",
        "threads",
        "--out",
        tmp_path / "proba.zarr",
    )
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "proba.zarr"))[:], model.predict_proba(rows), rtol=1e-12
    )

    score = run_cli("score", model_path, dataset, "--cluster", "threads").stdout
    assert f"mean log-likelihood {model.score(rows):.6f}" in score
    assert f"BIC {model.bic(rows):.6f}" in score

    info = run_cli("info", model_path).stdout
    assert "3 components × 4 features" in info and "covariance_type='full'" in info


def _corrupt_chunk(path: Path) -> Path:
    chunk = sorted(p for p in (path / "c").rglob("*") if p.is_file())[2]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return chunk


def _delete_chunk(path: Path) -> Path:
    chunk = sorted(p for p in (path / "c").rglob("*") if p.is_file())[1]
    chunk.unlink()
    return chunk


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_corrupt_chunk, r"reading rows 8000–11999 of .*mix\.zarr failed: chunk c/2/0"),
        (_delete_chunk, r"missing from the store: c/1/0 \(rows 4000–7999\)"),
    ],
)
def test_damaged_dataset_stops_the_fit_and_writes_no_model(dataset, tmp_path, damage, message):
    copy = tmp_path / "mix.zarr"
    subprocess.run(["cp", "-r", str(dataset), str(copy)], check=True)
    damage(copy)
    model_path = tmp_path / "model.npz"
    result = run_cli(
        "fit",
        copy,
        "-k",
        3,
        "--cluster",
        "threads",
        "--out",
        model_path,
        "--checkpoint",
        tmp_path / "ck.npz",
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("distmix fit: error:")
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert not model_path.exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, r"no such|does not exist|not found"),
        (lambda p: zarr.create_array(str(p), shape=(50,), chunks=(10,), dtype="f8"), r"1-D"),
        (
            lambda p: zarr.create_array(str(p), shape=(50, 2), chunks=(10, 2), dtype="<U4"),
            r"not numeric",
        ),
    ],
    ids=["missing store", "1-D", "strings"],
)
@pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")
def test_bad_dataset_is_named_and_no_model_written(tmp_path, make, message):
    path = tmp_path / "bad.zarr"
    make(path)
    model_path = tmp_path / "model.npz"
    result = run_cli("fit", path, "-k", 2, "--cluster", "threads", "--out", model_path, check=False)
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert re.search(message, result.stderr, flags=2), result.stderr
    assert not model_path.exists()


def test_help_is_there_for_every_command():
    for command in ("fit", "predict", "score", "info", "generate", "demo"):
        text = run_cli(command, "--help").stdout
        assert "usage: distmix " + command in text
