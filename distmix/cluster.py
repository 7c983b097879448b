"""Cluster configs (``cluster_configs/*.yaml``) → a ``distributed.Client``.

A config is a small YAML mapping with an explicit schema::

    type: slurm            # local | scheduler | ssh | slurm | pbs | kubernetes | local-cuda
    cluster:               # keyword arguments of the cluster class (or of Client for `scheduler`)
      cores: 8
      memory: 16GiB
    scale: {jobs: 4}       # optional: cluster.scale(**scale) once it has started
    adapt: {maximum_jobs: 8}   # optional, instead of scale: cluster.adapt(**adapt)
    client: {timeout: 60s}     # optional: extra keyword arguments of distributed.Client

:func:`load_config` validates a file, a bundled name (``"slurm"`` is
``cluster_configs/slurm.yaml``) or a mapping into a :class:`ClusterConfig`;
every error names the file and the key. :func:`connect` turns a config, a
scheduler address (``tcp://``, ``tls://``, ``ucx://``, …) or nothing (the
bundled ``local.yaml``) into a client. :func:`render_job_script` shows the
batch script a SLURM or PBS config would submit, without submitting anything.

Layering: this module is glue between YAML and Dask's deployment libraries. It
imports nothing from the rest of distmix, and nothing in distmix's core imports
it; the CLI is its only caller inside the package. The optional backends
(dask-jobqueue, dask-kubernetes, dask-cuda, asyncssh) are imported only when a
config of their type is connected or its class is asked for.

Ownership: when :func:`connect` starts a cluster, it returns an
:class:`OwnedClusterClient`, a ``distributed.Client`` whose ``close()`` (also
on leaving a ``with`` block) closes that cluster too, exactly as a bare
``Client()`` closes the ``LocalCluster`` it started. Connecting to an existing
scheduler returns a plain ``Client``: closing it leaves the scheduler running.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import dask
import yaml
from distributed import Client
from distributed.comm.addressing import parse_address, parse_host_port

ClusterType = Literal["local", "scheduler", "ssh", "slurm", "pbs", "kubernetes", "local-cuda"]
CLUSTER_TYPES: tuple[str, ...] = get_args(ClusterType)


#: Where the bundled configs live (``connect("slurm")`` reads ``slurm.yaml`` here).
def _bundled_config_dir() -> Path:
    """``cluster_configs/``: inside the installed package, or at the top of a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "cluster_configs", here.parent / "cluster_configs"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    return here.parent / "cluster_configs"


BUNDLED_CONFIG_DIR = _bundled_config_dir()
DEFAULT_CONFIG = "local"

TOP_LEVEL_KEYS = ("type", "cluster", "scale", "adapt", "client", "dask_config")

#: URL schemes of Dask comms that a ``Client`` accepts as a scheduler address.
ADDRESS_SCHEMES = ("tcp", "tls", "ucx", "ucxx", "ws", "wss", "inproc")
_ADDRESS_RE = re.compile(rf"^({'|'.join(ADDRESS_SCHEMES)})://\S+$")
_HOST_PORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")

# Placeholders dask-jobqueue itself puts in ``cluster.job_script()`` before a
# scheduler exists; using the same ones makes our preview read like theirs.
JOB_SCRIPT_SCHEDULER_PLACEHOLDER = "tcp://<insert-scheduler-address-here>:8786"
JOB_SCRIPT_WORKER_NAME_PLACEHOLDER = "dummy-name"


class ClusterConfigError(ValueError):
    """A cluster config that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------- #
# value checks: a compact vocabulary of the value kinds the schema uses       #
# --------------------------------------------------------------------------- #
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_KIND_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "any": ("anything", lambda v: True),
    "int": ("an integer", _is_int),
    "count": ("an integer ≥ 0", lambda v: _is_int(v) and v >= 0),
    "positive": ("an integer ≥ 1", lambda v: _is_int(v) and v >= 1),
    "number": ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "null": ("null", lambda v: v is None),
    "mapping": ("a mapping", lambda v: isinstance(v, Mapping)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "list[str]": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    ),
}

# Why a value has the wrong type, where YAML is the usual culprit.
_KEY_HINTS = {
    "walltime": (
        "YAML reads an unquoted 24:00:00 as the base-60 number 86400: quote it, "
        "walltime: '24:00:00'"
    ),
    "memory": "write it with a unit, e.g. memory: 16GiB",
}


@dataclasses.dataclass(frozen=True)
class _Backend:
    """How one ``type:`` is started, and the schema of its ``cluster:`` mapping.

    ``keys`` maps the keyword arguments whose value type we check to their
    kinds (``"int|null"``); other keys pass through to the constructor, which
    forwards them to the workers. ``requires`` are modules the class needs at
    start-up beyond its own (``SSHCluster`` needs asyncssh).
    """

    module: str
    class_name: str
    pip_package: str
    doc: str
    required: tuple[str, ...] = ()
    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    scale_keys: Mapping[str, str] | None = None  # None: scale/adapt not allowed
    adapt_keys: Mapping[str, str] | None = None
    requires: tuple[tuple[str, str], ...] = ()  # (module, pip package)
    renamed: Mapping[str, str] = dataclasses.field(default_factory=dict)


_SPEC_SCALE = {"n": "count", "cores": "count", "memory": "str|int"}
_SPEC_ADAPT = {
    "minimum": "count",
    "maximum": "count",
    "minimum_cores": "count",
    "maximum_cores": "count",
    "minimum_memory": "str",
    "maximum_memory": "str",
    "interval": "str|number",
    "wait_count": "positive",
    "target_duration": "str|number",
}
_LOCAL_KEYS = {
    "n_workers": "count|null",
    "threads_per_worker": "positive|null",
    "processes": "bool|null",
    "memory_limit": "str|number|null",
    "host": "str|null",
    "scheduler_port": "count",
    "dashboard_address": "str|null",
    "protocol": "str|null",
    "interface": "str|null",
    "local_directory": "str|null",
}
_JOBQUEUE_KEYS = {
    "cores": "positive",
    "memory": "str",
    "processes": "positive|null",
    "walltime": "str|null",
    "queue": "str|null",
    "account": "str|null",
    "job_extra_directives": "list[str]|null",
    "job_directives_skip": "list[str]|null",
    "job_script_prologue": "list[str]|null",
    "worker_extra_args": "list[str]|null",
    "interface": "str|null",
    "local_directory": "str|null",
    "log_directory": "str|null",
    "death_timeout": "number|null",
    "python": "str|null",
    "shebang": "str|null",
    "job_name": "str|null",
    "n_workers": "count",
    "scheduler_options": "mapping|null",
}
_JOBQUEUE_SCALE = {"jobs": "count", **_SPEC_SCALE}
_JOBQUEUE_ADAPT = {"minimum_jobs": "count", "maximum_jobs": "count", **_SPEC_ADAPT}
# dask-jobqueue 0.8.3 renamed these; the old names only warn there, so say it here.
_JOBQUEUE_RENAMED = {
    "job_extra": "job_extra_directives",
    "env_extra": "job_script_prologue",
    "extra": "worker_extra_args",
    "header_skip": "job_directives_skip",
}

_BACKENDS: dict[str, _Backend] = {
    "local": _Backend(
        "distributed",
        "LocalCluster",
        "distributed",
        "worker processes on this machine",
        keys=_LOCAL_KEYS,
        scale_keys=_SPEC_SCALE,
        adapt_keys=_SPEC_ADAPT,
    ),
    "scheduler": _Backend(
        "distributed",
        "Client",
        "distributed",
        "an already running scheduler",
        keys={"address": "str", "scheduler_file": "str"},
    ),
    "ssh": _Backend(
        "distributed",
        "SSHCluster",
        "distributed",
        "a scheduler and workers started over SSH",
        required=("hosts",),
        keys={
            "hosts": "list[str]",
            "connect_options": "mapping|list|null",
            "worker_options": "mapping|null",
            "scheduler_options": "mapping|null",
            "worker_class": "str",
            "remote_python": "str|list[str]|null",
        },
        scale_keys=_SPEC_SCALE,
        adapt_keys=_SPEC_ADAPT,
        requires=(("asyncssh", "asyncssh"),),
    ),
    "slurm": _Backend(
        "dask_jobqueue",
        "SLURMCluster",
        "dask-jobqueue",
        "workers submitted as SLURM batch jobs",
        required=("cores", "memory"),
        keys={**_JOBQUEUE_KEYS, "job_cpu": "positive|null", "job_mem": "str|null"},
        scale_keys=_JOBQUEUE_SCALE,
        adapt_keys=_JOBQUEUE_ADAPT,
        renamed=_JOBQUEUE_RENAMED,
    ),
    "pbs": _Backend(
        "dask_jobqueue",
        "PBSCluster",
        "dask-jobqueue",
        "workers submitted as PBS batch jobs",
        required=("cores", "memory"),
        keys={**_JOBQUEUE_KEYS, "resource_spec": "str|null"},
        scale_keys=_JOBQUEUE_SCALE,
        adapt_keys=_JOBQUEUE_ADAPT,
        renamed=_JOBQUEUE_RENAMED,
    ),
    "kubernetes": _Backend(
        "dask_kubernetes.operator",
        "KubeCluster",
        "dask-kubernetes",
        "a DaskCluster resource created through the Dask Kubernetes operator",
        required=("image",),
        keys={
            "name": "str",
            "namespace": "str|null",
            "image": "str",
            "n_workers": "count|null",
            "resources": "mapping|null",
            "env": "mapping|list|null",
            "worker_command": "str|list[str]|null",
            "port_forward_cluster_ip": "bool|null",
            "shutdown_on_close": "bool|null",
            "idle_timeout": "count|null",
            "resource_timeout": "count|null",
            "scheduler_service_type": "str|null",
            "custom_cluster_spec": "str|mapping|null",
        },
        scale_keys={"n": "count", "worker_group": "str"},
        adapt_keys={"minimum": "count", "maximum": "count"},
    ),
    "local-cuda": _Backend(
        "dask_cuda",
        "LocalCUDACluster",
        "dask-cuda",
        "one worker process per GPU of this machine",
        keys={
            **_LOCAL_KEYS,
            "CUDA_VISIBLE_DEVICES": "str|list|int|null",
            "device_memory_limit": "str|number|null",
            "rmm_pool_size": "str|number|null",
            "rmm_maximum_pool_size": "str|number|null",
            "rmm_managed_memory": "bool",
            "rmm_async": "bool",
            "enable_tcp_over_ucx": "bool|null",
            "enable_infiniband": "bool|null",
            "enable_nvlink": "bool|null",
            "pre_import": "str|list[str]|null",
        },
        scale_keys=_SPEC_SCALE,
        adapt_keys=_SPEC_ADAPT,
    ),
}
assert set(_BACKENDS) == set(CLUSTER_TYPES)

# Client keyword arguments that connect() sets itself.
_RESERVED_CLIENT_KEYS = ("address", "scheduler_file", "asynchronous", "loop")


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(source: str, where: str, value: Any, kinds: str) -> None:
    names = kinds.split("|")
    if any(_KIND_CHECKS[name][1](value) for name in names):
        return
    wanted = " or ".join(_KIND_CHECKS[name][0] for name in names)
    key = where.rsplit(".", 1)[-1]
    hint = f"; {_KEY_HINTS[key]}" if key in _KEY_HINTS else ""
    raise ClusterConfigError(
        f"{source}: {where} must be {wanted}, got {value!r} ({type(value).__name__}){hint}"
    )


def _check_section(
    source: str, name: str, section: Mapping[str, Any], schema: Mapping[str, str], strict: bool
) -> None:
    for key, value in section.items():
        if not isinstance(key, str):
            raise ClusterConfigError(f"{source}: {name} keys must be strings, got {key!r}")
        if key in schema:
            _check_value(source, f"{name}.{key}", value, schema[key])
        elif strict:
            raise ClusterConfigError(
                f"{source}: unknown key {name}.{key}{_did_you_mean(key, schema)}; "
                f"the keys {name} takes here are {', '.join(sorted(schema))}"
            )


def _client_keys() -> dict[str, str]:
    """``distributed.Client``'s named keyword arguments (less those connect sets).

    Client silently ignores unknown keywords when given a cluster, so a typo in
    ``client:`` would go unnoticed without this list.
    """
    parameters = inspect.signature(Client.__init__).parameters
    named = {
        name
        for name, parameter in parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    kinds = {name: "any" for name in named - {"self", *_RESERVED_CLIENT_KEYS}}
    kinds.update({"timeout": "str|number|null", "name": "str|null", "set_as_default": "bool"})
    return kinds


def _check_client_options(source: str, options: Mapping[str, Any]) -> None:
    for key in _RESERVED_CLIENT_KEYS:
        if key in options:
            raise ClusterConfigError(
                f"{source}: client.{key} is set by distmix.cluster.connect; "
                + (
                    "use type: scheduler with cluster.address or cluster.scheduler_file"
                    if key in ("address", "scheduler_file")
                    else "remove it"
                )
            )
    _check_section(source, "client", options, _client_keys(), strict=True)


# --------------------------------------------------------------------------- #
# ClusterConfig                                                               #
# --------------------------------------------------------------------------- #
@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster config.

    Built by :func:`load_config`; constructing one directly (or with
    ``dataclasses.replace``) validates it as well.

    Parameters
    ----------
    type : {"local", "scheduler", "ssh", "slurm", "pbs", "kubernetes", "local-cuda"}
        Which cluster class starts the workers (see ``cluster_configs/README.md``).
    cluster : mapping
        Keyword arguments of that class; for ``"scheduler"``, of ``distributed.Client``
        (``address`` or ``scheduler_file``).
    scale, adapt : mapping or None
        Keyword arguments of ``cluster.scale`` / ``cluster.adapt``, called once the
        cluster has started; at most one of the two.
    client : mapping
        Extra keyword arguments of ``distributed.Client`` (``timeout``, ``name``, …).
    dask_config : mapping
        Dask configuration (dotted keys, as ``dask.config.set`` takes them) in force
        while :func:`connect` starts the cluster and sizes it: e.g. the environment
        of the worker processes (``distributed.nanny.pre-spawn-environ.*``). Workers
        that ``adapt`` adds later start under the process's own Dask config.
    source : str
        Where the config came from (a file path or ``"<mapping>"``), named in errors.
    """

    type: ClusterType
    cluster: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    scale: Mapping[str, Any] | None = None
    adapt: Mapping[str, Any] | None = None
    client: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dask_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "<mapping>"

    def __post_init__(self) -> None:
        source = self.source
        if not isinstance(self.type, str) or self.type not in _BACKENDS:
            raise ClusterConfigError(
                f"{source}: unknown cluster type {self.type!r}"
                f"{_did_you_mean(str(self.type), CLUSTER_TYPES)}; "
                f"the types are {', '.join(CLUSTER_TYPES)}"
            )
        backend = _BACKENDS[self.type]
        for name in ("cluster", "client", "dask_config"):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, {})
            elif not isinstance(value, Mapping):
                what = (
                    "Dask config keys to values" if name == "dask_config" else "keyword arguments"
                )
                raise ClusterConfigError(
                    f"{source}: {name} must be a mapping of {what}, got {value!r}"
                )
        for name in ("scale", "adapt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Mapping):
                raise ClusterConfigError(
                    f"{source}: {name} must be a mapping of keyword arguments of "
                    f"cluster.{name}(), e.g. {name}: {{n: 2}}; got {value!r}"
                )
        # Private copies: the caller's mapping can change without changing us.
        for name in ("cluster", "client", "scale", "adapt", "dask_config"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, dict(value))

        for old, new in backend.renamed.items():
            if old in self.cluster:
                raise ClusterConfigError(
                    f"{source}: cluster.{old} was renamed {new} in dask-jobqueue 0.8.3; "
                    f"write {new}: instead"
                )
        # Other types forward unknown keys to the workers; a scheduler config has none.
        strict = self.type == "scheduler"
        _check_section(source, "cluster", self.cluster, backend.keys, strict=strict)
        missing = [key for key in backend.required if self.cluster.get(key) is None]
        if missing:
            raise ClusterConfigError(
                f"{source}: a {self.type} config needs cluster.{', cluster.'.join(missing)} "
                f"({backend.class_name}: {backend.doc})"
            )
        self._check_type_rules()

        if self.scale is not None and self.adapt is not None:
            raise ClusterConfigError(
                f"{source}: give either scale (a fixed size) or adapt (a size that follows "
                "the load), not both"
            )
        for name, schema in (("scale", backend.scale_keys), ("adapt", backend.adapt_keys)):
            section = getattr(self, name)
            if section is None:
                continue
            if schema is None:
                raise ClusterConfigError(
                    f"{source}: a {self.type} config cannot have {name}: it connects to a "
                    "cluster started elsewhere; size the cluster where it was started"
                )
            _check_section(source, name, section, schema, strict=True)

        _check_client_options(source, self.client)
        for key in self.dask_config:
            if not isinstance(key, str) or not key:
                raise ClusterConfigError(
                    f"{source}: dask_config keys are dotted Dask config names such as "
                    f"distributed.scheduler.work-stealing, got {key!r}"
                )

    def _check_type_rules(self) -> None:
        source, cluster = self.source, self.cluster
        if self.type == "scheduler":
            given = [key for key in ("address", "scheduler_file") if cluster.get(key)]
            if len(given) != 1:
                raise ClusterConfigError(
                    f"{source}: a scheduler config needs exactly one of cluster.address "
                    "(e.g. tcp://127.0.0.1:8786) and cluster.scheduler_file (the JSON file "
                    f"`dask scheduler --scheduler-file` writes); got {given or 'neither'}"
                )
            address = cluster.get("address")
            if address is not None and not is_scheduler_address(address):
                raise ClusterConfigError(
                    f"{source}: cluster.address {address!r} is not a scheduler address; "
                    f"write SCHEME://HOST:PORT with SCHEME one of {', '.join(ADDRESS_SCHEMES)}"
                )
        elif self.type == "local":
            protocol = str(cluster.get("protocol") or "").removesuffix("://")
            if cluster.get("processes") is False and cluster.get("host") and not protocol:
                raise ClusterConfigError(
                    f"{source}: with cluster.processes: false, LocalCluster talks to its "
                    "threads in-process (inproc), which takes no host; set "
                    "cluster.protocol: tcp to keep cluster.host, or remove cluster.host"
                )
            if protocol == "inproc" and cluster.get("host"):
                raise ClusterConfigError(
                    f"{source}: cluster.protocol inproc takes no host; remove cluster.host"
                )
        elif self.type == "ssh":
            if len(cluster["hosts"]) < 2:
                raise ClusterConfigError(
                    f"{source}: cluster.hosts lists the scheduler's host first and then one "
                    f"host per worker, so it needs at least two entries, got {cluster['hosts']}; "
                    "repeat the first host to run a worker beside the scheduler"
                )
        elif self.type in ("slurm", "pbs"):
            if self.scale is None and self.adapt is None and not cluster.get("n_workers"):
                raise ClusterConfigError(
                    f"{source}: a {self.type} cluster starts with no jobs and a fit would wait "
                    "for workers forever: add scale: {jobs: N} or adapt: {maximum_jobs: N}"
                )

    @property
    def class_name(self) -> str:
        """The name of the class that :func:`connect` calls, e.g. ``"SLURMCluster"``."""
        return _BACKENDS[self.type].class_name

    @property
    def pip_package(self) -> str:
        """The pip package that provides :attr:`class_name`."""
        return _BACKENDS[self.type].pip_package


# --------------------------------------------------------------------------- #
# loading                                                                     #
# --------------------------------------------------------------------------- #
def bundled_configs() -> dict[str, Path]:
    """The configs shipped in ``cluster_configs/``, by name (file stem).

    Returns
    -------
    dict of str to Path
        E.g. ``{"local": .../local.yaml, "slurm": .../slurm.yaml, ...}``.
    """
    if not BUNDLED_CONFIG_DIR.is_dir():
        return {}
    return {path.stem: path for path in sorted(BUNDLED_CONFIG_DIR.glob("*.yaml"))}


def is_scheduler_address(text: str) -> bool:
    """Whether ``text`` is a scheduler address (``tcp://127.0.0.1:8786``, ``ucx://…``)."""
    return bool(_ADDRESS_RE.match(text))


def _config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A file path, or the bundled file for a bare name such as ``"slurm"``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = os.fspath(name_or_path)
    bundled = bundled_configs()
    if text in bundled:
        return bundled[text]
    if path.suffix in (".yaml", ".yml") or os.sep in text or "/" in text:
        raise ClusterConfigError(f"{text}: no such cluster config file")
    names = ", ".join(bundled) or f"none (no {BUNDLED_CONFIG_DIR})"
    raise ClusterConfigError(
        f"{text}: not a cluster config file nor a bundled config name"
        f"{_did_you_mean(text, bundled)}; bundled configs: {names}"
    )


def load_config(
    path_or_mapping: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig,
) -> ClusterConfig:
    """Read and validate a cluster config.

    Parameters
    ----------
    path_or_mapping : str, path-like, mapping or ClusterConfig
        A YAML file; the name of a bundled config (``"local"``, ``"slurm"``, … for
        ``cluster_configs/<name>.yaml``); a mapping with the same keys as the file;
        or an already validated ``ClusterConfig`` (returned as is).

    Returns
    -------
    ClusterConfig

    Raises
    ------
    ClusterConfigError
        A missing or unreadable file, invalid YAML, an unknown ``type`` (the valid
        ones are listed), an unknown top-level key, a missing required key or a
        value of the wrong type. The message starts with the file's path.
    """
    if isinstance(path_or_mapping, ClusterConfig):
        return path_or_mapping
    if isinstance(path_or_mapping, Mapping):
        return _from_mapping(path_or_mapping, "<mapping>")
    if not isinstance(path_or_mapping, (str, os.PathLike)):
        raise TypeError(
            "load_config takes a YAML path, a bundled config name or a mapping, "
            f"got {type(path_or_mapping).__name__}"
        )
    path = _config_path(path_or_mapping)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ClusterConfigError(f"{source}: cannot read the cluster config: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ClusterConfigError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, Mapping):
        raise ClusterConfigError(
            f"{source}: a cluster config is a YAML mapping with the keys "
            f"{', '.join(TOP_LEVEL_KEYS)}; got {type(data).__name__}"
        )
    return _from_mapping(data, source)


def _from_mapping(data: Mapping[str, Any], source: str) -> ClusterConfig:
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ClusterConfigError(
                f"{source}: unknown top-level key {key!r}"
                f"{_did_you_mean(str(key), TOP_LEVEL_KEYS)}; "
                f"the keys are {', '.join(TOP_LEVEL_KEYS)}"
            )
    if "type" not in data:
        raise ClusterConfigError(
            f"{source}: missing the top-level key 'type'; one of {', '.join(CLUSTER_TYPES)}"
        )
    # An empty section (`cluster:` with nothing under it) reads as None: no arguments.
    cluster: Any = {} if data.get("cluster") is None else data["cluster"]
    client: Any = {} if data.get("client") is None else data["client"]
    dask_config: Any = {} if data.get("dask_config") is None else data["dask_config"]
    return ClusterConfig(
        type=data["type"],
        cluster=cluster,
        scale=data.get("scale"),
        adapt=data.get("adapt"),
        client=client,
        dask_config=dask_config,
        source=source,
    )


def resolve(
    config_or_address: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig | None = None,
) -> str | ClusterConfig:
    """What :func:`connect` would connect to, without connecting.

    Parameters
    ----------
    config_or_address : str, path-like, mapping, ClusterConfig or None
        ``None``: the bundled ``local.yaml``. A scheduler address
        (``tcp://host:port``, ``tls://…``, ``ucx://…``, or a bare ``host:port``
        that is not a file): returned as the address. Anything else: as
        :func:`load_config`.

    Returns
    -------
    str or ClusterConfig
        The scheduler address, or the validated config.
    """
    if config_or_address is None:
        return load_config(DEFAULT_CONFIG)
    if isinstance(config_or_address, str):
        text = config_or_address.strip()
        if is_scheduler_address(text):
            return text
        if _HOST_PORT_RE.match(text) and not Path(text).exists():
            return text
    return load_config(config_or_address)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, naming ``address``, when no scheduler can be listening there.

    ``distributed.Client`` retries a refused connection until its timeout (30 s)
    and then reports a timeout; one plain TCP connection tells a refused port,
    an unknown host or an unreachable one within ``timeout`` seconds. Addresses
    of other protocols (``ucx://``, ``inproc://``) are left to the client.
    """
    scheme, location = parse_address(address if "://" in address else "tcp://" + address)
    if scheme not in ("tcp", "tls"):
        return
    host, port = parse_host_port(location)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except ConnectionRefusedError:
        raise ConnectionRefusedError(
            f"cannot reach a Dask scheduler at {address}: connection refused (nothing "
            "listens on that port). Start the scheduler there, or check the address."
        ) from None
    except TimeoutError:
        raise TimeoutError(
            f"cannot reach a Dask scheduler at {address}: no answer within {timeout:g} s "
            "(a firewall, or a host that is down). Check the address."
        ) from None
    except OSError as error:
        raise ConnectionError(
            f"cannot reach a Dask scheduler at {address}: {error.strerror or error}."
        ) from None


def cluster_class(config: ClusterConfig | str) -> Any:
    """Import and return the class a config (or a ``type:`` name) starts.

    Parameters
    ----------
    config : ClusterConfig or str
        A validated config, or one of the cluster types.

    Returns
    -------
    type
        ``distributed.LocalCluster``, ``dask_jobqueue.SLURMCluster``, … (for
        ``"scheduler"``, ``distributed.Client``; ``SSHCluster`` is a function).

    Raises
    ------
    ImportError
        The backend package is missing; the message says which one to install.
    """
    cluster_type: str
    if isinstance(config, ClusterConfig):
        cluster_type, source = config.type, config.source
    else:
        cluster_type, source = config, "<type>"
        if cluster_type not in _BACKENDS:
            raise ClusterConfigError(
                f"unknown cluster type {cluster_type!r}; the types are {', '.join(CLUSTER_TYPES)}"
            )
    backend = _BACKENDS[cluster_type]
    for module, package in ((backend.module, backend.pip_package), *backend.requires):
        try:
            importlib.import_module(module)
        except ImportError as err:
            top = module.partition(".")[0]
            absent = isinstance(err, ModuleNotFoundError) and err.name in (module, top)
            why = (
                "which is not installed"
                if absent
                else f"which is installed but fails to import here ({err})"
            )
            raise ImportError(
                f"{source}: a {cluster_type} cluster ({backend.class_name}) needs the "
                f"{package!r} package, {why}; install it with: pip install {package}"
            ) from err
    return getattr(importlib.import_module(backend.module), backend.class_name)


# --------------------------------------------------------------------------- #
# connecting                                                                  #
# --------------------------------------------------------------------------- #
class OwnedClusterClient(Client):
    """A ``distributed.Client`` that closes the cluster :func:`connect` started for it.

    ``close()`` closes the client, then ``self.cluster`` and its workers; leaving
    a ``with`` block and garbage collection go through ``close()`` too, as with
    the ``LocalCluster`` a bare ``Client()`` starts. At interpreter exit the
    cluster is left to its own finalizer.
    """

    def close(self, *args: Any, **kwargs: Any) -> Any:
        cluster = self.cluster
        try:
            return super().close(*args, **kwargs)
        finally:
            if cluster is not None and not sys.is_finalizing():
                cluster.close()


def connect(
    config_or_address: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig | None = None,
    *,
    client_options: Mapping[str, Any] | None = None,
) -> Client:
    """A ``distributed.Client`` for a cluster config or a scheduler address.

    Parameters
    ----------
    config_or_address : str, path-like, mapping, ClusterConfig or None
        ``None``: start the bundled ``local.yaml`` (a ``LocalCluster`` on
        127.0.0.1). ``"tcp://host:port"`` (or ``tls://``, ``ucx://``, …):
        connect to that scheduler. A YAML path, a bundled name such as
        ``"slurm"``, a mapping or a ``ClusterConfig``: start (or, for
        ``type: scheduler``, reach) the cluster it describes.
    client_options : mapping, optional
        Extra keyword arguments of ``distributed.Client``, over the config's
        ``client:`` section (e.g. ``{"set_as_default": False}``).

    Returns
    -------
    distributed.Client
        When a cluster was started here, an ``OwnedClusterClient``: closing it
        (``client.close()`` or the end of ``with connect(...) as client:``)
        closes the cluster and its workers. For an address or a ``scheduler``
        config, a plain ``Client``: closing it leaves the scheduler running.

    Raises
    ------
    ClusterConfigError
        The config is invalid (see :func:`load_config`).
    ImportError
        The config's backend package is missing; the message names it.
    """
    target = resolve(config_or_address)
    extra = dict(client_options or {})
    _check_client_options("client_options", extra)
    if isinstance(target, str):
        check_reachable(target)
        return Client(target, **extra)

    options = {**target.client, **extra}
    cls = cluster_class(target)
    if target.type == "scheduler":
        if isinstance(target.cluster.get("address"), str):
            check_reachable(target.cluster["address"])
        return Client(**target.cluster, **options)

    with dask.config.set(dict(target.dask_config)):
        cluster = cls(**target.cluster)
        try:
            if target.scale is not None:
                cluster.scale(**target.scale)
            elif target.adapt is not None:
                cluster.adapt(**target.adapt)
            return OwnedClusterClient(cluster, **options)
        except BaseException:
            cluster.close()
            raise


# --------------------------------------------------------------------------- #
# job scripts                                                                 #
# --------------------------------------------------------------------------- #
def render_job_script(
    config: str | os.PathLike[str] | Mapping[str, Any] | ClusterConfig,
) -> str:
    """The batch script a ``slurm`` or ``pbs`` config submits for each job.

    Nothing is submitted, no scheduler is started and no log directory is
    created: the job class of the dask-jobqueue cluster renders its script with
    the placeholders ``cluster.job_script()`` uses before a scheduler exists
    (``tcp://<insert-scheduler-address-here>:8786`` and the worker name
    ``dummy-name``).

    Parameters
    ----------
    config : str, path-like, mapping or ClusterConfig
        As :func:`load_config`; its type must be ``slurm`` or ``pbs``.

    Returns
    -------
    str
        The script, with the ``#SBATCH`` / ``#PBS`` directives and the
        ``dask worker`` command line.

    Raises
    ------
    ClusterConfigError
        Not a ``slurm``/``pbs`` config, or one whose job options dask-jobqueue rejects.
    ImportError
        dask-jobqueue is not installed.
    """
    config = load_config(config)
    if config.type not in ("slurm", "pbs"):
        raise ClusterConfigError(
            f"{config.source}: job scripts exist for slurm and pbs configs only, "
            f"this one is {config.type!r}"
        )
    cls = cluster_class(config)
    # function-level import: dask-jobqueue is optional (needed by the jobqueue configs only)
    from dask_jobqueue import JobQueueCluster

    job_kwargs = dict(config.cluster)
    if job_kwargs.get("security"):
        raise ClusterConfigError(
            f"{config.source}: cannot preview the job script of a TLS (security) config "
            "without starting its scheduler; remove cluster.security to preview"
        )
    # What JobQueueCluster keeps for itself (the scheduler's options, the cluster
    # name, n_workers, …); the rest are the job's, as the cluster passes them.
    shared_with_job = {"interface", "protocol", "security", "config_name"}
    cluster_only = set(inspect.signature(JobQueueCluster.__init__).parameters) - shared_with_job
    for key in cluster_only:
        job_kwargs.pop(key, None)
    # A job creates its log directory as it is constructed: point it into a
    # scratch directory and write the configured path back into the script, so
    # that a preview leaves no trace on disk.
    log_directory = job_kwargs.get("log_directory")
    with tempfile.TemporaryDirectory(prefix="distmix-job-script-") as scratch:
        if log_directory is not None:
            job_kwargs["log_directory"] = os.path.join(scratch, "log-directory")
        try:
            job = cls.job_cls(
                JOB_SCRIPT_SCHEDULER_PLACEHOLDER,
                name=JOB_SCRIPT_WORKER_NAME_PLACEHOLDER,
                **job_kwargs,
            )
        except (TypeError, ValueError) as err:
            raise ClusterConfigError(
                f"{config.source}: dask-jobqueue rejects the cluster options: {err}"
            ) from err
        script = str(job.job_script())
        if log_directory is not None:
            script = script.replace(job_kwargs["log_directory"], str(log_directory))
    return script
