"""Utility of differentially private fits: held-out log-likelihood against ε.

What is measured
----------------
Rows of a known mixture (``distmix.datasets.random_mixture``: 16 features,
K = 8, separation 8; ``--rows`` rows, default 1,000,000) are fitted

* without privacy: ``GaussianMixture(8).fit(X)`` (k-means‖ start, EM to
  convergence), and
* with privacy, for each ε in ``--epsilons`` (δ = ``--delta``, default 1e-6):
  ``GaussianMixture(8, max_iter=T, privacy=Privacy(ε, δ, B, x0), means_init=…)``,
  ``T = --iterations`` noisy iterations (default 10), ``--repeats`` times (the
  noise differs each time; medians reported).

Everything a private fit is given besides the rows is public: the clipping
centre ``x0`` and radius ``B`` and the start come from a *public sample* of
``--public-rows`` rows drawn from the same mixture with another seed (its mean,
the ``--coverage`` quantile of its rows' distances to it, and a quick non-private
fit on it for the starting means, weights and precisions). Every fit is scored
on ``--held-out-rows`` rows drawn with a third seed (``model.score``, mean
log-likelihood per row). The table gives per ε the held-out log-likelihood, the
gap to the non-private fit (target: within 0.1 nats/row) and the noise; the
start's and the true mixture's scores bracket them. With matplotlib installed,
``--plot FILE`` draws the curve.

Usage
-----
::

    python benchmarks/bench_privacy.py --quick        # 100,000 rows, 1 repeat (~1 min)
    python benchmarks/bench_privacy.py                # 1,000,000 rows, 3 repeats
    python benchmarks/bench_privacy.py --plot privacy.png
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

import distmix
from distmix.datasets import random_mixture, sample_rows
from distmix.em import mean_log_likelihood_of

SEED = 0
TARGET_GAP = 0.1


def rows(mixture, n: int, seed: int) -> np.ndarray:
    return sample_rows(mixture, 0, n, seed, chunk_rows=65536)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows, 1 repeat")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--epsilons", default="0.5,1,2,4,8")
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--public-rows", type=int, default=10_000)
    parser.add_argument("--held-out-rows", type=int, default=100_000)
    parser.add_argument("--coverage", type=float, default=0.999)
    parser.add_argument("--plot", default=None, help="write the curve here (matplotlib)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 100_000, 1
    epsilons = [float(e) for e in args.epsilons.split(",")]
    k, d = args.components, args.features

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    mixture = random_mixture(d, k, SEED)
    X = rows(mixture, args.rows, SEED)
    public = rows(mixture, args.public_rows, SEED + 1)
    held_out = rows(mixture, args.held_out_rows, SEED + 2)

    # the public side: a ball that holds ``coverage`` of the public rows, and a start
    centre = public.mean(axis=0)
    radius = float(np.quantile(np.linalg.norm(public - centre, axis=1), args.coverage))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = distmix.GaussianMixture(k, max_iter=20, random_state=SEED).fit(public)
    init = dict(
        weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_
    )
    truth = distmix.Params.from_covariances(
        mixture.weights, mixture.means, mixture.covariances, "full"
    )
    truth_score = mean_log_likelihood_of(distmix.LocalEngine(held_out), truth)
    print(
        f"rows {args.rows:,} x {d}, K = {k}; public sample {args.public_rows:,} rows: "
        f"centre at |x0| = {np.linalg.norm(centre):.1f}, radius B = {radius:.1f} "
        f"({args.coverage:.1%} of its rows)"
    )

    began = time.perf_counter()
    reference = distmix.GaussianMixture(k, random_state=SEED).fit(X)
    plain_s = time.perf_counter() - began
    plain = reference.score(held_out)
    print(f"non-private fit: {plain_s:.1f} s, {reference.n_iter_} iterations")

    table = []
    for epsilon in epsilons:
        scores, seconds, sigma = [], [], None
        for repeat in range(args.repeats):
            privacy = distmix.Privacy(
                epsilon=epsilon, delta=args.delta, clip_radius=radius, centre=centre
            )
            model = distmix.GaussianMixture(
                k, max_iter=args.iterations, privacy=privacy, random_state=repeat, **init
            )
            began = time.perf_counter()
            model.fit(X)
            seconds.append(time.perf_counter() - began)
            scores.append(model.score(held_out))
            sigma = model.privacy_["noise_sigma"]
        score = float(np.median(scores))
        table.append((epsilon, score, plain - score, float(np.median(seconds)), sigma))
        print(f"  eps {epsilon:g}: held-out {score:.4f} ({', '.join(f'{s:.4f}' for s in scores)})")

    print()
    print(
        f"held-out mean log-likelihood per row; delta {args.delta:g}, {args.iterations} private "
        f"iterations, medians of {args.repeats}; target: within {TARGET_GAP} of the non-private fit"
    )
    header = (
        f"{'epsilon':>8} {'held-out':>10} {'gap':>8} {'verdict':>8} {'s/fit':>7} "
        f"{'sigma counts':>13} {'sigma S1':>10} {'sigma S2':>10}"
    )
    print(header)
    print("-" * len(header))
    for epsilon, score, gap, secs, sigma in table:
        verdict = "PASS" if gap <= TARGET_GAP else "MISS"
        print(
            f"{epsilon:>8g} {score:>10.4f} {gap:>8.4f} {verdict:>8} {secs:>7.2f} "
            f"{sigma['resp_sum']:>13.3g} {sigma['x_sum']:>10.3g} {sigma['second']:>10.3g}"
        )
    print(f"{'none':>8} {plain:>10.4f} {0.0:>8.4f}")
    start_score = start.score(held_out)
    print(f"{'start':>8} {start_score:>10.4f}   (the public fit the private fits start from)")
    print(f"{'truth':>8} {truth_score:>10.4f}")
    within = [e for e, _, gap, _, _ in table if gap <= TARGET_GAP]
    print(
        "private fits within the target from eps = "
        + (f"{min(within):g}" if within else "none of those tried")
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot")
            return
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([t[0] for t in table], [t[1] for t in table], "o-", label="private")
        ax.axhline(plain, color="k", linestyle="--", label="non-private")
        ax.axhline(plain - TARGET_GAP, color="grey", linestyle=":", label="target")
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon (delta = {args.delta:g})")
        ax.set_ylabel("held-out log-likelihood / row")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
