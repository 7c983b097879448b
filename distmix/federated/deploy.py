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

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

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
    stop: threading.Event | None = None,
) -> int:
    """Serve a site until interrupted (SIGINT/SIGTERM) or until its SuperNode exits.

    Returns the SuperNode's exit status (0 when stopped by a signal).
    """
    manifest = Manifest.from_json(Path(manifest_path).read_text())
    site = Site(data, name, block_size=block_size, manifest=manifest)
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
