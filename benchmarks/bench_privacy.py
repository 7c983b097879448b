"""Utility of differentially private fits: held-out log-likelihood against ε.

What is measured
----------------
Rows of a known mixture (``distmix.datasets.random_mixture``: 16 features,
K = 8, separation 8; ``--rows`` rows, default 1,000,000) are fitted

* without privacy: ``GaussianMixture(8).fit(X)`` (k-means‖ start, EM to
  convergence), and
* with privacy, for each ε in ``--epsilons`` (δ = ``--delta``, default 1e-6):
  ``GaussianMixture(8, max_iter=T, privacy=Privacy(ε, δ, B, x0))``,
  ``T = --iterations`` noisy iterations (default 10), ``--repeats`` times (the
  noise differs each time; medians reported), from two starts:

  - *public*: a quick non-private fit on the public sample below (its means,
    weights and precisions as ``*_init``);
  - *own*: the private fit's own first release (the rows' noisy count and
    moments, 5 % of the budget; means chosen among draws from their Gaussian).

  The fitted parameters average the final releases that agree within their
  noise (the default; the table's "avg").

Everything a private fit is given besides the rows is public: the clipping
centre ``x0`` and radius ``B`` come from a *public sample* of ``--public-rows``
rows drawn from the same mixture with another seed (its mean and the
``--coverage`` quantile of its rows' distances to it). Every fit is scored
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

    starts = {"public": init, "own": {}}
    table = []
    for epsilon in epsilons:
        row: dict = {"epsilon": epsilon}
        for name, given in starts.items():
            scores, seconds = [], []
            for repeat in range(args.repeats):
                privacy = distmix.Privacy(
                    epsilon=epsilon, delta=args.delta, clip_radius=radius, centre=centre
                )
                model = distmix.GaussianMixture(
                    k, max_iter=args.iterations, privacy=privacy, random_state=repeat, **given
                )
                began = time.perf_counter()
                try:
                    model.fit(X)
                except ValueError as error:  # a budget refused as unusable
                    print(f"  eps {epsilon:g}, {name} start: refused: {error}")
                    scores.append(float("nan"))
                    continue
                seconds.append(time.perf_counter() - began)
                scores.append(model.score(held_out))
                row["sigma"] = model.privacy_["noise_sigma"]
                row.setdefault(name + "_averaged", []).append(model.privacy_["averaged_last"])
            row[name] = float(np.median(scores))
            row[name + "_s"] = float(np.median(seconds)) if seconds else float("nan")
            shown = ", ".join(f"{x:.4f}" for x in scores)
            print(f"  eps {epsilon:g}, {name} start: held-out {row[name]:.4f} ({shown})")
        table.append(row)

    print()
    print(
        f"held-out mean log-likelihood per row; delta {args.delta:g}, {args.iterations} private "
        f"iterations, medians of {args.repeats}; target: within {TARGET_GAP} of the "
        "non-private fit; avg: how many final releases each fit averaged"
    )
    header = (
        f"{'epsilon':>8} {'public start':>13} {'gap':>8} {'avg':>6} {'own start':>10} "
        f"{'gap':>8} {'avg':>6} {'verdict':>9} {'s/fit':>6} {'sigma counts':>13} "
        f"{'sigma S1':>9} {'sigma S2':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in table:
        gaps = [plain - row[name] for name in starts]
        verdict = "/".join("PASS" if gap <= TARGET_GAP else "MISS" for gap in gaps)
        sigma = row.get("sigma", {"resp_sum": np.nan, "x_sum": np.nan, "second": np.nan})
        averaged = {
            name: "/".join(str(m) for m in row.get(name + "_averaged", [])) or "-"
            for name in starts
        }
        print(
            f"{row['epsilon']:>8g} {row['public']:>13.4f} {gaps[0]:>8.4f} "
            f"{averaged['public']:>6} {row['own']:>10.4f} {gaps[1]:>8.4f} {averaged['own']:>6} "
            f"{verdict:>9} {row['own_s']:>6.2f} {sigma['resp_sum']:>13.3g} "
            f"{sigma['x_sum']:>9.3g} {sigma['second']:>9.3g}"
        )
    print(f"{'none':>8} {plain:>13.4f} {0.0:>8.4f}   (the non-private fit)")
    start_score = start.score(held_out)
    print(f"{'start':>8} {start_score:>13.4f} {plain - start_score:>8.4f}   (the public start)")
    print(f"{'truth':>8} {truth_score:>13.4f}")
    for name in starts:
        within = [row["epsilon"] for row in table if plain - row[name] <= TARGET_GAP]
        print(
            f"{name} start: private fits within the target from eps = "
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
        for name in starts:
            ax.plot(
                [row["epsilon"] for row in table],
                [row[name] for row in table],
                "o-",
                label=f"private, {name} start",
            )
        ax.axhline(plain, color="k", linestyle="--", label="non-private")
        ax.axhline(plain - TARGET_GAP, color="grey", linestyle=":", label="target")
        ax.set_xscale("log")
        ax.set_xticks(epsilons, [f"{e:g}" for e in epsilons])
        ax.minorticks_off()
        ax.set_xlabel(f"epsilon (delta = {args.delta:g})")
        ax.set_ylabel("held-out log-likelihood / row")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
