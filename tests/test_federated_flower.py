"""End to end over Flower: one SuperLink, three SuperNodes, real processes on 127.0.0.1.

TLS (a CA made here, the SuperLink's certificate for 127.0.0.1) and SuperNode
authentication (EC keys registered with the SuperLink before the nodes start);
Flower's telemetry, update checks and runtime dependency installation off.
Each site runs ``distmix site`` (its rows behind a Unix socket, and a
SuperNode); the coordinator runs ``distmix federate`` in threshold mode for a
few EM iterations. The model equals the fit of the same sites in process
(which equals the pooled fit: tests/test_federated_fit.py) to 1e-12; a
SuperNode with an unregistered key is refused; every process started here,
and every process those started, is gone afterwards.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import distmix
from distmix import GaussianMixture
from distmix.federated import Federation, Manifest, Site
from distmix.federated.deploy import LocalFlowerFederation, flower_command, free_port

pytestmark = pytest.mark.slow

SITES = ("north", "south", "east")
SIZES = (300, 500, 200)
MEANS = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0]]) + 10.0


def site_rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(3, size=n)
    return MEANS[labels] + rng.normal(size=(n, 2)) * 0.8


def site_files() -> tuple[Path, list[np.ndarray], dict[str, str]]:
    """A short work directory (Unix socket paths) with each site's rows and the start."""
    work = Path(tempfile.mkdtemp(prefix="dmx-", dir="/tmp"))
    rows = [site_rows(i, n) for i, n in enumerate(SIZES)]
    for name, r in zip(SITES, rows, strict=True):
        np.save(work / f"{name}.npy", r)
    np.save(work / "means.npy", MEANS + 0.5)
    return work, rows, {name: str(work / f"{name}.npy") for name in SITES}


def test_a_federated_fit_over_flower():
    started = time.monotonic()
    work, rows, data = site_files()
    manifest = Manifest(sites=SITES, n_features=2, max_rows_per_site=1024, radius=64.0)

    deployment = LocalFlowerFederation(work, manifest, data)
    with deployment:
        # a SuperNode whose key was never registered is refused
        rogue = deployment.start(
            [
                flower_command("flower-supernode"),
                "--superlink", deployment.address,
                "--root-certificates", str(deployment.ca),
                "--auth-supernode-private-key", str(deployment.keys / "unregistered.key"),
                "--host", "127.0.0.1",
                "--port", str(free_port()),
                "--max-retries", "1",
            ],
            "rogue",
        )  # fmt: skip
        assert rogue.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (work / "rogue.log").read_text()

        federate = deployment.federate(
            str(work / "model.npz"),
            "--components", "3",
            "--means-init", str(work / "means.npy"),
            "--max-iter", "2",
            "--tol", "0",
            "--round-timeout", "60",
            timeout=240,
        )  # fmt: skip
        assert federate.returncode == 0, federate.stdout[-3000:] + federate.stderr[-3000:]
        fitted = distmix.load(work / "model.npz")
        assert deployment.leftovers()  # (a check of the check: they run until closed)
    assert not deployment.leftovers(), f"processes left running: {deployment.leftovers()}"
    assert not list(work.glob("*.sock")), "a site left its socket behind"

    in_process = Federation([Site(r, n) for r, n in zip(rows, SITES, strict=True)], manifest)
    with pytest.warns(Warning, match="did not converge"):
        reference = GaussianMixture(
            3, means_init=MEANS + 0.5, max_iter=2, tol=0.0, random_state=0
        ).fit(in_process)
    assert fitted.n_iter_ == reference.n_iter_ == 2
    for name in ("weights_", "means_", "covariances_"):
        got, want = getattr(fitted, name), getattr(reference, name)
        assert np.max(np.abs(got - want)) <= 1e-12 * np.max(np.abs(want)), name
    print(f"\nFlower end to end: {time.monotonic() - started:.1f} s")


def test_a_private_federated_fit_over_flower():
    """A private manifest (distributed noise) over real processes: ``distmix federate``
    fits privately by itself (its first release and three noisy iterations through
    Flower), and its model reports the manifest's budget."""
    work, _, data = site_files()
    manifest = Manifest(
        sites=SITES,
        n_features=2,
        max_rows_per_site=1024,
        radius=64.0,
        centre=10.0,
        dp_epsilon=8.0,
        dp_delta=1e-6,
        dp_clip_radius=12.0,
        dp_iterations=3,
    )
    with LocalFlowerFederation(work, manifest, data) as deployment:
        federate = deployment.federate(
            str(work / "model.npz"),
            "--components", "3",
            "--means-init", str(work / "means.npy"),
            "--epsilon", "8",
            "--round-timeout", "60",
            timeout=240,
        )  # fmt: skip
        assert federate.returncode == 0, federate.stdout[-3000:] + federate.stderr[-3000:]
        assert "3 private iterations, epsilon=" in federate.stdout + federate.stderr
    fitted = distmix.load(work / "model.npz")
    assert fitted.privacy_["epsilon"] == pytest.approx(8.0, rel=1e-6)
    assert fitted.privacy_["iterations"] == 3 and np.all(np.isfinite(fitted.means_))
    assert not deployment.leftovers()
