"""Streaming: fit a Zarr array that grows, reading every row once.

``distmix.fit_stream`` fits by stepwise online EM: it reads the array's
blocks (whole Zarr chunks) a window at a time and updates the model after
each window, so a pass costs about one batch-EM iteration and memory stays at
a window of blocks. With ``checkpoint=`` it records the stream after every
update, and with ``resume=True`` the same call continues it: after a crash,
from where it stopped; after rows were appended to the array, with only the
new rows. That makes "rerun the same call whenever data arrive" a complete
ingestion loop.

This example writes a Zarr array (``distmix.datasets.write_zarr``), streams
it, appends rows drawn from the same mixture (``zarr.Array.append``, as an
ingestion job would), streams again with the same call, and prints
``n_samples_seen_`` before and after: the second call reads only the appended
rows. ``validation=`` gives held-out rows whose mean log-likelihood is
recorded as the stream goes (``stream_history_``).

Run
---
A few seconds (files in a temporary directory deleted at the end)::

    python examples/streaming_growing_array.py

Full size (2,000,000 × 16 rows, then 500,000 more, K = 8; 300 MiB kept in
``stream/``)::

    python examples/streaming_growing_array.py --rows 2_000_000 --append-rows 500_000 \\
        --features 16 --components 8 --chunk-rows 50_000 --dir stream
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import distmix
from distmix.datasets import TrueMixture, write_zarr


def draw_rows(truth: TrueMixture, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    """``n_rows`` rows of the mixture ``truth``: ``μ_k + L_k z`` for a drawn component k."""
    labels = rng.choice(len(truth.weights), size=n_rows, p=truth.weights)
    rows = rng.standard_normal((n_rows, truth.means.shape[1]))
    for k, cholesky in enumerate(np.linalg.cholesky(truth.covariances)):
        mine = labels == k
        rows[mine] = truth.means[k] + rows[mine] @ cholesky.T
    return rows


def mean_log_likelihood(truth: TrueMixture, rows: np.ndarray) -> float:
    """The mean log-likelihood of ``rows`` under the true mixture: what a fit aims at."""
    per_component = [
        np.log(weight) + multivariate_normal(mean, covariance).logpdf(rows)
        for weight, mean, covariance in zip(
            truth.weights, truth.means, truth.covariances, strict=True
        )
    ]
    return float(logsumexp(per_component, axis=0).mean())


def stream(path: Path, held_out: np.ndarray, args: argparse.Namespace) -> distmix.GaussianMixture:
    """The one call that ingests ``path``: run it again whenever the array has grown."""
    start = time.perf_counter()
    model = distmix.fit_stream(
        str(path),
        n_components=args.components,
        random_state=args.seed,
        checkpoint=path.with_name("stream-checkpoint.npz"),
        resume=True,  # continue the stream the checkpoint records, if there is one
        validation=held_out,
    )
    held_out_log_likelihood = model.stream_history_[-1]["validation_log_likelihood"]
    print(
        f"  {model.n_steps_} updates so far, n_samples_seen_ = {model.n_samples_seen_:,} "
        f"({time.perf_counter() - start:.1f}s); held-out mean log-likelihood "
        f"{held_out_log_likelihood:.4f}"
    )
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000, help="rows at first (default 40,000)")
    parser.add_argument(
        "--append-rows", type=int, default=10_000, help="rows appended later (default 10,000)"
    )
    parser.add_argument(
        "--held-out-rows", type=int, default=5_000, help="validation rows (default 5,000)"
    )
    parser.add_argument("--features", type=int, default=4, help="features (default 4)")
    parser.add_argument("--components", type=int, default=3, help="components (default 3)")
    parser.add_argument(
        "--chunk-rows", type=int, default=2_000, help="rows per Zarr chunk (default 2,000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and fit")
    parser.add_argument(
        "--dir", type=Path, help="a new directory to keep the files in (default: a temporary one)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="distmix-stream-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=args.dir is None)
        path = directory / "growing.zarr"
        write_zarr(str(path), args.rows, args.features, args.components, args.seed, args.chunk_rows)
        truth = TrueMixture.from_attrs(zarr.open_array(str(path), mode="r").attrs)
        print(f"{path}: {args.rows:,} rows in chunks of {args.chunk_rows:,}")
        rng = np.random.default_rng([args.seed, 1])
        held_out = draw_rows(truth, args.held_out_rows, rng)
        print(
            f"{args.held_out_rows:,} held-out rows: mean log-likelihood "
            f"{mean_log_likelihood(truth, held_out):.4f} under the true mixture"
        )
        print("streaming it")
        before = stream(path, held_out, args).n_samples_seen_

        zarr.open_array(str(path), mode="a").append(draw_rows(truth, args.append_rows, rng))
        print(f"appended {args.append_rows:,} rows; the same call again")
        after = stream(path, held_out, args).n_samples_seen_

    print(f"n_samples_seen_ before the append: {before:,}, after: {after:,}")
    if after - before == args.append_rows:
        print(f"OK: the second stream read only the {args.append_rows:,} appended rows")
        return 0
    print(f"FAILED: the second stream read {after - before:,} rows")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
