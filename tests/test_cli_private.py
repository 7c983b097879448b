"""``distmix fit --epsilon --delta --clip-radius --centre`` (issue 13): a private fit from
the command line, its model file and ``info``; flags refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import mixture_data, run_cli

import distmix

pytest.importorskip("opendp")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("private") / "x.npy"
    np.save(path, mixture_data(61, n_rows=20_000, n_features=3, n_components=2, shift=50.0))
    return path


PRIVATE = ("--epsilon", "4", "--delta", "1e-6", "--clip-radius", "40", "--centre", "50")
FIT = ("-k", "2", "--cluster", "threads", "--quiet")


def test_a_private_fit_writes_a_private_model(data, tmp_path):
    out = tmp_path / "m.npz"
    result = run_cli("fit", data, *FIT, *PRIVATE, "--max-iter", "4", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "private fit: 4 noisy iterations for epsilon=4" in result.stdout
    assert "no log-likelihood or row count is released" in result.stdout
    assert "mean log-likelihood" not in result.stdout
    model = distmix.load(out)
    assert model.privacy_["epsilon"] == pytest.approx(4.0, rel=1e-6)
    assert model.privacy_["iterations"] == 4 and model.privacy_["clip_centre"] == [50.0] * 3
    assert model.privacy.clip_radius == 40.0
    info = run_cli("info", out)
    assert info.returncode == 0 and "private fit: 4 noisy iterations" in info.stdout


def test_the_centre_may_be_one_value_per_feature_or_a_file(data, tmp_path):
    np.save(tmp_path / "c.npy", np.array([50.0, 49.0, 51.0]))
    for centre in ("50,49,51", tmp_path / "c.npy"):
        out = tmp_path / "m.npz"
        flags = [*PRIVATE[:-1], centre, "--max-iter", "2", "-o", out, "--overwrite"]
        result = run_cli("fit", data, *FIT, *flags)
        assert result.returncode == 0, result.stderr
        assert distmix.load(out).privacy_["clip_centre"] == [50.0, 49.0, 51.0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--epsilon", "1"), "--delta, --clip-radius, --centre missing"),
        ((*PRIVATE, "--stream"), "--epsilon does not apply with --stream"),
        ((*PRIVATE, "--n-init", "2"), "--n-init 2: a private fit runs one start"),
        ((*PRIVATE[:-1], "1,2"), "--centre has 2 values but DATA has 3 features"),
        ((*PRIVATE[:-1], "a,b"), "--centre 'a,b': give one number"),
        (("--epsilon", "-1", *PRIVATE[2:]), "--epsilon must be finite and > 0"),
        ((*PRIVATE[:4], "--clip-radius", "0", *PRIVATE[6:]), "--clip-radius must be finite"),
    ],
)
def test_bad_privacy_flags_fail_in_one_line_and_write_nothing(data, tmp_path, flags, message):
    out = tmp_path / "m.npz"
    result = run_cli("fit", data, *FIT, *flags, "-o", out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()
