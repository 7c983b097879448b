"""Existing scheduler: fit a dask array on a Dask cluster that is already running.

Connects to the scheduler at ``--scheduler`` (``distmix.cluster.connect``
with its address; closing that client leaves the cluster running), fits
``distmix.GaussianMixture`` to a dask array whose blocks live on the workers,
predicts the component of every row (a lazy dask array, computed on the
cluster only when asked), saves the model to a file and loads it back.

The data are ``--data``, a Zarr array the workers can read (a path on a file
system they share, or a URL such as ``s3://bucket/data.zarr``), or, by default,
rows drawn from a mixture by the workers themselves: only the task graph is
sent from here, never rows. The workers need distmix installed, at the same
version as here.

Without ``--scheduler``, a ``distributed.LocalCluster`` on 127.0.0.1 stands
in for the existing cluster, and the example connects to it by its address,
exactly as it would to a remote one.

Run
---
A few seconds (a stand-in cluster of two workers)::

    python examples/existing_scheduler.py

Full size, on a cluster (start one with ``dask scheduler`` and
``dask worker tcp://HOST:8786`` on each machine)::

    python examples/existing_scheduler.py --scheduler tcp://HOST:8786 \\
        --rows 50_000_000 --features 16 --components 8 --chunk-rows 500_000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import LocalCluster

import distmix
import distmix.cluster
from distmix.sources.dataset import open_dataset


def rows_drawn_on_the_workers(
    n_rows: int, n_features: int, n_components: int, chunk_rows: int, seed: int
) -> da.Array:
    """A lazy dask array of rows from a mixture of unit-covariance Gaussians.

    Each block is drawn by the worker that computes it, from its own seeded
    random stream: the graph holds the seed and the (small) means, not rows.
    """
    means = np.random.default_rng(seed).normal(scale=5.0, size=(n_components, n_features))
    rng = da.random.default_rng(seed)
    labels = rng.integers(0, n_components, size=n_rows, chunks=chunk_rows)
    noise = rng.standard_normal((n_rows, n_features), chunks=(chunk_rows, n_features))
    return da.from_array(means)[labels] + noise


def fit_on(address: str, args: argparse.Namespace) -> bool:
    """Connect to the scheduler at ``address``, fit, predict, save, load; whether all agreed."""
    with distmix.cluster.connect(address) as client:
        workers = client.scheduler_info()["workers"].values()
        threads = sum(worker["nthreads"] for worker in workers)
        print(f"connected to {address}: {len(workers)} workers, {threads} threads")

        if args.data:
            X = open_dataset(args.data)  # read by the workers, one Zarr chunk per block
        else:
            X = rows_drawn_on_the_workers(
                args.rows, args.features, args.components, args.chunk_rows, args.seed
            )
        print(f"data: {X.shape[0]:,} rows × {X.shape[1]} features in {X.numblocks[0]} blocks")

        start = time.perf_counter()
        model = distmix.GaussianMixture(args.components, random_state=args.seed).fit(X)
        print(
            f"fit: {model.n_iter_} iterations in {time.perf_counter() - start:.1f}s, "
            f"mean log-likelihood {model.lower_bound_:.4f}"
        )

        labels = model.predict(X)  # dask in, dask out: nothing is computed yet
        print(f"predict returned a lazy {type(labels).__module__}.{type(labels).__name__}")
        # counted on the cluster: only the K counts come back, not a label per row
        counts = da.bincount(labels, minlength=args.components).compute()
        print(f"rows per component: {counts.tolist()}")

        with tempfile.TemporaryDirectory(prefix="distmix-model-") as tmp:
            path = args.out or Path(tmp) / "model.npz"
            model.save(path, overwrite=args.out is not None)
            loaded = distmix.load(path)
            same = bool((loaded.predict(X) == labels).all().compute())
            print(f"saved to {path} and loaded back: the same labels for every row: {same}")
    return same


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="address of the running scheduler (default: start a LocalCluster as a stand-in)",
    )
    parser.add_argument(
        "--data",
        metavar="ZARR",
        help="a Zarr array (path or URL) the workers can read (default: rows drawn on the workers)",
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows (default 100,000)")
    parser.add_argument("--features", type=int, default=4, help="features (default 4)")
    parser.add_argument("--components", type=int, default=3, help="components (default 3)")
    parser.add_argument(
        "--chunk-rows", type=int, default=10_000, help="rows per block (default 10,000)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="workers of the stand-in cluster (default 2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and fit")
    parser.add_argument("--out", type=Path, help="keep the model file here (replaced if it exists)")
    args = parser.parse_args(argv)

    if args.scheduler:
        same = fit_on(args.scheduler, args)
    else:
        with LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster:
            print(f"no --scheduler: started a stand-in LocalCluster at {cluster.scheduler_address}")
            same = fit_on(cluster.scheduler_address, args)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
