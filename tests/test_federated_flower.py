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

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import distmix
from distmix import GaussianMixture
from distmix.federated import Federation, Manifest, Site
from distmix.federated.deploy import flower_command, flower_environment, free_port, write_connection

pytestmark = pytest.mark.slow

SITES = ("north", "south", "east")
SIZES = (300, 500, 200)
MEANS = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 6.0]]) + 10.0


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_keys(out: Path, nodes: tuple[str, ...]) -> None:
    """A CA, the SuperLink's certificate for 127.0.0.1, and an EC P-384 key per node
    (OpenSSH format, as Flower's node authentication reads them)."""
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distmix test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (out / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (out / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (out / "server.key").write_bytes(_pem(server_key))
    for name in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        (out / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        (out / f"{name}.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            + b"\n"
        )
    for path in out.glob("*.key"):
        path.chmod(0o600)


def site_rows(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(3, size=n)
    return MEANS[labels] + rng.normal(size=(n, 2)) * 0.8


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (everything started here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:  # a zombie is already gone
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def wait_healthy(port: int, ca: Path, timeout: float = 60.0) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("the SuperLink did not become healthy")


def stop_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def test_a_federated_fit_over_flower(tmp_path):
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dmx-", dir="/tmp"))  # short Unix socket paths
    keys = tmp_path / "keys"
    keys.mkdir()
    make_keys(keys, (*SITES, "rogue"))
    marker = f"DISTMIX_TEST_MARKER={uuid.uuid4().hex}"

    def env(home: Path) -> dict[str, str]:
        e = flower_environment(home)
        e[marker.split("=")[0]] = marker.split("=")[1]
        e["PYTHONPATH"] = str(Path(distmix.__file__).parent.parent)
        return e

    def start(args: list[str], name: str, home: Path) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(
            args, env=env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    rows = [site_rows(i, n) for i, n in enumerate(SIZES)]
    manifest = Manifest(sites=SITES, n_features=2, max_rows_per_site=1024, radius=64.0)
    (work / "manifest.json").write_text(manifest.to_json())
    for name, r in zip(SITES, rows, strict=True):
        np.save(work / f"{name}.npy", r)
    np.save(work / "means.npy", MEANS + 0.5)

    port = free_port()
    address = f"127.0.0.1:{port}"
    ca = keys / "ca.crt"
    processes: list[subprocess.Popen] = []
    try:
        link = start(
            [
                flower_command("flower-superlink"),
                "--ssl-ca-certfile",
                str(ca),
                "--ssl-certfile",
                str(keys / "server.pem"),
                "--ssl-keyfile",
                str(keys / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            "superlink",
            tmp_path / "home-link",
        )
        processes.append(link)
        wait_healthy(port, ca)
        cli_home = tmp_path / "home-cli"
        write_connection(cli_home, address, str(ca))
        registering = [
            subprocess.Popen(
                [
                    flower_command("flwr"),
                    "supernode",
                    "register",
                    str(keys / f"{s}.pub"),
                    "distmix",
                    "--format",
                    "json",
                ],
                env=env(cli_home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for s in SITES
        ]
        for p in registering:
            out, _ = p.communicate(timeout=60)
            assert p.returncode == 0 and b'"success": true' in out, out.decode()

        for name in SITES:
            processes.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "distmix",
                        "site",
                        str(work / f"{name}.npy"),
                        "--name",
                        name,
                        "--manifest",
                        str(work / "manifest.json"),
                        "--socket",
                        str(work / f"{name}.sock"),
                        "--superlink",
                        address,
                        "--root-certificates",
                        str(ca),
                        "--auth-key",
                        str(keys / f"{name}.key"),
                    ],
                    f"site-{name}",
                    tmp_path / f"home-{name}",
                )
            )

        # a SuperNode whose key was never registered is refused
        rogue = start(
            [
                flower_command("flower-supernode"),
                "--superlink",
                address,
                "--root-certificates",
                str(ca),
                "--auth-supernode-private-key",
                str(keys / "rogue.key"),
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
                "--max-retries",
                "1",
            ],
            "rogue",
            tmp_path / "home-rogue",
        )
        processes.append(rogue)
        assert rogue.wait(timeout=60) != 0
        assert "Failed to activate SuperNode" in (tmp_path / "rogue.log").read_text()

        federate = subprocess.run(
            [
                sys.executable,
                "-m",
                "distmix",
                "federate",
                "--manifest",
                str(work / "manifest.json"),
                "--superlink",
                address,
                "--root-certificates",
                str(ca),
                "--components",
                "3",
                "--means-init",
                str(work / "means.npy"),
                "--max-iter",
                "2",
                "--tol",
                "0",
                "--round-timeout",
                "60",
                "--out",
                str(work / "model.npz"),
            ],
            env=env(tmp_path / "home-federate"),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert federate.returncode == 0, federate.stdout[-3000:] + federate.stderr[-3000:]
        fitted = distmix.load(work / "model.npz")
    finally:
        for process in reversed(processes):
            stop_group(process)
        deadline = time.monotonic() + 20
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_with(marker)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not left, f"processes left running: {left}"
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
    print(json.dumps({"seconds": round(time.monotonic() - started, 1)}))
