"""In memory: distmix and scikit-learn, started from the same parameters, give the same fit.

Draws rows of a Gaussian mixture into a NumPy array, picks one set of starting
parameters (``weights_init``, ``means_init``, ``precisions_init``) and fits
both ``distmix.GaussianMixture`` and ``sklearn.mixture.GaussianMixture`` from
it with the same settings. distmix follows scikit-learn's EM step for step, so
both stop after the same number of iterations with the same parameters up to
floating-point rounding. distmix reads the array in row blocks on a thread
pool, adding their sufficient statistics; the code is the same as for a dask
array or a Zarr array that does not fit in memory.

Prints both fits' iterations and times and the largest difference between
their weights, means and covariances; exits with status 0 when they agree.

Run
---
A few seconds::

    python examples/in_memory_vs_sklearn.py

Full size (2,000,000 × 16, K = 8: about 250 MiB of rows, a minute or two)::

    python examples/in_memory_vs_sklearn.py --rows 2_000_000 --features 16 --components 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import sklearn.mixture

import distmix

#: the agreement asked for: EM from the same start differs only by rounding
TOLERANCE = 1e-8


def mixture_rows(n_rows: int, n_features: int, n_components: int, seed: int) -> np.ndarray:
    """Rows of a random mixture of well-separated Gaussians with random covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(n_components, n_features))
    # row = mean + A z with z standard normal: covariance A Aᵀ, one A per component
    mixing = np.eye(n_features) + rng.normal(size=(n_components, n_features, n_features)) / 3
    labels = rng.integers(n_components, size=n_rows)
    X = rng.standard_normal((n_rows, n_features))
    for k in range(n_components):
        mine = labels == k
        X[mine] = means[k] + X[mine] @ mixing[k].T
    return X


def starting_parameters(
    X: np.ndarray, n_components: int, covariance_type: str, seed: int
) -> dict[str, np.ndarray]:
    """A crude start, as scikit-learn's ``*_init`` parameters take it.

    Equal weights, means at random rows, and every component's precision the
    inverse of the covariance of all rows, in the shape ``covariance_type`` needs.
    """
    rng = np.random.default_rng(seed)
    precision = np.linalg.inv(np.cov(X, rowvar=False))
    precisions = {
        "full": np.repeat(precision[None], n_components, axis=0),
        "tied": precision,
        "diag": np.repeat(np.diag(precision)[None], n_components, axis=0),
        "spherical": np.full(n_components, np.diag(precision).mean()),
    }[covariance_type]
    return {
        "weights_init": np.full(n_components, 1.0 / n_components),
        "means_init": X[rng.choice(len(X), size=n_components, replace=False)],
        "precisions_init": precisions,
    }


def largest_difference(a: object, b: object) -> float:
    """The largest absolute difference between two fits' weights, means and covariances."""
    return max(
        float(np.max(np.abs(getattr(a, name) - getattr(b, name))))
        for name in ("weights_", "means_", "covariances_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows (default 100,000)")
    parser.add_argument("--features", type=int, default=4, help="features (default 4)")
    parser.add_argument("--components", type=int, default=3, help="components (default 3)")
    parser.add_argument(
        "--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"]
    )
    parser.add_argument("--tol", type=float, default=1e-4, help="convergence tolerance")
    parser.add_argument("--max-iter", type=int, default=200, help="EM iterations at most")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and start")
    args = parser.parse_args(argv)

    X = mixture_rows(args.rows, args.features, args.components, args.seed)
    settings = dict(
        n_components=args.components,
        covariance_type=args.covariance_type,
        tol=args.tol,
        max_iter=args.max_iter,
        **starting_parameters(X, args.components, args.covariance_type, args.seed),
    )
    print(f"{args.rows:,} rows × {args.features} features in memory, K = {args.components}")

    start = time.perf_counter()
    ours = distmix.GaussianMixture(**settings).fit(X)
    ours_seconds = time.perf_counter() - start
    print(f"distmix:      {ours.n_iter_} iterations in {ours_seconds:.2f}s")

    start = time.perf_counter()
    theirs = sklearn.mixture.GaussianMixture(**settings).fit(X)
    theirs_seconds = time.perf_counter() - start
    print(f"scikit-learn: {theirs.n_iter_} iterations in {theirs_seconds:.2f}s")

    difference = largest_difference(ours, theirs)
    print(f"max |difference| of weights, means and covariances: {difference:.2e}")
    if ours.n_iter_ == theirs.n_iter_ and difference < TOLERANCE:
        print("agree: the same iterations and the same parameters")
        return 0
    print(f"DISAGREE: more than {TOLERANCE:g} apart, or a different number of iterations")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
