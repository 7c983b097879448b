"""A URL whose fsspec backend is not installed: the error names the package and distmix's extra."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import distmix
from distmix.cli import main
from distmix.sources.zarr_write import create_zarr_array

FSSPEC_CLASSES = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is a read-only view

PACKAGES = {"s3": "s3fs", "gs": "gcsfs"}
INSTALL = {"s3": r"pip install 'distmix\[s3\]' \(or pip install s3fs\)", "gs": "pip install gcsfs"}


@pytest.fixture(params=["s3", "gs"])
def protocol(request, monkeypatch):
    """A protocol whose package cannot be imported here, installed or not."""
    monkeypatch.setitem(sys.modules, PACKAGES[request.param], None)
    for name in ("s3", "s3a", "gs", "gcs"):  # forget backend classes fsspec imported before
        monkeypatch.delitem(FSSPEC_CLASSES, name, raising=False)
    return request.param


def _message(protocol: str, url: str) -> str:
    return (
        rf"^{url}: {protocol}:// URLs need the {PACKAGES[protocol]} package, which is not "
        rf"installed; {INSTALL[protocol]}\.$"
    )


def test_fit_names_the_package_to_install(protocol):
    url = f"{protocol}://bucket/data.zarr"
    with pytest.raises(ImportError, match=_message(protocol, url)):
        distmix.GaussianMixture(2).fit(url)
    with pytest.raises(ImportError, match=_message(protocol, url)):
        distmix.fit_stream(url + "#train/X", n_components=2)


def test_predict_and_create_name_the_package_to_install(protocol):
    model = distmix.GaussianMixture(2, random_state=0).fit(
        np.random.default_rng(0).normal(size=(40, 2))
    )
    url = f"{protocol}://bucket/data.zarr"
    with pytest.raises(ImportError, match=_message(protocol, url)):
        model.predict(url)
    with pytest.raises(ImportError, match=_message(protocol, url)):
        create_zarr_array(url, (10, 2), 5)


def test_cli_says_it_in_one_line(protocol, capsys):
    url = f"{protocol}://bucket/data.zarr"
    assert main(["fit", url, "-k", "2", "--cluster", "threads"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{PACKAGES[protocol]} package, which is not installed" in err


def test_other_import_errors_pass_through(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ImportError("something else is missing")

    monkeypatch.setattr("zarr.open", broken)
    # file:// is fsspec's own: its package is installed, so the error is not about it
    with pytest.raises(ImportError, match="^something else is missing$"):
        distmix.GaussianMixture(2).fit(f"file://{tmp_path}/data.zarr")


def test_the_s3_extra_installs_s3fs():
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (requirement,) = pyproject["project"]["optional-dependencies"]["s3"]
    assert requirement.startswith("s3fs>=")
