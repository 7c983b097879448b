"""Checkpoint and resume: kill a fit, resume it, get exactly the uninterrupted result.

``GaussianMixture(checkpoint=PATH)`` writes the state of the fit to ``PATH``
after every EM iteration, atomically (a crash leaves the previous iteration's
file, never a partial one). ``resume=True`` continues the fit that file
records, and the result is exactly that of a fit never interrupted: a killed
process loses at most the iteration it was running.

This example runs a fit with ``checkpoint=`` in a child Python process and
kills it with SIGKILL (no clean-up, as in a crash or a pre-empted job) as soon
as its checkpoint exists; resumes it here with ``resume=True``; fits again
without interruption; and compares the two, which must be equal to the last
bit. (``init_params="random"`` and a small ``tol`` make the fit take some
twenty iterations, long enough to be interrupted.)

A checkpoint belongs to its data: it records a fingerprint of the values it
was fitted on, and resuming on other values (another array of the same shape,
a rewritten row) is refused before anything is written. The example changes
one value of the array and shows the refusal.

Run
---
A few seconds (files in a temporary directory deleted at the end)::

    python examples/checkpoint_resume.py

Full size (20,000,000 × 16 = 2.4 GiB kept in ``ckpt/``)::

    python examples/checkpoint_resume.py --rows 20_000_000 --features 16 \\
        --chunk-rows 500_000 --dir ckpt
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import distmix
from distmix.datasets import write_zarr

#: the child process: the fit, with a checkpoint, that is about to be killed
CHILD = """
import json, sys
import distmix
path, settings = sys.argv[1], json.loads(sys.argv[2])
distmix.GaussianMixture(**settings).fit(path)
"""


def fit_and_kill(path: Path, settings: dict, checkpoint: Path) -> bool:
    """Run the fit in a child process, SIGKILL it once ``checkpoint`` exists.

    Returns whether it was killed (``False``: it finished first).
    """
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(path),
            json.dumps({**settings, "checkpoint": str(checkpoint)}),
        ]
    )
    start = time.perf_counter()
    while not checkpoint.exists() and child.poll() is None:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    seconds = time.perf_counter() - start
    if child.returncode != -signal.SIGKILL:
        print(f"the fit ended (status {child.returncode}) before it could be killed")
        return False
    print(f"killed the fit with SIGKILL {seconds:.1f}s after it started, its checkpoint written")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows (default 200,000)")
    parser.add_argument("--features", type=int, default=8, help="features (default 8)")
    parser.add_argument("--components", type=int, default=5, help="components (default 5)")
    parser.add_argument(
        "--chunk-rows", type=int, default=20_000, help="rows per Zarr chunk (default 20,000)"
    )
    parser.add_argument("--tol", type=float, default=1e-5, help="convergence tolerance")
    parser.add_argument("--seed", type=int, default=0, help="random seed of data and fit")
    parser.add_argument(
        "--dir", type=Path, help="a new directory to keep the files in (default: a temporary one)"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="distmix-checkpoint-") as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=args.dir is None)
        path = directory / "data.zarr"
        write_zarr(str(path), args.rows, args.features, args.components, args.seed, args.chunk_rows)
        print(f"{path}: {args.rows:,} rows × {args.features} features")

        # everything that defines the fit; the same for the three fits below
        settings = dict(
            n_components=args.components,
            init_params="random",
            tol=args.tol,
            max_iter=1000,
            random_state=args.seed,
        )
        checkpoint = directory / "fit-checkpoint.npz"
        if not fit_and_kill(path, settings, checkpoint):
            print("FAILED: nothing was interrupted; give the fit more --rows")
            return 1

        start = time.perf_counter()
        uninterrupted = distmix.GaussianMixture(**settings).fit(str(path))
        print(
            f"uninterrupted fit: {uninterrupted.n_iter_} iterations "
            f"in {time.perf_counter() - start:.1f}s"
        )
        start = time.perf_counter()
        resumed = distmix.GaussianMixture(**settings, checkpoint=checkpoint, resume=True)
        resumed.fit(str(path))
        print(
            f"resumed from {checkpoint.name}: {resumed.n_iter_} iterations in all, "
            f"finished in {time.perf_counter() - start:.1f}s"
        )

        identical = resumed.n_iter_ == uninterrupted.n_iter_ and all(
            np.array_equal(getattr(resumed, name), getattr(uninterrupted, name))
            for name in ("weights_", "means_", "covariances_", "lower_bounds_")
        )
        print(f"resumed == uninterrupted, bit for bit: {identical}")

        # the checkpoint is bound to the values it was fitted on: change one of them (as a
        # pipeline that rewrites a row would) and resuming is refused, the checkpoint untouched
        data = zarr.open_array(str(path), mode="r+")
        data[0, 0] += 1.0
        try:
            distmix.GaussianMixture(**settings, checkpoint=checkpoint, resume=True).fit(str(path))
            print("FAILED: the checkpoint was resumed on other data")
            return 1
        except ValueError as error:
            print(f"after one value of {path.name} changed, resuming is refused: {error}")

    if identical:
        print("OK: the interrupted and resumed fit equals the uninterrupted one")
        return 0
    print("FAILED: the resumed fit differs from the uninterrupted one")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
