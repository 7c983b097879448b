"""Model selection: how many components, which covariance type, in one series of passes.

Draws rows of a known mixture (K = 4 components with full covariances) into a Zarr
array and lets ``distmix.select`` fit every candidate - 1 to 8 components, full
and diagonal covariances, two restarts each - as a dask array on the threaded
scheduler. Every EM iteration reads each block once for all the candidates still
going, and one last pass scores them all. It prints the table (log-likelihood,
parameters, BIC, AIC, ICL, iterations) and the one-line choice, draws the
criteria against K and the chosen model's components over a sample of rows
(``selection.png``, with matplotlib), and exits with status 0 when BIC picked the
true number and type.

Run
---
A few seconds::

    python examples/model_selection.py

Full size (2,000,000 × 16, K = 8; a few minutes)::

    python examples/model_selection.py --rows 2_000_000 --features 16 --components 8 --max-k 12
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import dask.array as da
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.datasets import write_zarr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--components", type=int, default=4, help="of the true mixture")
    parser.add_argument("--max-k", type=int, default=8, help="candidates 1..MAX_K")
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--path", default="selection.zarr")
    parser.add_argument("--plot", default="selection.png")
    args = parser.parse_args()

    write_zarr(
        args.path,
        args.rows,
        args.features,
        args.components,
        seed=0,
        chunk_rows=args.chunk_rows,
        overwrite=True,
    )
    X = da.from_zarr(args.path)
    print(f"{args.path}: {args.rows:,} rows × {args.features} features in {X.numblocks[0]} chunks")

    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        selection = distmix.select(
            X, range(1, args.max_k + 1), ("full", "diag"), n_init=2, random_state=0
        )
    seconds = time.perf_counter() - began
    print(selection.table())
    print(selection.explanation)
    print(f"{2 * args.max_k} candidates × 2 restarts in {seconds:.1f}s")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'distmix[plot]')")
    else:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
        distmix.plot.criteria(selection, ax=left, names=("bic", "icl"))
        distmix.plot.components(selection.best_estimator_, X, ax=right, sample=3_000)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")

    best = selection.best_estimator_
    if (best.n_components, best.covariance_type) != (args.components, "full"):
        print(f"FAILED: expected K={args.components} full")
        return 1
    print(f"OK: BIC picked the true mixture (K={args.components}, full covariances)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
