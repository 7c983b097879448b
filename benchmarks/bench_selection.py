"""Many models per pass, out of core: what 16 candidates (or 10 restarts) cost per iteration.

What is measured
----------------
A Zarr array of rows × features (float64), larger than the total memory limit of
the workers of a ``distributed.LocalCluster`` (separate processes, one thread
each, on 127.0.0.1), so that every pass reads every block from the store. Side by
side, interleaved over ``--repeats`` rounds (medians):

``one``
    One EM iteration's E-step of one candidate (K = 8, full): one read of
    every block, one model's E-step on it, the tree sum.
``grid``
    The E-step of the 16 candidates of a selection (K = 1..8 × full, diag) in one
    pass: ``engine.reduce("estep_many", 16 models)``, what ``distmix.select`` runs
    per iteration.
``restarts``
    Ten restarts of the K = 8 full model in one pass (``n_init=10``).
``read``
    ``X.sum().compute()``: the least any pass can cost.

The E-step arithmetic alone is timed in memory (this process, as many threads as
the cluster has workers, blocks of the workers' size), per row, for one model and
for the 16 (and the 10):
``extra = (in-memory many − in-memory one) × rows``, the compute the other
models add to a pass. The target: ``grid ≤ 1.5 × one + extra``, i.e. the read is
shared (running the 16 candidates one after another would cost ``16 × one``).
The same is reported for the ten restarts, with their time ratio to one.

Usage
-----
::

    python benchmarks/bench_selection.py --quick   # 2 workers × 512 MiB, 2 GiB of rows
    python benchmarks/bench_selection.py           # 2 workers × 1 GiB, 4 GiB of rows
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import dask
import numpy as np
from _machine import cpu_model, load_average
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

from distmix.datasets import write_zarr
from distmix.engines import DaskEngine, LocalEngine
from distmix.params import Params
from distmix.sources.dataset import open_dataset


def models(X_sample: np.ndarray, grid: list[tuple[int, str]], seed: int) -> tuple[Params, ...]:
    """One Params per candidate: means drawn among the sample's rows, unit covariances."""
    rng = np.random.default_rng(seed)
    d = X_sample.shape[1]
    out = []
    for k, covariance_type in grid:
        means = X_sample[rng.choice(len(X_sample), size=k, replace=False)]
        covariances = {
            "full": np.broadcast_to(np.eye(d), (k, d, d)).copy(),
            "diag": np.ones((k, d)),
        }[covariance_type]
        out.append(
            Params.from_covariances(np.full(k, 1.0 / k), means, covariances, covariance_type)
        )
    return tuple(out)


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default=None, help="per worker (default 1GiB)")
    parser.add_argument("--data-factor", type=float, default=2.0, help="data / total memory")
    parser.add_argument("--chunk-rows", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the Zarr array goes (a temp dir)")
    args = parser.parse_args()
    limit = parse_bytes(args.memory_limit or ("512MiB" if args.quick else "1GiB"))
    d = args.features
    rows = int(args.data_factor * args.workers * limit / (8 * d))
    rows -= rows % args.chunk_rows
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load before {load_average()}")
    root = tempfile.mkdtemp(prefix="dmx-selection-", dir=args.dir)
    path = os.path.join(root, "rows.zarr")
    try:
        began = time.perf_counter()
        write_zarr(path, rows, d, 8, seed=0, chunk_rows=args.chunk_rows, overwrite=True)
        size = rows * d * 8 / 2**30
        print(
            f"data: {rows:,} rows × {d} ({size:.2f} GiB, {rows // args.chunk_rows} chunks) "
            f"written in {time.perf_counter() - began:.1f}s; workers {args.workers} × "
            f"{limit / 2**20:.0f} MiB ({size * 2**30 / (args.workers * limit):.1f}× their memory)"
        )
        X = open_dataset(path)
        sample = np.asarray(X[: args.chunk_rows].compute())
        grid = [(k, t) for t in ("full", "diag") for k in range(1, 9)]
        candidates = models(sample, grid, 0)
        restarts = models(sample, [(8, "full")] * 10, 1)
        one = restarts[:1]

        # in memory: the E-step arithmetic per row, on as many threads as the cluster has
        # workers (its cores), on blocks of the workers' size (a chunk each). Two cores do
        # not give twice one core's arithmetic (measured: 1.26x for the 16 candidates), so
        # one thread's figure divided by the workers would understate it
        blocks = np.asarray(X[: 2 * args.workers * args.chunk_rows].compute())
        local = LocalEngine(blocks, block_size=args.chunk_rows, n_threads=args.workers)
        local.reduce("estep_many", one)  # warm-up (compiled kernels)
        per_row = {}
        for name, chosen in (("one", one), ("grid", candidates), ("restarts", restarts)):
            per_row[name] = statistics.median(
                timed(lambda c=chosen: local.reduce("estep_many", c)) for _ in range(5)
            ) / len(blocks)
        extra = {name: (per_row[name] - per_row["one"]) * rows for name in ("grid", "restarts")}

        with (
            dask.config.set({"distributed.worker.memory.spill": False}),
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                memory_limit=limit,
                host="127.0.0.1",
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            # blocks checked against the workers' memory for the largest model (K = 8, full)
            engine = DaskEngine(
                X, scheduler=client, persist=False, n_components=8, covariance_type="full"
            )
            contenders = {
                "read": lambda: X.sum().compute(),
                "one": lambda: engine.reduce("estep_many", one),
                "grid": lambda: engine.reduce("estep_many", candidates),
                "restarts": lambda: engine.reduce("estep_many", restarts),
            }
            for fn in contenders.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for r in range(args.repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    times[name].append(timed(contenders[name]))
        median = {name: statistics.median(values) for name, values in times.items()}
        print()
        print(f"per pass over {rows:,} rows, medians of {args.repeats} (seconds)")
        header = f"{'pass':>10} {'median':>8} {'spread':>7}   all"
        print(header)
        print("-" * len(header))
        for name, values in times.items():
            spread = max(values) / min(values)
            shown = " ".join(f"{v:.2f}" for v in values)
            print(f"{name:>10} {median[name]:>8.2f} {spread:>7.2f}   {shown}")
        print()
        print(
            f"in memory, {args.workers} threads, per 1,000,000 rows: one model "
            f"{per_row['one'] * 1e6:.2f}s, 16 candidates {per_row['grid'] * 1e6:.2f}s, "
            f"10 restarts {per_row['restarts'] * 1e6:.2f}s"
        )
        for name, n_models in (("grid", 16), ("restarts", 10)):
            bound = 1.5 * median["one"] + extra[name]
            verdict = "PASS" if median[name] <= bound else "MISS"
            ratio = median[name] / median["one"]
            print(
                f"{name}: {median[name]:.2f}s per pass against 1.5 × one + extra compute "
                f"= 1.5 × {median['one']:.2f} + {extra[name]:.2f} = "
                f"{bound:.2f}s: {verdict}; {n_models} models one after another would take "
                f"~{n_models * median['one']:.2f}s; ratio to one model {ratio:.2f}"
            )
        print(f"load after: {load_average()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
