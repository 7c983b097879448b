"""The ``distmix`` command (a leaf: nothing imports it).

=========  ================================================================
generate   write a synthetic Gaussian-mixture dataset as a Zarr array
fit        fit a GaussianMixture to a Zarr/NumPy dataset on a Dask cluster
predict    write the most probable component (or responsibilities) per row
score      mean log-likelihood, BIC and AIC of a model on a dataset
info       what a model file holds
demo       generate, fit on a local cluster and check recovery, in one go
=========  ================================================================

``distmix <command> --help`` explains each one's options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    import numpy as np
    import zarr
    from scipy.optimize import linear_sum_assignment

    from distmix.chunks import open_dataset
    from distmix.cluster import connect, load_config
    from distmix.datasets import TrueMixture
    from distmix.estimator import GaussianMixture

    with tempfile.TemporaryDirectory(prefix="distmix-demo-") as tmp:
        path = args.path or str(Path(tmp) / "demo.zarr")
        _write_dataset(path, args)
        array = zarr.open_array(path, mode="r")
        truth = TrueMixture.from_attrs(array.attrs)
        local = load_config("local")  # the bundled config, with the demo's size
        config = dataclasses.replace(
            local,
            cluster={**local.cluster, "n_workers": args.workers, "dashboard_address": ":0"},
        )
        with connect(config) as client:
            print(
                f"local Dask cluster: {args.workers} worker processes at "
                f"{client.scheduler.address}, dashboard {client.dashboard_link}"
            )
            X = open_dataset(path)
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


def _open_data(path: str) -> Any:
    """A dask array over ``path``: a Zarr array (path or fsspec URL) or a ``.npy`` file."""
    import dask.array as da
    import numpy as np

    if path.endswith(".npy"):
        if not Path(path).is_file():
            raise SystemExit(f"error: {path}: no such file.")
        array = np.load(path, mmap_mode="r")
        return da.from_array(
            array, chunks=(max(1, 2**23 // max(1, array.itemsize * array.shape[-1])), -1)
        )
    from distmix.chunks import open_dataset

    return open_dataset(path)


def _client(spec: str | None) -> Any:
    """A distributed client for ``--cluster`` (``threads``: none, Dask's threaded scheduler)."""
    if spec == "threads":
        return contextlib.nullcontext(None)
    from distmix.cluster import connect

    return connect(spec)


def _fit(args: argparse.Namespace) -> int:
    from distmix.estimator import GaussianMixture

    X = _open_data(args.data)
    model = GaussianMixture(
        args.components,
        covariance_type=args.covariance_type,
        tol=args.tol,
        reg_covar=args.reg_covar,
        max_iter=args.max_iter,
        n_init=args.n_init,
        init_params=args.init_params,
        random_state=args.random_state,
        verbose=0 if args.quiet else 2,
        verbose_interval=1,
        block_size=args.block_rows,
        split_every=args.split_every,
        checkpoint=args.checkpoint,
        resume=args.resume,
    )
    rows, features = X.shape
    print(f"{args.data}: {rows:,} rows × {features} features in {X.numblocks[0]} blocks")
    from distmix.engines.dask import show_progress

    progress = show_progress() if args.progress else contextlib.nullcontext()
    with _client(args.cluster) as client:
        if client is not None:
            print(f"Dask cluster at {client.scheduler.address}, dashboard {client.dashboard_link}")
        start = time.perf_counter()
        with progress:
            model.fit(X)
        seconds = time.perf_counter() - start
    status = "converged" if model.converged_ else "did not converge"
    print(
        f"{status} after {model.n_iter_} iterations in {seconds:.1f}s; "
        f"mean log-likelihood {model.lower_bound_:.6f}"
    )
    if args.out:
        model.save(args.out)
        print(f"model written to {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from distmix.estimator import load

    model = load(args.model)
    X = _open_data(args.data)
    result = model.predict_proba(X) if args.proba else model.predict(X)
    with _client(args.cluster):
        if args.out.endswith(".npy"):
            np.save(args.out, result.compute())
        else:
            result.to_zarr(args.out, overwrite=False)
    print(
        f"{'responsibilities' if args.proba else 'labels'} of {X.shape[0]:,} rows "
        f"written to {args.out}"
    )
    return 0


def _score(args: argparse.Namespace) -> int:
    from distmix.estimator import load

    model = load(args.model)
    X = _open_data(args.data)
    with _client(args.cluster):
        score = model.score(X)
    n = X.shape[0]
    k = model._params().n_parameters()
    print(f"mean log-likelihood {score:.6f}")
    print(f"BIC {-2 * score * n + k * np.log(n):.6f}")
    print(f"AIC {-2 * score * n + 2 * k:.6f}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from distmix.estimator import load

    model = load(args.model)
    print(
        f"{args.model}: GaussianMixture, {model.n_components} components × "
        f"{model.n_features_in_} features, covariance_type={model.covariance_type!r}"
    )
    print(
        f"fit: {model.n_iter_} iterations, converged={model.converged_}, "
        f"mean log-likelihood {model.lower_bound_:.6f}"
    )
    with np.printoptions(precision=4, suppress=True):
        for k in range(model.n_components):
            print(f"  component {k}: weight {model.weights_[k]:.4f}, mean {model.means_[k]}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    _write_dataset(args.out, args)
    return 0


def _write_dataset(path: str, args: argparse.Namespace) -> None:
    from distmix.datasets import write_zarr

    start = time.perf_counter()
    write_zarr(
        path, args.rows, args.features, args.components, seed=args.seed, chunk_rows=args.chunk_rows
    )
    size = args.rows * args.features * 8 / 2**20
    print(
        f"wrote {args.rows:,} rows × {args.features} features ({size:,.0f} MiB) of a "
        f"{args.components}-component mixture to {path} in {time.perf_counter() - start:.1f}s; "
        "the true parameters are in its attributes"
    )


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster",
        metavar="CONFIG_OR_ADDRESS",
        help="a cluster_configs YAML file or bundled name (local, slurm, ...), a scheduler "
        "address such as tcp://127.0.0.1:8786, or 'threads' for no cluster; default: a "
        "LocalCluster on this machine",
    )


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

    fit = commands.add_parser(
        "fit",
        help="fit a GaussianMixture to a dataset",
        description="Fit a Gaussian mixture by EM to DATA (a Zarr array path or URL, or a .npy "
        "file) on a Dask cluster, printing one line per iteration, and save the model.",
    )
    fit.add_argument("data", metavar="DATA", help="Zarr array (path or fsspec URL) or .npy file")
    fit.add_argument("--components", "-k", type=int, required=True, help="number of components")
    fit.add_argument(
        "--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"]
    )
    fit.add_argument("--out", "-o", metavar="MODEL", help="write the fitted model here (.npz)")
    _add_cluster(fit)
    fit.add_argument(
        "--max-iter", type=int, default=100, help="EM iterations at most (default 100)"
    )
    fit.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="stop when the mean log-likelihood changes less (default 1e-3)",
    )
    fit.add_argument("--n-init", type=int, default=1, help="initialisations; the best is kept")
    fit.add_argument(
        "--init-params",
        default="kmeans",
        choices=["kmeans", "k-means++", "random", "random_from_data"],
    )
    fit.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    fit.add_argument("--reg-covar", type=float, default=1e-6, help="added to covariance diagonals")
    fit.add_argument("--block-rows", type=int, help="rows per block (default: the Zarr chunks)")
    fit.add_argument("--split-every", type=int, default=8, help="fan-in of the reduction tree")
    fit.add_argument(
        "--checkpoint", metavar="PATH", help="write the fit's state here after every iteration"
    )
    fit.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint if it exists"
    )
    fit.add_argument("--quiet", "-q", action="store_true", help="no per-iteration lines")
    fit.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stdout.isatty(),
        help="a progress bar of the block reads of every pass (default: on a terminal)",
    )
    fit.set_defaults(run=_fit)

    predict = commands.add_parser("predict", help="labels or responsibilities of every row")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("data", metavar="DATA")
    predict.add_argument("--out", "-o", required=True, help="a .npy file or a new Zarr array")
    predict.add_argument("--proba", action="store_true", help="responsibilities instead of labels")
    _add_cluster(predict)
    predict.set_defaults(run=_predict)

    score = commands.add_parser("score", help="mean log-likelihood, BIC and AIC on a dataset")
    score.add_argument("model", metavar="MODEL")
    score.add_argument("data", metavar="DATA")
    _add_cluster(score)
    score.set_defaults(run=_score)

    info = commands.add_parser("info", help="what a model file holds")
    info.add_argument("model", metavar="MODEL")
    info.set_defaults(run=_info)

    generate = commands.add_parser(
        "generate",
        help="write a synthetic Gaussian-mixture dataset as a Zarr array",
        description="Write rows drawn from a random, well-separated Gaussian mixture to a new "
        "Zarr array, chunk by chunk (memory stays at one chunk); the true parameters are "
        "stored in the array's attributes.",
    )
    generate.add_argument("out", metavar="OUT.zarr")
    generate.add_argument("--rows", type=int, required=True)
    generate.add_argument("--features", type=int, required=True)
    generate.add_argument("--components", type=int, required=True)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--chunk-rows", type=int, default=65536)
    generate.set_defaults(run=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (ValueError, TypeError, OSError, ImportError) as error:
        # bad input, a corrupt or missing dataset, a model file refused: say what and
        # where in one line (nothing has been written: --out is saved only after a fit)
        print(f"distmix {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
