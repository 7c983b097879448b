"""The ``distmix`` command (a leaf: nothing imports it).

``distmix demo`` generates a Gaussian-mixture dataset as a Zarr array, starts a
local Dask cluster on 127.0.0.1, fits a GaussianMixture over the Zarr blocks and
compares the result with the parameters the data were drawn from.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import dask.array as da
    import numpy as np
    import zarr
    from distributed import Client, LocalCluster
    from scipy.optimize import linear_sum_assignment

    from distmix.datasets import TrueMixture, write_zarr
    from distmix.estimator import GaussianMixture

    with tempfile.TemporaryDirectory(prefix="distmix-demo-") as tmp:
        path = args.path or str(Path(tmp) / "demo.zarr")
        start = time.perf_counter()
        write_zarr(
            path,
            args.rows,
            args.features,
            args.components,
            seed=args.seed,
            chunk_rows=args.chunk_rows,
        )
        size_mib = args.rows * args.features * 8 / 2**20
        print(
            f"generated {args.rows:,} rows × {args.features} features ({size_mib:.0f} MiB) "
            f"from a {args.components}-component mixture at {path} "
            f"in {time.perf_counter() - start:.1f}s"
        )
        array = zarr.open_array(path, mode="r")
        truth = TrueMixture.from_attrs(array.attrs)
        with (
            LocalCluster(
                n_workers=args.workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            print(
                f"local Dask cluster: {args.workers} worker processes at "
                f"{client.scheduler.address}, dashboard {client.dashboard_link}"
            )
            X = da.from_zarr(array)
            print(f"fitting over {X.numblocks[0]} blocks of {args.chunk_rows:,} rows")
            model = GaussianMixture(
                args.components, random_state=args.seed, verbose=2, verbose_interval=1, tol=args.tol
            )
            start = time.perf_counter()
            model.fit(X)
            seconds = time.perf_counter() - start
        order = linear_sum_assignment(
            np.linalg.norm(truth.means[:, None, :] - model.means_[None, :, :], axis=2)
        )[1]
        mean_err = np.abs(model.means_[order] - truth.means).max()
        weight_err = np.abs(model.weights_[order] - truth.weights).max()
        cov_err = np.abs(model.covariances_[order] - truth.covariances).max()
        print(
            f"fit: {model.n_iter_} iterations in {seconds:.1f}s, converged={model.converged_}, "
            f"mean log-likelihood {model.lower_bound_:.4f}"
        )
        print(
            f"recovery vs the true mixture: max |Δmean| {mean_err:.3g}, "
            f"max |Δweight| {weight_err:.3g}, max |Δcovariance| {cov_err:.3g}"
        )
        ok = mean_err < 0.1 and weight_err < 0.02 and cov_err < 0.2
        print("demo OK" if ok else "demo: the fit did not recover the true mixture")
        return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distmix",
        description="Gaussian mixtures fitted by EM on data that do not fit on one machine.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="generate a Zarr dataset, fit it on a local Dask cluster, check recovery",
        description=(
            "Generate a Gaussian-mixture dataset as a Zarr array (chunk by chunk), start a "
            "local Dask cluster on 127.0.0.1, fit distmix.GaussianMixture over the Zarr "
            "blocks and compare the fit with the true parameters."
        ),
    )
    demo.add_argument("--rows", type=int, default=400_000, help="number of rows (default 400,000)")
    demo.add_argument("--features", type=int, default=8, help="number of features (default 8)")
    demo.add_argument("--components", type=int, default=4, help="mixture components (default 4)")
    demo.add_argument("--chunk-rows", type=int, default=50_000, help="rows per Zarr chunk")
    demo.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed for data and fit")
    demo.add_argument("--tol", type=float, default=1e-4, help="convergence tolerance")
    demo.add_argument(
        "--path", help="where to write the Zarr array (default: a temporary directory)"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
