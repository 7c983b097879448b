"""``distmix site`` and ``distmix federate``: a federation deployed over Flower.

Layer: the site, its server and the manifest; Flower's commands run as
subprocesses (this module does not import ``flwr``).

A site runs ``distmix site``: its :class:`~distmix.federated.site.Site` behind
a Unix socket (:mod:`~distmix.federated.server`) and, when given a SuperLink, a
``flower-supernode`` that connects to it with TLS and the site's registered
key, telemetry, update checks and runtime dependency installation off. The
coordinator runs ``distmix federate``, which submits the bundled Flower app
(``distmix/federated/flower_app``: a forwarding ClientApp and the EM loop's
ServerApp) with ``flwr run`` and checks that the model was written.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from distmix.federated.manifest import Manifest
from distmix.federated.server import SiteServer
from distmix.federated.site import Site

logger = logging.getLogger("distmix.federated")


def flower_environment(home: str | os.PathLike[str]) -> dict[str, str]:
    """The environment Flower's processes run in: this interpreter's scripts first on
    ``PATH`` (Flower starts its helpers by name), ``FLWR_HOME`` at ``home``, and
    telemetry, update checks and runtime dependency installation off."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    return env


def flower_command(name: str) -> str:
    """The path of a Flower command installed beside this interpreter."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"{name} was not found: install Flower beside distmix "
            "(pip install 'distmix[federated]')."
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_connection(home: Path, superlink: str, root_certificates: str) -> None:
    """The Flower CLI's connection ``distmix`` (``$FLWR_HOME/config.toml``)."""
    home.mkdir(parents=True, exist_ok=True)
    ca = Path(root_certificates).resolve()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "distmix"\n\n[superlink.distmix]\n'
        f'address = "{superlink}"\nroot-certificates = "{ca}"\n'
    )


# --------------------------------------------------------------------------- #
# the site                                                                    #
# --------------------------------------------------------------------------- #
def run_site(
    data: Any,
    name: str,
    manifest_path: str,
    socket_path: str,
    *,
    superlink: str | None = None,
    root_certificates: str | None = None,
    auth_key: str | None = None,
    node_port: int | None = None,
    block_size: int | None = None,
    weights_out: str | None = None,
    ledger: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve a site until interrupted (SIGINT/SIGTERM) or until its SuperNode exits.

    ``ledger``: the JSON file that keeps the site's ledger across restarts.
    ``weights_out``: where the site writes its own mixing weights (``.npy``) when it
    stops, if a personalised fit gave it some (they never leave the site otherwise).
    Returns the SuperNode's exit status (0 when stopped by a signal).
    """
    manifest = Manifest.from_json(Path(manifest_path).read_text())
    if manifest.private and ledger is None:
        raise ValueError(
            "--ledger is required for a site of a private federation: the file keeps the "
            "releases the site has answered under its manifest, so that a restart cannot "
            "answer them again."
        )
    site = Site(data, name, block_size=block_size, manifest=manifest, ledger=ledger)
    server = SiteServer(site, socket_path)
    server.serve_in_thread()
    stop = stop or threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    node: subprocess.Popen | None = None
    print(f"distmix site {name!r}: serving on {socket_path}", flush=True)
    try:
        if superlink is not None:
            if root_certificates is None or auth_key is None:
                raise ValueError(
                    "--superlink needs --root-certificates (TLS) and --auth-key (the site's "
                    "registered SuperNode key)."
                )
            home = Path(tempfile.mkdtemp(prefix=f"distmix-site-{name}-"))
            node = subprocess.Popen(
                [
                    flower_command("flower-supernode"),
                    "--superlink",
                    superlink,
                    "--root-certificates",
                    str(Path(root_certificates).resolve()),
                    "--auth-supernode-private-key",
                    str(Path(auth_key).resolve()),
                    "--node-config",
                    f"distmix-socket='{Path(socket_path).resolve()}'",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(node_port or free_port()),
                    "--max-retries",
                    "3",
                ],
                env=flower_environment(home),
                start_new_session=True,
            )
            print(f"distmix site {name!r}: SuperNode started (pid {node.pid})", flush=True)
            while not stop.wait(0.5):
                if node.poll() is not None:
                    print(
                        f"distmix site {name!r}: SuperNode exited ({node.returncode})", flush=True
                    )
                    return int(node.returncode or 1)
        else:
            stop.wait()
        return 0
    finally:
        if node is not None and node.poll() is None:
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        server.shutdown()
        server.server_close()
        if weights_out is not None and site.personal_weights is not None:
            np.save(weights_out, site.personal_weights, allow_pickle=False)
            print(f"distmix site {name!r}: its mixing weights written to {weights_out}")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- #
# the coordinator                                                             #
# --------------------------------------------------------------------------- #
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if "'" in text or "\n" in text:
        raise ValueError(f"a run-config value cannot hold quotes or newlines: {text!r}")
    return f"'{text}'"


def run_federation(
    manifest_path: str,
    superlink: str,
    root_certificates: str,
    out: str,
    *,
    components: int,
    covariance_type: str = "full",
    init_params: str = "moments",
    means_init: str | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    random_state: int = 0,
    timeout: float = 120.0,
    run_timeout: float | None = None,
    overwrite: bool = False,
    personal_weights: bool = False,
) -> None:
    """Fit over the sites of a manifest: submit the bundled Flower app, wait, check the model."""
    Manifest.from_json(Path(manifest_path).read_text())  # readable and valid, before anything
    target = Path(out).resolve()
    if target.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: give --overwrite to replace it.")
    before = target.stat().st_mtime_ns if target.exists() else None
    with tempfile.TemporaryDirectory(prefix="distmix-federate-") as tmp:
        app = Path(tmp) / "app"
        template = resources.files("distmix.federated") / "flower_app"
        with resources.as_file(template) as source:
            shutil.copytree(source, app, ignore=shutil.ignore_patterns("__pycache__"))
        home = Path(tmp) / "home"
        write_connection(home, superlink, root_certificates)
        config = {
            "manifest": str(Path(manifest_path).resolve()),
            "out": str(target),
            "components": int(components),
            "covariance-type": covariance_type,
            "init-params": init_params,
            "means-init": str(Path(means_init).resolve()) if means_init else "",
            "max-iter": int(max_iter),
            "tol": float(tol),
            "reg-covar": float(reg_covar),
            "random-state": int(random_state),
            "timeout": float(timeout),
            "overwrite": bool(overwrite),
            "personal-weights": bool(personal_weights),
        }
        run_config = " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())
        command = [flower_command("flwr"), "run", str(app), "distmix", "--stream"]
        completed = subprocess.run(
            [*command, "--run-config", run_config],
            env=flower_environment(home),
            timeout=run_timeout,
            check=False,
        )
    written = target.exists() and target.stat().st_mtime_ns != before
    if completed.returncode != 0 or not written:
        raise RuntimeError(
            f"the federated fit wrote no model to {out} (flwr run exited "
            f"{completed.returncode}); its log is above."
        )


# --------------------------------------------------------------------------- #
# a whole federation on this machine (trials, tests, benchmarks)              #
# --------------------------------------------------------------------------- #
def self_signed_keys(out: Path, nodes: tuple[str, ...]) -> None:
    """A CA (``ca.crt``), the SuperLink's certificate for 127.0.0.1 (``server.pem``,
    ``server.key``) and an EC P-384 key pair per node (``NAME.key`` in OpenSSH format,
    ``NAME.pub``), as Flower's TLS and node authentication read them. For trials on
    one machine only: a real federation's CA is the coordinator's."""

    def pem(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "distmix local CA")])
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
    (out / "server.key").write_bytes(pem(server_key))
    for name in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        (out / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        (out / f"{name}.pub").write_bytes(public + b"\n")
    for path in out.glob("*.key"):
        path.chmod(0o600)


class LocalFlowerFederation:
    """A SuperLink (TLS, node authentication) and one ``distmix site`` per dataset, as
    processes on 127.0.0.1, for trying a deployment on one machine.

    Every process started (and every process they start) carries an environment
    marker; :meth:`close` stops them by process group, then kills any marked
    process left, and :meth:`leftovers` lists those still alive.

    Parameters
    ----------
    work : Path
        A directory for keys, logs, the manifest and the sites' sockets (keep its
        path short: a Unix socket path holds at most ~100 bytes).
    manifest : Manifest
    data : dict of site name → path of the site's rows (``.npy`` or Zarr)
    """

    def __init__(self, work: Path, manifest: Manifest, data: dict[str, str]) -> None:
        self.work, self.manifest = Path(work), manifest
        self.keys = self.work / "keys"
        self.marker = ("DISTMIX_LOCAL_FEDERATION", uuid.uuid4().hex)
        self.processes: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.manifest_path = self.work / "manifest.json"
        self.manifest_path.write_text(manifest.to_json())
        self_signed_keys(self.keys, (*manifest.sites, "unregistered"))
        self.ca = self.keys / "ca.crt"
        self._data = data

    def environment(self, home: Path) -> dict[str, str]:
        env = flower_environment(home)
        env[self.marker[0]] = self.marker[1]
        return env

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 (the process owns it)
        process = subprocess.Popen(
            args,
            env=self.environment(self.work / f"home-{name}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalFlowerFederation:
        try:
            self.start_superlink()
            self.register(self.manifest.sites)
            for name in self.manifest.sites:
                self.start_site(name)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.start(
            [
                flower_command("flower-superlink"),
                "--ssl-ca-certfile", str(self.ca),
                "--ssl-certfile", str(self.keys / "server.pem"),
                "--ssl-keyfile", str(self.keys / "server.key"),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host", "127.0.0.1",
                "--port", str(self.port),
            ],
            "superlink",
        )  # fmt: skip
        context = ssl.create_default_context(cafile=str(self.ca))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                url = f"https://{self.address}/health"
                with urllib.request.urlopen(url, context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"the SuperLink at {self.address} did not become healthy")

    def register(self, names: tuple[str, ...]) -> None:
        """Register the nodes' public keys with the SuperLink (in parallel)."""
        home = self.work / "home-cli"
        write_connection(home, self.address, str(self.ca))
        jobs = [
            subprocess.Popen(
                [flower_command("flwr"), "supernode", "register", str(self.keys / f"{n}.pub"),
                 "distmix", "--format", "json"],
                env=self.environment(home),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for n in names
        ]  # fmt: skip
        for name, job in zip(names, jobs, strict=True):
            out, _ = job.communicate(timeout=120)
            if job.returncode != 0 or b'"success": true' not in out:
                raise RuntimeError(f"registering {name}'s key failed: {out.decode()[-500:]}")

    def start_site(self, name: str) -> subprocess.Popen:
        return self.start(
            [
                sys.executable, "-m", "distmix", "site", str(self._data[name]),
                "--name", name,
                "--manifest", str(self.manifest_path),
                "--socket", str(self.work / f"{name}.sock"),
                "--superlink", self.address,
                "--root-certificates", str(self.ca),
                "--auth-key", str(self.keys / f"{name}.key"),
                "--ledger", str(self.work / f"{name}-ledger.json"),
            ],
            f"site-{name}",
        )  # fmt: skip

    def federate(self, out: str, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """``distmix federate`` against this federation (``args``: its other flags)."""
        return subprocess.run(
            [
                sys.executable, "-m", "distmix", "federate",
                "--manifest", str(self.manifest_path),
                "--superlink", self.address,
                "--root-certificates", str(self.ca),
                "--out", out,
                *args,
            ],
            env=self.environment(self.work / "home-federate"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip

    def leftovers(self) -> list[int]:
        """Live processes carrying this federation's marker."""
        marker = f"{self.marker[0]}={self.marker[1]}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if marker in (entry / "environ").read_bytes():
                    if "\nState:\tZ" not in (entry / "status").read_text():
                        found.append(int(entry.name))
            except OSError:
                continue
        return found

    def close(self, timeout: float = 20.0) -> None:
        """Stop the sites, then the SuperLink; then whatever they started and left."""
        for process in reversed(self.processes):
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
        deadline = time.monotonic() + timeout
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
