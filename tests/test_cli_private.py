"""``distmix fit --epsilon --delta --clip-radius --centre`` (issue 13): a private fit from
the command line, its model file and ``info``; flags refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import mixture_data, run_cli

import distmix
from distmix.cli import main

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
        ((*PRIVATE, "--max-iter", "0"), "--max-iter 0: a private fit runs at least one"),
        ((*PRIVATE[:-1], "1,2"), "--centre has 2 values but DATA has 3 features"),
        ((*PRIVATE[:-1], "a,b"), "--centre 'a,b': give one number"),
        (("--epsilon", "-1", *PRIVATE[2:]), "--epsilon must be finite and > 0"),
        ((*PRIVATE[:4], "--clip-radius", "0", *PRIVATE[6:]), "--clip-radius must be finite"),
    ],
)
def test_bad_privacy_flags_fail_in_one_line_and_write_nothing(
    data, tmp_path, capsys, flags, message
):
    out = tmp_path / "m.npz"
    code = main(["fit", str(data), *FIT, *flags, "-o", str(out)])  # in process: quick
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_a_private_manifest_from_the_command_line_drives_a_private_federation(tmp_path):
    from distmix.federated import Federation, Manifest, Site

    path = tmp_path / "manifest.json"
    result = run_cli(
        "manifest", path, "--sites", "a,b,c", "--features", "3", "--max-rows-per-site", "8192",
        "--centre", "50", "--epsilon", "3", "--delta", "1e-6", "--clip-radius", "40",
        "--dp-iterations", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = Manifest.from_json(path.read_text())
    assert manifest.digest.hex() in result.stdout and "in shares over any 3 sites" in result.stdout
    assert manifest.dp_epsilon == 3.0 and manifest.dp_iterations == 4
    assert manifest.dp_noise == "distributed" and manifest.centre == 50.0
    X = mixture_data(62, n_rows=9_000, n_features=3, n_components=2, shift=50.0)
    sites = [Site(part, name) for part, name in zip(np.split(X, 3), "abc", strict=True)]
    model = distmix.GaussianMixture(2, max_iter=4).fit(Federation(sites, manifest))
    assert model.privacy_["epsilon"] == pytest.approx(3.0, rel=1e-6)
    again = run_cli("manifest", path, "--sites", "a,b,c", "--features", "3",
                    "--max-rows-per-site", "8")  # fmt: skip
    assert again.returncode == 2 and "exists: give --overwrite" in again.stderr
    assert Manifest.from_json(path.read_text()) == manifest


@pytest.mark.parametrize(
    ("private", "flags", "message"),
    [
        (False, ("--epsilon", "3"), "has no privacy budget"),
        (True, ("--epsilon", "2"), "--epsilon 2 differs from the manifest's (3)"),
        (True, ("--centre", "49"), "--centre differs from the manifest's centre"),
        (True, ("--centre", "1,2"), "--centre has 2 values but the manifest has 3 features"),
        (True, ("--max-iter", "5"), "--max-iter 5: a fit under this private manifest runs 1 to 4"),
    ],
)
def test_federate_privacy_flags_must_be_the_manifests(tmp_path, capsys, private, flags, message):
    budget = ("--centre", "50", "--epsilon", "3", "--delta", "1e-6", "--clip-radius", "40",
              "--dp-iterations", "4") if private else ()  # fmt: skip
    path = str(tmp_path / "manifest.json")
    made = main(["manifest", path, "--sites", "a,b,c", "--features", "3",
                 "--max-rows-per-site", "8", *budget])  # fmt: skip
    assert made == 0, capsys.readouterr().err
    code = main([
        "federate", "--manifest", path, "--superlink", "127.0.0.1:9", "--root-certificates",
        str(tmp_path / "none.pem"), "--components", "2", "--out", str(tmp_path / "m.npz"), *flags,
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "m.npz").exists()
