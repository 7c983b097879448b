"""Model files from elsewhere: nothing is unpickled, and what is not a distmix model is refused.

A refusal names the file and never suggests loading it with ``allow_pickle=True``
(NumPy's own message for a pickled array, or for bytes it takes for a pickle, does).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import mixture_data

import distmix
from distmix.persist import ModelFileError, load_checkpoint, read_archive, write_archive


class Unpicklable:
    """Unpickling this would run code: the refusal must come before."""

    def __reduce__(self):
        return (os.system, ("echo unpickled > unpickled.txt",))


def _write_pickled_npy(path: Path) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would add ".npy" to a path
        np.save(handle, np.array([Unpicklable(), 1], dtype=object), allow_pickle=True)


def _write_pickled_npz(path: Path) -> None:
    # a distmix-looking header beside an object array
    np.savez(
        path,
        meta=np.asarray('{"format": "distmix-model", "version": 1}'),
        weights=np.array([Unpicklable()], dtype=object),
    )


def _write_random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _write_other_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "a zip archive, but no .npz")


def _write_float_npy(path: Path) -> None:
    with open(path, "wb") as handle:
        np.save(handle, np.ones((4, 3)))


NOT_MODELS = {
    "pickled object .npy": (_write_pickled_npy, r"a single NumPy \.npy array, not a distmix file"),
    "pickled object .npz": (_write_pickled_npz, r"'weights' holds Python objects"),
    "random bytes": (_write_random_bytes, r"not an \.npz archive, not a distmix file"),
    "zip that is no npz": (_write_other_zip, r"'readme\.txt', which is not a NumPy array"),
    "float .npy": (_write_float_npy, r"a single NumPy \.npy array, not a distmix file"),
    "empty file": (lambda path: path.write_bytes(b""), r"an empty file, not a distmix file"),
}


@pytest.mark.parametrize("kind", list(NOT_MODELS))
@pytest.mark.parametrize("reader", ["load", "load_checkpoint"])
def test_a_file_that_is_not_a_distmix_model_is_refused_without_unpickling(
    tmp_path, monkeypatch, kind, reader
):
    monkeypatch.chdir(tmp_path)
    write, match = NOT_MODELS[kind]
    path = tmp_path / "model.npz"
    write(path)
    read = distmix.load if reader == "load" else load_checkpoint
    with pytest.raises(ModelFileError, match=match) as info:
        read(path)
    message = str(info.value)
    assert str(path) in message
    assert "allow_pickle" not in message and "pickle.load" not in message
    assert "unsafely" not in message
    # nothing in the chain of causes suggests it either
    cause = info.value.__cause__
    while cause is not None:
        assert "allow_pickle" not in str(cause), cause
        cause = cause.__cause__
    assert not (tmp_path / "unpickled.txt").exists()


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    X = mixture_data(3, n_rows=300, n_features=3, n_components=2)
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for covariance_type in ("full", "tied"):
        paths[covariance_type] = folder / f"{covariance_type}.npz"
        distmix.GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X).save(
            paths[covariance_type]
        )
    return paths


@pytest.mark.parametrize(
    ("covariance_type", "component", "which"),
    [("full", 0, "component 0"), ("full", 1, "component 1"), ("tied", None, "the tied")],
)
def test_asymmetric_covariance_in_a_model_file_is_refused(
    saved_models, tmp_path, covariance_type, component, which
):
    path = tmp_path / "model.npz"
    path.write_bytes(saved_models[covariance_type].read_bytes())
    assert distmix.load(path).covariance_type == covariance_type  # valid as saved
    meta, arrays = read_archive(path, "distmix-model")
    covariances = arrays["covariances"].copy()
    matrix = covariances if component is None else covariances[component]
    # change the upper triangle only: the Cholesky factor (from the lower one) still matches
    matrix[0, 2] += 1e-6 * np.abs(matrix).max()
    write_archive(path, meta, {**arrays, "covariances": covariances})
    with pytest.raises(ModelFileError, match=rf"covariances is not symmetric for {which}") as info:
        distmix.load(path)
    assert str(path) in str(info.value)
    assert r"entry [0, 2]" in str(info.value)


def test_rounding_level_asymmetry_is_accepted(saved_models, tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(saved_models["full"].read_bytes())
    meta, arrays = read_archive(path, "distmix-model")
    covariances = arrays["covariances"].copy()
    covariances[0, 0, 2] *= 1 + 1e-14
    write_archive(path, meta, {**arrays, "covariances": covariances})
    np.testing.assert_array_equal(distmix.load(path).covariances_, covariances)
