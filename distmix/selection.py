"""Model selection: a grid of candidate mixtures fitted side by side, every pass shared.

Layer: the loop's side (engines, the EM loop and the initialisations; never the
estimator, which builds the chosen model from what this returns).

Every candidate (a number of components and a covariance type) and every one
of its restarts starts from its own :func:`~distmix.init.initial_params`; then
all of them iterate together (:func:`~distmix.em.run_em_together`: one read of
each block per iteration for every run still going), each candidate keeps its
best restart, and one more shared pass (the block task ``scores``) gives every
candidate's log-likelihood and responsibility entropy at its final parameters,
from which BIC, AIC and ICL follow:

* ``BIC = −2 ℓ + p log n``, ``AIC = −2 ℓ + 2 p``, ``ICL = BIC + 2 E`` (``ℓ`` the
  total log-likelihood, ``p`` the free parameters, ``n`` the rows' total weight,
  ``E = −Σ w r log r`` the entropy of the responsibilities: ICL also charges
  components that overlap). Lower is better, as in scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from distmix.em import EMResult, run_em_together
from distmix.engines.base import Engine
from distmix.init import initial_params
from distmix.params import Params

CRITERIA = ("bic", "aic", "icl")


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a mixture: weights (K − 1), means (K·D) and covariances."""
    k, d = n_components, n_features
    covariance = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]
    return (k - 1) + k * d + covariance


@dataclass(frozen=True)
class Candidate:
    """One row of a selection's table (``status`` says why a candidate has no fit)."""

    n_components: int
    covariance_type: str
    log_likelihood: float = math.nan  # mean per row (weight), at the final parameters
    n_parameters: int = 0
    bic: float = math.nan
    aic: float = math.nan
    icl: float = math.nan
    n_iter: int = 0
    converged: bool = False
    status: str = "ok"

    @property
    def fitted(self) -> bool:
        return self.status == "ok"

    def criterion(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass
class GridFit:
    """What :func:`fit_grid` found: the table, and each fitted candidate's best run."""

    candidates: list[Candidate]
    runs: dict[tuple[int, str], EMResult] = field(default_factory=dict)


def fit_grid(
    engine: Engine,
    grid: Sequence[tuple[int, str]],
    seeds: Sequence[int],
    *,
    init_params: str,
    tol: float,
    max_iter: int,
    reg_covar: float,
) -> GridFit:
    """Every candidate of ``grid`` with a restart per seed, side by side (module doc)."""
    n_rows, d = engine.n_rows, engine.n_features
    starts: list[Params] = []
    owners: list[tuple[int, str]] = []
    failed: dict[tuple[int, str], str] = {}
    for k, covariance_type in grid:
        if k > n_rows:
            failed[(k, covariance_type)] = f"not enough rows ({n_rows:,} < {k})"
            continue
        for seed in seeds:
            try:
                start = initial_params(engine, init_params, k, covariance_type, reg_covar, seed)
            except (ValueError, np.linalg.LinAlgError) as error:
                failed[(k, covariance_type)] = f"no start: {error}"
                break
            starts.append(start)
            owners.append((k, covariance_type))
    owners_ok = [o for o in owners if o not in failed]
    starts = [s for s, o in zip(starts, owners, strict=True) if o not in failed]
    results = run_em_together(engine, starts, tol=tol, max_iter=max_iter, reg_covar=reg_covar)
    best: dict[tuple[int, str], EMResult] = {}
    for owner, result in zip(owners_ok, results, strict=True):
        kept = best.get(owner)
        if kept is None or result.lower_bound > kept.lower_bound:
            best[owner] = result
    fitted = list(best)
    scores = (
        np.asarray(engine.reduce("scores", tuple(best[o].params for o in fitted)).to_host().values)
        if fitted
        else np.zeros(1)
    )
    weight = float(scores[-1])
    candidates = []
    for k, covariance_type in grid:
        key = (k, covariance_type)
        if key in failed:
            candidates.append(Candidate(k, covariance_type, status=failed[key]))
            continue
        i = fitted.index(key)
        total, entropy = float(scores[2 * i]), float(scores[2 * i + 1])
        p = n_parameters(k, d, covariance_type)
        bic = -2.0 * total + p * math.log(weight)
        run = best[key]
        candidates.append(
            Candidate(
                k,
                covariance_type,
                total / weight,
                p,
                bic,
                -2.0 * total + 2.0 * p,
                bic + 2.0 * entropy,
                run.n_iter,
                run.converged,
            )
        )
    return GridFit(candidates, best)


def choose(candidates: Sequence[Candidate], criterion: str) -> tuple[Candidate, str]:
    """The candidate with the lowest ``criterion`` (ties: fewer parameters, then the
    grid's order), and one line that says why."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    fitted = [c for c in candidates if c.fitted and math.isfinite(c.criterion(criterion))]
    if not fitted:
        reasons = "; ".join(
            f"K={c.n_components} {c.covariance_type}: {c.status}" for c in candidates
        )
        raise ValueError(f"no candidate could be fitted ({reasons}).")
    ranked = sorted(fitted, key=lambda c: (c.criterion(criterion), c.n_parameters))
    best = ranked[0]
    name = criterion.upper()
    line = (
        f"{name} picks K={best.n_components} {best.covariance_type} "
        f"({name} {best.criterion(criterion):,.1f})"
    )
    if len(ranked) > 1:
        runner = ranked[1]
        gap = runner.criterion(criterion) - best.criterion(criterion)
        strength = (
            "a tie, broken by fewer parameters"
            if gap == 0.0
            else "strong evidence"
            if gap > 10.0
            else "positive evidence"
            if gap > 2.0
            else "weak evidence"
        )
        line += (
            f"; next K={runner.n_components} {runner.covariance_type} is {gap:,.1f} higher "
            f"({strength})"
        )
    return best, line + "."


def format_table(candidates: Sequence[Candidate], chosen: Candidate | None = None) -> str:
    """The table of every candidate, one line each (the chosen one marked)."""
    header = (
        f"{'K':>3} {'type':>9} {'loglik/row':>11} {'params':>7} {'BIC':>12} {'AIC':>12} "
        f"{'ICL':>12} {'iter':>5} {'conv':>5}"
    )
    lines = [header, "-" * len(header)]
    for c in candidates:
        mark = " <" if c is chosen else ""
        if not c.fitted:
            lines.append(f"{c.n_components:>3} {c.covariance_type:>9}   {c.status}")
            continue
        lines.append(
            f"{c.n_components:>3} {c.covariance_type:>9} {c.log_likelihood:>11.5f} "
            f"{c.n_parameters:>7} {c.bic:>12.1f} {c.aic:>12.1f} {c.icl:>12.1f} "
            f"{c.n_iter:>5} {'yes' if c.converged else 'no':>5}{mark}"
        )
    return "\n".join(lines)
