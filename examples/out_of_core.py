"""Out of core: fit a Zarr array on a local Dask cluster and check it against the truth.

Writes a dataset drawn from a known Gaussian mixture as a Zarr array, chunk by
chunk (``distmix.datasets.write_zarr``; the true parameters go into the
array's attributes), starts the bundled ``local`` cluster config (a Dask
``LocalCluster`` of worker processes on 127.0.0.1), and fits
``distmix.GaussianMixture`` over the Zarr blocks: every EM iteration, each
worker reads its blocks, reduces them to sufficient statistics and drops them,
so memory stays at a few blocks whatever the number of rows. The fit is then
compared with the mixture the rows were drawn from, component by component.

Exits with status 0 when every fitted parameter lies within a few standard
errors of the true one. ``distmix demo`` runs this same code (with a larger
default size).

Run
---
A few seconds (40,000 rows, in a temporary directory deleted at the end)::

    python examples/out_of_core.py

Full size (10,000,000 × 16 = 1.2 GiB on disk, K = 8, four workers; keep the
array with ``--path``)::

    python examples/out_of_core.py --rows 10_000_000 --features 16 --components 8 \\
        --chunk-rows 250_000 --workers 4 --path big.zarr
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.optimize import linear_sum_assignment

import distmix
import distmix.cluster
from distmix.datasets import TrueMixture, write_zarr
from distmix.sources.dataset import open_dataset

#: how far a fitted parameter may lie from the true one, in standard errors
ALLOWED_STANDARD_ERRORS = 6.0


def write_dataset(
    path: Path, rows: int, features: int, components: int, chunk_rows: int, seed: int
) -> None:
    """Write the dataset all or nothing: into a hidden directory beside ``path``,
    renamed onto ``path`` once complete, so that an interrupted run leaves no
    half-written array there (at worst a hidden ``.NAME.tmp-…`` to delete)."""
    if path.exists():
        raise FileExistsError(f"{path} already exists: delete it or choose another --path")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent} does not exist: create it first")
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        start = time.perf_counter()
        write_zarr(str(staging), rows, features, components, seed, chunk_rows, overwrite=True)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = rows * features * 8 / 2**20
    print(
        f"wrote {rows:,} rows × {features} features ({size:,.0f} MiB) of a {components}-component "
        f"mixture to {path} in {time.perf_counter() - start:.1f}s; the true parameters are in "
        "its attributes"
    )


def standard_errors(truth: TrueMixture, n_rows: int) -> tuple[np.ndarray, ...]:
    """Standard errors of the weights, means and covariances estimated from ``n_rows`` rows.

    Those of the sample proportion, mean and covariance of each component's
    ``n_k = w_k · n_rows`` rows: ``√(w(1−w)/n)``, ``√(Σ_ii/n_k)`` and
    ``√((Σ_ii Σ_jj + Σ_ij²)/n_k)`` (the sample covariance of Gaussian rows is a
    scaled Wishart matrix, whose entries have that variance). Well-separated
    components are fitted about as well as if each row's component were known.
    """
    weights, covariances = truth.weights, truth.covariances
    n_k = weights * n_rows
    variances = np.diagonal(covariances, axis1=1, axis2=2)  # (K, D)
    weight_se = np.sqrt(weights * (1 - weights) / n_rows)
    mean_se = np.sqrt(variances / n_k[:, None])
    products = variances[:, :, None] * variances[:, None, :] + covariances**2
    covariance_se = np.sqrt(products / n_k[:, None, None])
    return weight_se, mean_se, covariance_se


def compare_with_truth(model: distmix.GaussianMixture, truth: TrueMixture, n_rows: int) -> bool:
    """Print how far the fit lies from the truth; whether it recovered it."""
    # the fitted components come in any order: pair them with the true ones so that
    # the total distance between paired means is least (Hungarian algorithm)
    distances = np.linalg.norm(truth.means[:, None, :] - model.means_[None, :, :], axis=2)
    order = linear_sum_assignment(distances)[1]
    errors = (
        np.abs(model.weights_[order] - truth.weights),
        np.abs(model.means_[order] - truth.means),
        np.abs(model.covariances_[order] - truth.covariances),
    )
    errors_in_se = [e / se for e, se in zip(errors, standard_errors(truth, n_rows), strict=True)]
    worst = max(float(z.max()) for z in errors_in_se)
    weight_err, mean_err, cov_err = (float(e.max()) for e in errors)
    print(
        f"recovery vs the true mixture: max |Δmean| {mean_err:.3g}, max |Δweight| "
        f"{weight_err:.3g}, max |Δcovariance| {cov_err:.3g}; worst {worst:.1f} standard errors"
    )
    return worst < ALLOWED_STANDARD_ERRORS


def fit_on_local_cluster(path: Path, args: argparse.Namespace) -> bool:
    """Start the bundled ``local`` cluster, fit the Zarr array at ``path``, compare."""
    truth = TrueMixture.from_attrs(zarr.open_array(str(path), mode="r").attrs)
    # cluster_configs/local.yaml with this run's number of workers and a free dashboard port
    local = distmix.cluster.load_config("local")
    config = dataclasses.replace(
        local, cluster={**local.cluster, "n_workers": args.workers, "dashboard_address": ":0"}
    )
    with distmix.cluster.connect(config) as client:
        print(
            f"local Dask cluster: {args.workers} worker processes at "
            f"{client.scheduler.address}, dashboard {client.dashboard_link}"
        )
        X = open_dataset(path)  # a dask array, one block per Zarr chunk, checked for missing chunks
        blocks = X.numblocks[0]
        print(f"fitting over {blocks} block{'s' * (blocks > 1)} of up to {X.chunks[0][0]:,} rows")
        model = distmix.GaussianMixture(
            args.components, tol=args.tol, random_state=args.seed, verbose=2, verbose_interval=1
        )
        start = time.perf_counter()
        model.fit(X)  # one Dask compute per EM iteration
        seconds = time.perf_counter() - start
    print(
        f"fit: {model.n_iter_} iterations in {seconds:.1f}s, converged={model.converged_}, "
        f"mean log-likelihood {model.lower_bound_:.4f}"
    )
    return compare_with_truth(model, truth, args.rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Generate a Gaussian-mixture dataset as a Zarr array, fit it on a local "
        "Dask cluster over its blocks, and compare the fit with the true parameters."
    )
    parser.add_argument("--rows", type=int, default=40_000, help="number of rows (default 40,000)")
    parser.add_argument("--features", type=int, default=8, help="number of features (default 8)")
    parser.add_argument("--components", type=int, default=4, help="mixture components (default 4)")
    parser.add_argument(
        "--chunk-rows", type=int, default=5_000, help="rows per Zarr chunk (default 5,000)"
    )
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for data and fit")
    parser.add_argument("--tol", type=float, default=1e-4, help="convergence tolerance")
    parser.add_argument(
        "--path",
        type=Path,
        help="where to write the Zarr array, which is kept (default: a temporary directory)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distmix-out-of-core-") as tmp:
        path = args.path or Path(tmp) / "data.zarr"
        write_dataset(path, args.rows, args.features, args.components, args.chunk_rows, args.seed)
        recovered = fit_on_local_cluster(path, args)
    if recovered:
        print(
            "OK: the fit recovered the true mixture "
            f"(within {ALLOWED_STANDARD_ERRORS:g} standard errors)"
        )
        return 0
    print("FAILED: the fit did not recover the true mixture")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
