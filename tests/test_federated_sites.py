"""``distmix site`` processes on this machine, reached over their Unix sockets (no Flower).

Three real site processes serve their ``.npy`` rows; the coordinator (this test)
fits a personalised federation through :class:`~distmix.federated.server.SocketTransport`.
The fit equals the same federation in process, each site writes its own mixing
weights at exit (``--weights-out``: they never crossed the socket), a stopped
site counts as dropped out, and the sites leave no socket behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from distmix import GaussianMixture
from distmix.federated import Federation, Manifest, Site, SiteError
from distmix.federated.server import SocketTransport
from distmix.params import Params

SITES = ("north", "south", "east", "west")
MEANS = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0]])
PROPORTIONS = ([0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7], [1 / 3, 1 / 3, 1 / 3])


def site_rows(seed: int, n: int, proportions: list[float]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return MEANS[rng.choice(3, size=n, p=proportions)] + rng.normal(size=(n, 2)) * 0.7


def wait_for(paths: list[Path], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"site sockets did not appear: {paths}")
        time.sleep(0.1)


@pytest.fixture
def site_processes():
    work = Path(tempfile.mkdtemp(prefix="dmxs-", dir="/tmp"))
    rows = {
        n: site_rows(i, 200 + 100 * i, p)
        for i, (n, p) in enumerate(zip(SITES, PROPORTIONS, strict=True))
    }
    manifest = Manifest(sites=SITES, n_features=2, max_rows_per_site=1024, radius=64.0)
    (work / "manifest.json").write_text(manifest.to_json())
    processes = {}
    for name, r in rows.items():
        np.save(work / f"{name}.npy", r)
        processes[name] = subprocess.Popen(
            [
                sys.executable, "-m", "distmix", "site", str(work / f"{name}.npy"),
                "--name", name,
                "--manifest", str(work / "manifest.json"),
                "--socket", str(work / f"{name}.sock"),
                "--weights-out", str(work / f"{name}-weights.npy"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for([work / f"{name}.sock" for name in SITES])
        yield work, rows, manifest, processes
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def test_a_personalised_fit_over_site_processes(site_processes):
    work, rows, manifest, processes = site_processes
    transport = SocketTransport({name: work / f"{name}.sock" for name in SITES})
    model = GaussianMixture(3, means_init=MEANS + 0.3, tol=1e-8, random_state=0)
    fitted = model.fit(Federation(transport, manifest, personal_weights=True))

    in_process_sites = [Site(rows[name], name) for name in SITES]
    reference = GaussianMixture(3, means_init=MEANS + 0.3, tol=1e-8, random_state=0).fit(
        Federation(in_process_sites, manifest, personal_weights=True)
    )
    assert fitted.n_iter_ == reference.n_iter_
    np.testing.assert_allclose(fitted.means_, reference.means_, rtol=1e-12)
    np.testing.assert_allclose(fitted.covariances_, reference.covariances_, rtol=1e-12)

    # a site stopped now is missing from the next session; the others still answer
    processes["west"].send_signal(signal.SIGTERM)
    assert processes["west"].wait(timeout=30) == 0
    others = np.concatenate([rows[name] for name in SITES if name != "west"])
    score = fitted.score(Federation(transport, manifest))
    assert score == pytest.approx(fitted.score(others), rel=1e-12)

    for name, process in processes.items():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        assert not (work / f"{name}.sock").exists(), f"{name} left its socket"
    for site in in_process_sites:  # written at exit: they never crossed a socket
        written = np.load(work / f"{site.name}-weights.npy", allow_pickle=False)
        np.testing.assert_allclose(written, site.personal_weights, rtol=1e-12)


def test_a_sites_ledger_survives_its_restart(tmp_path):
    """A site restarted with its ledger file still refuses to release a request it
    released before over a different set of sites; an unreadable ledger stops it."""
    rows = {
        n: site_rows(i, 150, p) for i, (n, p) in enumerate(zip(SITES, PROPORTIONS, strict=True))
    }
    manifest = Manifest(sites=SITES, n_features=2, max_rows_per_site=1024, radius=64.0)
    params = Params.from_covariances(np.full(3, 1 / 3), MEANS, np.stack([np.eye(2)] * 3), "full")

    def sites() -> list[Site]:
        return [Site(rows[n], n, ledger=tmp_path / f"{n}.json") for n in SITES]

    Federation(sites(), manifest).engine().reduce("estep", params)
    restarted = [site for site in sites() if site.name != "west"]
    with pytest.raises(SiteError, match="'sites'"):
        Federation(restarted, manifest).engine().reduce("estep", params)
    (tmp_path / "north.json").write_text("{not json")
    with pytest.raises(ValueError, match="ledger"):
        Site(rows["north"], "north", ledger=tmp_path / "north.json")
