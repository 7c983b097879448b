"""Cluster configs → clients: every bundled YAML validates, bad ones are refused
with the file and key named, and real clusters on 127.0.0.1 (a LocalCluster we
start, a `dask scheduler` + `dask worker` started as subprocesses) run work.
Backends that cannot run here (SLURM, PBS, SSH, Kubernetes, GPUs) are taken as
far as possible: loaded, validated, their class resolved and, for SLURM/PBS,
the job script rendered and compared with dask-jobqueue's own.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
from pathlib import Path

import dask
import dask.array as da
import psutil
import pytest
import yaml
from conftest import dask_processes
from distributed import Client, LocalCluster
from distributed.core import Status

from distmix import cluster as dmc
from distmix.cluster import (
    CLUSTER_TYPES,
    ClusterConfig,
    ClusterConfigError,
    OwnedClusterClient,
    bundled_configs,
    cluster_class,
    connect,
    load_config,
    render_job_script,
    resolve,
)

LOOPBACK = "127.0.0.1"
QUIET_LOCAL = {  # a small LocalCluster that claims no fixed port
    "type": "local",
    "cluster": {
        "processes": False,
        "n_workers": 1,
        "threads_per_worker": 1,
        "host": LOOPBACK,
        "protocol": "tcp",
        "dashboard_address": f"{LOOPBACK}:0",
    },
}

# Optional backends: (type, module imported by cluster_class, pip package named on failure).
OPTIONAL_BACKENDS = [
    ("ssh", "asyncssh", "asyncssh"),
    ("slurm", "dask_jobqueue", "dask-jobqueue"),
    ("pbs", "dask_jobqueue", "dask-jobqueue"),
    ("kubernetes", "dask_kubernetes.operator", "dask-kubernetes"),
    ("local-cuda", "dask_cuda", "dask-cuda"),
]
BACKEND_MODULE = {"local": "distributed", "scheduler": "distributed"} | {
    kind: module for kind, module, _ in OPTIONAL_BACKENDS
}


def _sum_on(client: Client) -> int:
    x = da.arange(10_000, chunks=1_000)
    return int(client.compute(x.sum()).result(timeout=30))


# --------------------------------------------------------------------------- #
# bundled configs                                                             #
# --------------------------------------------------------------------------- #
def test_one_bundled_config_per_type() -> None:
    assert set(bundled_configs()) == set(CLUSTER_TYPES)


@pytest.mark.parametrize("name", CLUSTER_TYPES)
def test_bundled_config_loads_and_validates(name: str) -> None:
    path = bundled_configs()[name]
    config = load_config(name)
    assert config.type == name
    assert config.source == str(path)
    assert load_config(path) == config
    assert load_config(str(path)) == config
    # the same content as a mapping gives the same config, bar its source
    as_mapping = load_config(yaml.safe_load(path.read_text()))
    assert dataclasses.replace(as_mapping, source=config.source) == config
    # a new user finds every key explained: top-level and `cluster:` keys carry a comment
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        is_key = re.match(r"^( {2})?[A-Za-z_]+:", line)
        if is_key:
            assert "#" in line, f"{path.name}:{number} has no comment: {line!r}"


def test_local_config_is_the_default_and_loopback_only() -> None:
    config = resolve(None)
    assert isinstance(config, ClusterConfig)
    assert config.type == "local"
    assert config.cluster["host"] == LOOPBACK
    assert config.cluster["processes"] is True
    assert str(config.cluster["dashboard_address"]).startswith(LOOPBACK)
    assert {"n_workers", "threads_per_worker", "memory_limit"} <= set(config.cluster)


@pytest.mark.parametrize("name", CLUSTER_TYPES)
def test_schema_keys_are_real_constructor_arguments(name: str) -> None:
    """The keys whose types we check exist in the library we pass them to, so the
    schema cannot drift from the constructors (where the backend is importable)."""
    pytest.importorskip(BACKEND_MODULE[name], exc_type=ImportError)
    cls = cluster_class(name)
    accepted: set[str] = set()
    owners = [cls]
    if name in ("local", "local-cuda"):
        from distributed import Nanny, Worker

        owners += [Nanny, Worker]  # LocalCluster forwards **worker_kwargs to them
    if name in ("slurm", "pbs"):
        owners.append(cls.job_cls)
    for owner in owners:
        for klass in inspect.getmro(owner) if inspect.isclass(owner) else [owner]:
            init = klass.__init__ if inspect.isclass(owner) else klass
            try:
                accepted |= set(inspect.signature(init).parameters)
            except (TypeError, ValueError):
                pass
    schema = dmc._BACKENDS[name]
    assert set(schema.keys) <= accepted, set(schema.keys) - accepted
    if name == "scheduler":
        return
    assert set(load_config(name).cluster) <= accepted
    # scale/adapt keys are those of the cluster's own scale() and adapt()
    from distributed import SpecCluster
    from distributed.deploy.adaptive import Adaptive

    cluster_type = cls if inspect.isclass(cls) else SpecCluster  # SSHCluster is a function
    scale_args: set[str] = set()
    adapt_args: set[str] = set()
    for klass in inspect.getmro(cluster_type):
        if "scale" in vars(klass):
            scale_args |= set(inspect.signature(klass.scale).parameters)
        if "adapt" in vars(klass):
            adapt_args |= set(inspect.signature(klass.adapt).parameters)
    if "kwargs" in adapt_args:  # forwarded to the Adaptive object
        adapt_args |= set(inspect.signature(Adaptive.__init__).parameters)
    assert set(schema.scale_keys or {}) <= scale_args, set(schema.scale_keys or {}) - scale_args
    assert set(schema.adapt_keys or {}) <= adapt_args, set(schema.adapt_keys or {}) - adapt_args


# --------------------------------------------------------------------------- #
# invalid configs                                                             #
# --------------------------------------------------------------------------- #
SLURM_BASE = "type: slurm\ncluster: {cores: 4, memory: 8GiB}\n"

INVALID = {
    "unknown type": (
        "type: slurmm\n",
        ["unknown cluster type 'slurmm'", "did you mean 'slurm'", *CLUSTER_TYPES],
    ),
    "missing type": ("cluster: {}\n", ["missing the top-level key 'type'", "local"]),
    "unknown top-level key": (
        "type: local\nscael: {n: 2}\n",
        ["unknown top-level key 'scael'", "did you mean 'scale'"],
    ),
    "wrong value type": (
        "type: local\ncluster: {n_workers: two}\n",
        ["cluster.n_workers", "an integer", "'two'"],
    ),
    "bool is not a count": (
        "type: local\ncluster: {n_workers: true}\n",
        ["cluster.n_workers", "an integer"],
    ),
    "negative count": ("type: local\ncluster: {n_workers: -1}\n", ["cluster.n_workers", "≥ 0"]),
    "cluster not a mapping": ("type: local\ncluster: [1, 2]\n", ["cluster must be a mapping"]),
    "scale not a mapping": ("type: local\nscale: 4\n", ["scale must be a mapping"]),
    "unquoted walltime": (
        SLURM_BASE.replace("}", ", walltime: 24:00:00}") + "scale: {jobs: 1}\n",
        ["cluster.walltime", "86400", "quote it"],
    ),
    "memory without unit": (
        "type: pbs\ncluster: {cores: 4, memory: 16}\nscale: {jobs: 1}\n",
        ["cluster.memory", "with a unit"],
    ),
    "missing required key": (
        "type: slurm\ncluster: {cores: 4}\nscale: {jobs: 1}\n",
        ["needs cluster.memory", "SLURMCluster"],
    ),
    "jobqueue without jobs": (SLURM_BASE, ["no jobs", "scale: {jobs: N}"]),
    "renamed jobqueue key": (
        SLURM_BASE.replace("}", ", job_extra: ['--qos=x']}") + "scale: {jobs: 1}\n",
        ["cluster.job_extra was renamed job_extra_directives"],
    ),
    "unknown scale key": (
        SLURM_BASE + "scale: {job: 2}\n",
        ["unknown key scale.job", "did you mean 'jobs'"],
    ),
    "scale and adapt": (
        "type: local\nscale: {n: 2}\nadapt: {maximum: 4}\n",
        ["either scale", "not both"],
    ),
    "scheduler cannot scale": (
        "type: scheduler\ncluster: {address: 'tcp://127.0.0.1:8786'}\nscale: {n: 2}\n",
        ["cannot have scale"],
    ),
    "scheduler without address": ("type: scheduler\n", ["exactly one of cluster.address"]),
    "scheduler with client options in cluster": (
        "type: scheduler\ncluster: {address: 'tcp://127.0.0.1:8786', timeout: 5}\n",
        ["unknown key cluster.timeout"],
    ),
    "scheduler with address and file": (
        "type: scheduler\ncluster: {address: 'tcp://127.0.0.1:8786', scheduler_file: s.json}\n",
        ["exactly one of cluster.address"],
    ),
    "scheduler address without scheme": (
        "type: scheduler\ncluster: {address: '127.0.0.1:8786'}\n",
        ["not a scheduler address", "tcp"],
    ),
    "ssh with one host": (
        "type: ssh\ncluster: {hosts: [node1]}\n",
        ["cluster.hosts", "at least two"],
    ),
    "threads with a host": (
        "type: local\ncluster: {processes: false, host: 127.0.0.1}\n",
        ["cluster.processes: false", "cluster.protocol: tcp"],
    ),
    "kubernetes without image": ("type: kubernetes\ncluster: {name: x}\n", ["cluster.image"]),
    "unknown client key": (
        "type: local\nclient: {set_as_defualt: false}\n",
        ["unknown key client.set_as_defualt", "did you mean 'set_as_default'"],
    ),
    "reserved client key": (
        "type: local\nclient: {address: 'tcp://127.0.0.1:1'}\n",
        ["client.address is set by"],
    ),
    "dask_config not a mapping": (
        "type: local\ndask_config: [distributed.nanny]\n",
        ["dask_config must be a mapping"],
    ),
    "not a mapping": ("- type\n- local\n", ["a cluster config is a YAML mapping"]),
    "empty file": ("", ["a cluster config is a YAML mapping"]),
    "invalid yaml": ("type: [local\n", ["not valid YAML", "line"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_config_names_file_and_key(case: str, tmp_path: Path) -> None:
    text, expected = INVALID[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ClusterConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_invalid_mapping_is_named_as_mapping() -> None:
    with pytest.raises(ClusterConfigError, match=r"^<mapping>: .*cluster\.threads_per_worker"):
        load_config({"type": "local", "cluster": {"threads_per_worker": 0}})


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "cluster.yaml"
    with pytest.raises(ClusterConfigError, match="no such cluster config file") as info:
        load_config(path)
    assert str(path) in str(info.value)
    with pytest.raises(ClusterConfigError) as info:
        connect(str(path))
    assert str(path) in str(info.value)


def test_unknown_bundled_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ClusterConfigError) as info:
        load_config("slrum")
    message = str(info.value)
    assert message.startswith("slrum:")
    assert "did you mean 'slurm'" in message
    for name in CLUSTER_TYPES:
        assert name in message


def test_config_is_a_private_validated_copy() -> None:
    cluster = {"n_workers": 2}
    config = load_config({"type": "local", "cluster": cluster})
    cluster["n_workers"] = "many"
    assert config.cluster["n_workers"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.type = "slurm"  # type: ignore[misc]
    with pytest.raises(ClusterConfigError, match="cluster.n_workers"):
        dataclasses.replace(config, cluster={"n_workers": "many"})


def test_resolve_tells_addresses_from_configs(tmp_path: Path) -> None:
    for address in (
        "tcp://127.0.0.1:8786",
        "tls://127.0.0.1:8786",
        "ucx://127.0.0.1:13337",
        "127.0.0.1:8786",
    ):
        assert resolve(address) == address
    assert resolve("slurm") == load_config("slurm")
    path = tmp_path / "mine.yaml"
    path.write_text("type: local\ncluster: {n_workers: 1}\n")
    config = resolve(path)
    assert isinstance(config, ClusterConfig)
    assert config.source == str(path)
    assert config.cluster == {"n_workers": 1}


# --------------------------------------------------------------------------- #
# backends: resolved where importable, a clear message where not              #
# --------------------------------------------------------------------------- #
def test_core_backends_resolve() -> None:
    from distributed import SSHCluster

    assert cluster_class(load_config("local")) is LocalCluster
    assert cluster_class("scheduler") is Client
    assert load_config("local").class_name == "LocalCluster"
    # SSHCluster is part of distributed; only starting it needs asyncssh
    if _importable("asyncssh"):
        assert cluster_class(load_config("ssh")) is SSHCluster


@pytest.mark.parametrize(("kind", "module", "package"), OPTIONAL_BACKENDS)
def test_optional_backend_resolves_when_installed(kind: str, module: str, package: str) -> None:
    pytest.importorskip(module, exc_type=ImportError)  # e.g. dask-cuda without CUDA libraries
    config = load_config(kind)
    assert cluster_class(config).__name__ == config.class_name


@pytest.mark.parametrize(("kind", "module", "package"), OPTIONAL_BACKENDS)
def test_missing_backend_names_pip_package(
    kind: str, module: str, package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    config = load_config(kind)
    with pytest.raises(ImportError, match=f"pip install {package}") as info:
        cluster_class(config)
    assert config.source in str(info.value)
    assert "not installed" in str(info.value)
    with pytest.raises(ImportError, match=f"pip install {package}"):
        connect(config)  # fails before starting anything
    if kind in ("slurm", "pbs"):
        with pytest.raises(ImportError, match=f"pip install {package}"):
            render_job_script(config)


def test_backend_that_fails_to_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed backend whose own imports fail (dask-cuda without the CUDA
    libraries) is not reported as missing."""
    import importlib

    real_import = importlib.import_module

    def import_module(name: str, *args, **kwargs):
        if name == "dask_cuda":
            raise ImportError("cannot import name 'bindings' from 'cuda'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(ImportError, match="installed but fails to import.*bindings"):
        cluster_class("local-cuda")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- #
# a real LocalCluster                                                         #
# --------------------------------------------------------------------------- #
@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")  # another cluster has it
def test_connect_default_starts_local_cluster_and_close_stops_it() -> None:
    with connect() as client:
        assert isinstance(client, OwnedClusterClient)
        cluster = client.cluster
        assert isinstance(cluster, LocalCluster)
        assert client.scheduler.address.startswith(f"tcp://{LOOPBACK}:")
        client.wait_for_workers(1, timeout=30)
        workers = client.scheduler_info()["workers"]
        assert all(address.startswith(f"tcp://{LOOPBACK}:") for address in workers)
        assert {w["nthreads"] for w in workers.values()} == {1}
        worker_processes = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        assert psutil.Process() not in worker_processes  # processes: true
        assert _sum_on(client) == 49_995_000
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:  # else the workers inherit it
            # local.yaml's dask_config: no malloc tunable that slows the E-step
            trim = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
            assert set(trim.values()) == {None}, trim
    assert client.status == "closed"
    assert cluster.status == Status.closed
    _, alive = psutil.wait_procs(worker_processes, timeout=15)
    assert not alive, f"worker processes left running: {alive}"


def test_close_without_with_block_closes_cluster() -> None:
    client = connect(QUIET_LOCAL, client_options={"set_as_default": False})
    cluster = client.cluster
    assert _sum_on(client) == 49_995_000
    client.close()
    assert cluster.status == Status.closed
    client.close()  # closing twice is harmless


def test_scale_and_client_options_are_applied() -> None:
    config = dict(QUIET_LOCAL, scale={"n": 2}, client={"name": "distmix-test"})
    with connect(config, client_options={"set_as_default": False}) as client:
        client.wait_for_workers(2, timeout=30)
        assert len(client.scheduler_info()["workers"]) == 2
        assert "distmix-test" in client.id


def test_dask_config_reaches_the_workers_and_is_restored_after() -> None:
    key = "distributed.nanny.pre-spawn-environ.DISTMIX_TEST_SETTING"
    cluster = dict(QUIET_LOCAL["cluster"], processes=True, protocol="tcp")
    config = dict(QUIET_LOCAL, cluster=cluster, dask_config={key: "seven"})
    before = dask.config.get(key, default=None)
    with connect(config, client_options={"set_as_default": False}) as client:
        assert dask.config.get(key, default=None) == before  # only while starting
        client.wait_for_workers(1, timeout=30)
        assert set(client.run(os.environ.get, "DISTMIX_TEST_SETTING").values()) == {"seven"}


def test_cluster_closed_when_start_up_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[LocalCluster] = []

    class FailingToScale(LocalCluster):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

        def scale(self, n=0, **kwargs):
            if n:  # closing scales to 0: let that through
                raise RuntimeError("no room for workers")
            return super().scale(n, **kwargs)

    import distributed

    monkeypatch.setattr(distributed, "LocalCluster", FailingToScale)
    with pytest.raises(RuntimeError, match="no room"):
        connect(dict(QUIET_LOCAL, scale={"n": 2}))
    assert len(started) == 1
    assert started[0].status == Status.closed


def test_unknown_client_option_is_refused_before_starting() -> None:
    with pytest.raises(ClusterConfigError, match="client_options: unknown key client.timout"):
        connect(QUIET_LOCAL, client_options={"timout": 5})


# --------------------------------------------------------------------------- #
# an existing scheduler: `dask scheduler` + `dask worker` subprocesses        #
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory):
    """A `dask scheduler` and one `dask worker` on 127.0.0.1, as separate processes."""
    with dask_processes(tmp_path_factory.mktemp("scheduler"), n_workers=1) as cluster:
        assert cluster["address"].startswith(f"tcp://{LOOPBACK}:")
        yield cluster


def test_connect_to_scheduler_address(dask_scheduler) -> None:
    address = dask_scheduler["address"]
    with connect(address, client_options={"set_as_default": False}) as client:
        assert type(client) is Client  # nothing started, nothing owned
        assert client.scheduler.address == address
        assert _sum_on(client) == 49_995_000
    # closing our client left the cluster running: connect again, bare host:port
    assert dask_scheduler["process"].poll() is None
    with connect(address.removeprefix("tcp://")) as client:
        assert _sum_on(client) == 49_995_000


@pytest.mark.parametrize("key", ["address", "scheduler_file"])
def test_scheduler_config_connects(dask_scheduler, key: str) -> None:
    bundled = load_config("scheduler")
    config = dataclasses.replace(bundled, cluster={key: str(dask_scheduler[key])})
    with connect(config, client_options={"set_as_default": False}) as client:
        assert type(client) is Client
        assert client.scheduler.address == dask_scheduler["address"]
        assert _sum_on(client) == 49_995_000
    assert dask_scheduler["process"].poll() is None


# --------------------------------------------------------------------------- #
# SLURM / PBS job scripts (dask-jobqueue, nothing submitted)                  #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_script_renders_configured_resources(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("dask_jobqueue")
    from dask.utils import parse_bytes

    monkeypatch.chdir(tmp_path)
    config = load_config(kind)
    options = config.cluster
    script = render_job_script(kind)
    assert list(tmp_path.iterdir()) == []  # no log directory created by the preview
    assert script.startswith("#!")
    assert f"--nworkers {options['processes']}" in script
    assert f"--nthreads {options['cores'] // options['processes']}" in script
    for line in (*options["job_extra_directives"], *options["job_script_prologue"]):
        assert line in script
    assert options["log_directory"] in script
    memory_gib = parse_bytes(options["memory"]) // 2**30
    if kind == "slurm":
        expected = [
            f"#SBATCH --cpus-per-task={options['cores']}",
            f"#SBATCH --mem={memory_gib}G",
            f"#SBATCH -t {options['walltime']}",
            f"#SBATCH -p {options['queue']}",
            f"#SBATCH -A {options['account']}",
        ]
    else:
        expected = [
            f"#PBS -l {options['resource_spec']}",
            f"#PBS -l walltime={options['walltime']}",
            f"#PBS -q {options['queue']}",
            f"#PBS -A {options['account']}",
        ]
    for line in expected:
        assert line in script.splitlines(), (line, script)


def test_pbs_job_script_without_resource_spec_asks_for_cores_and_memory() -> None:
    pytest.importorskip("dask_jobqueue")
    script = render_job_script(
        {
            "type": "pbs",
            "cluster": {"cores": 6, "memory": "12GiB", "walltime": "00:30:00", "queue": "q1"},
            "scale": {"jobs": 1},
        }
    )
    assert "ncpus=6" in script
    assert "#PBS -l walltime=00:30:00" in script
    assert "#PBS -q q1" in script


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_script_equals_dask_jobqueue_own(kind: str, tmp_path: Path) -> None:
    """Oracle: the script of a real (never scaled) dask-jobqueue cluster whose
    scheduler listens on 127.0.0.1, with its address put back to the placeholder."""
    pytest.importorskip("dask_jobqueue")
    config = load_config(kind)
    options = dict(config.cluster, log_directory=str(tmp_path / "logs"))
    options["scheduler_options"] = {"host": LOOPBACK, "dashboard_address": f"{LOOPBACK}:0"}
    ours = render_job_script(dataclasses.replace(config, cluster=options))
    with cluster_class(config)(**options) as cluster:
        theirs = cluster.job_script().replace(
            cluster.scheduler_address, dmc.JOB_SCRIPT_SCHEDULER_PLACEHOLDER
        )
    assert ours == theirs


def test_job_script_errors() -> None:
    with pytest.raises(ClusterConfigError, match="slurm and pbs configs only"):
        render_job_script("local")
    pytest.importorskip("dask_jobqueue")
    bad = {
        "type": "slurm",
        "cluster": {"cores": 1, "memory": "1GiB", "no_such_option": 3},
        "scale": {"jobs": 1},
    }
    with pytest.raises(
        ClusterConfigError, match="<mapping>: dask-jobqueue rejects.*no_such_option"
    ):
        render_job_script(bad)


# --------------------------------------------------------------------------- #
# GPUs                                                                        #
# --------------------------------------------------------------------------- #
@pytest.mark.gpu
def test_local_cuda_cluster_runs() -> None:
    pytest.importorskip("dask_cuda", exc_type=ImportError)
    cupy = pytest.importorskip("cupy", exc_type=ImportError)
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        n_gpus = 0
    if n_gpus == 0:
        pytest.skip("no CUDA device")
    config = load_config("local-cuda")
    options = dict(config.cluster, n_workers=1, dashboard_address=f"{LOOPBACK}:0")
    with connect(dataclasses.replace(config, cluster=options)) as client:
        assert client.scheduler.address.startswith(f"tcp://{LOOPBACK}:")
        assert _sum_on(client) == 49_995_000
