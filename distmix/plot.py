"""Plots of fitted mixtures: how a fit converged, and its components over the rows.

Layer: a leaf beside the estimator. It reads a fitted model's attributes
(``weights_``, ``means_``, ``covariances_``, ``covariance_type``,
``lower_bounds_``, ``stream_history_``) and rows; nothing imports it but the
package's ``__init__`` and the CLI. matplotlib is the optional extra
``distmix[plot]``, imported when a plot is drawn.

Every function draws into ``ax`` (a new figure's axes if none is given) and
returns the axes, so that plots compose as matplotlib users expect::

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    distmix.plot.convergence(model, ax=left)
    distmix.plot.components(model, X, ax=right)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distmix import params

#: how many rows :func:`components` draws as points, by default
SAMPLE_ROWS = 5_000


def _matplotlib() -> tuple[Any, Any]:
    """``matplotlib.pyplot`` and ``matplotlib.patches``; a missing matplotlib is named
    with the extra to install."""
    try:
        import matplotlib.patches as patches
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("distmix's plots need matplotlib: pip install 'distmix[plot]'") from error
    return plt, patches


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    plt, _ = _matplotlib()
    return plt.subplots(figsize=(5.5, 4.0))[1]


def _fitted(model: Any) -> None:
    if not hasattr(model, "means_"):
        raise ValueError(f"{type(model).__name__} is not fitted: fit it before plotting it.")


def figure(
    model: Any,
    X: Any = None,
    *,
    features: Sequence[int] | None = None,
    sample: int = SAMPLE_ROWS,
    seed: int = 0,
) -> Any:
    """A matplotlib ``Figure`` (no pyplot: nothing is shown, nothing global changes) with
    the model's convergence, where it has a history to show, beside its components
    (what ``distmix plot`` writes)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("distmix's plots need matplotlib: pip install 'distmix[plot]'") from error
    history = bool(getattr(model, "lower_bounds_", None) or getattr(model, "stream_history_", None))
    fig = Figure(figsize=(11.0 if history else 5.5, 4.0), layout="constrained")
    axes = fig.subplots(1, 2 if history else 1, squeeze=False)[0]
    if history:
        convergence(model, ax=axes[0])
    components(model, X, features=features, ax=axes[-1], sample=sample, seed=seed)
    return fig


# -- convergence -----------------------------------------------------------------------
def convergence(model: Any, ax: Any = None) -> Any:
    """The mean log-likelihood per row after every iteration (batch EM), or after every
    update of a stream (the running average, each batch's own, and the held-out rows'
    where the stream had some), against the rows read."""
    _fitted(model)
    ax = _axes(ax)
    history = getattr(model, "stream_history_", None)
    if history:
        seen = [record["n_samples_seen"] for record in history]
        ax.plot(seen, [r["batch_log_likelihood"] for r in history], ".", alpha=0.3, label="batch")
        ax.plot(seen, [r["running_log_likelihood"] for r in history], "-", label="running")
        held = [(s, r["validation_log_likelihood"]) for s, r in zip(seen, history, strict=True)]
        held = [(s, v) for s, v in held if v is not None]
        if held:
            ax.plot(*zip(*held, strict=True), "o-", label="held-out")
        ax.set_xlabel("rows read")
        ax.legend()
    else:
        bounds = list(getattr(model, "lower_bounds_", []))
        if not bounds:
            why = (
                "a private fit releases no log-likelihood"
                if hasattr(model, "privacy_")
                else "the model holds no history of its fit"
            )
            raise ValueError(f"no convergence to plot: {why}.")
        ax.plot(range(1, len(bounds) + 1), bounds, "o-")
        ax.set_xlabel("iteration")
    ax.set_ylabel("mean log-likelihood per row")
    ax.set_title("convergence")
    return ax


# -- selection ------------------------------------------------------------------------
def criteria(selection: Any, ax: Any = None, names: Sequence[str] = ("bic", "aic", "icl")) -> Any:
    """A selection's criteria against the number of components, one line per criterion
    and covariance type (``distmix.select``'s candidates; the chosen one circled)."""
    ax = _axes(ax)
    candidates = [c for c in selection.candidates if c.fitted]
    if not candidates:
        raise ValueError("no candidate of the selection was fitted: nothing to plot.")
    styles = {"bic": "-", "aic": "--", "icl": ":"}
    types = list(dict.fromkeys(c.covariance_type for c in candidates))
    for t, covariance_type in enumerate(types):
        mine = sorted(
            (c for c in candidates if c.covariance_type == covariance_type),
            key=lambda c: c.n_components,
        )
        for name in names:
            ax.plot(
                [c.n_components for c in mine],
                [c.criterion(name) for c in mine],
                styles.get(name, "-"),
                marker="o",
                color=f"C{t % 10}",
                label=f"{name.upper()}, {covariance_type}",
            )
    best = selection.best_estimator_
    chosen = next(
        c
        for c in candidates
        if c.n_components == best.n_components and c.covariance_type == best.covariance_type
    )
    ax.plot(
        [chosen.n_components],
        [chosen.criterion(selection.criterion)],
        "o",
        markersize=14,
        fillstyle="none",
        color="k",
        label="chosen",
    )
    ax.set_xlabel("number of components")
    ax.set_ylabel("criterion (lower is better)")
    ax.set_title(selection.explanation.split(";")[0])
    ax.legend(fontsize="small")
    return ax


# -- components ------------------------------------------------------------------------
def full_covariances(model: Any) -> np.ndarray:
    """Every component's covariance as a (K, D, D) stack, whatever the covariance type."""
    _fitted(model)
    k, d = np.shape(model.means_)
    return params.full_covariances(model.covariances_, model.covariance_type, k, d)


def projection(model: Any, features: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 2-D view :func:`components` draws: ``(basis (2, D), origin (D,))``, a point
    ``x`` drawn at ``basis @ (x − origin)``. By default the first two principal axes
    of the fitted mixture (its whole covariance, about its mean); given ``features``,
    those two features as they are."""
    _fitted(model)
    means = np.asarray(model.means_, dtype=np.float64)
    d = means.shape[1]
    if features is not None:
        chosen = [int(f) for f in features]
        if len(chosen) != 2 or not all(0 <= f < d for f in chosen) or chosen[0] == chosen[1]:
            raise ValueError(
                f"features must be two different feature indices in [0, {d}), got {features!r}."
            )
        return np.eye(d)[chosen], np.zeros(d)
    if d == 1:
        raise ValueError("a model of one feature has no 2-D view: plot its density instead.")
    if d == 2:
        return np.eye(2), np.zeros(2)
    weights = np.asarray(model.weights_, dtype=np.float64)
    centre = weights @ means
    offsets = means - centre
    total = np.einsum("k,kij->ij", weights, full_covariances(model)) + np.einsum(
        "k,ki,kj->ij", weights, offsets, offsets
    )
    _, vectors = np.linalg.eigh(total)
    return vectors[:, ::-1][:, :2].T, centre


def _sample(X: Any, size: int, seed: int) -> np.ndarray:
    """At most ``size`` rows of ``X`` (NumPy or dask), drawn without replacement."""
    n = int(np.shape(X)[0])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(size, n), replace=False))
    picked = X[rows]
    compute = getattr(picked, "compute", None)
    return np.asarray(compute() if callable(compute) else picked, dtype=np.float64)


def components(
    model: Any,
    X: Any = None,
    *,
    features: Sequence[int] | None = None,
    ax: Any = None,
    sample: int = SAMPLE_ROWS,
    seed: int = 0,
    n_std: float = 2.0,
) -> Any:
    """The fitted components as ellipses of ``n_std`` standard deviations (their line
    width grows with their weight) over a 2-D view (:func:`projection`), with a
    random ``sample`` of the rows of ``X`` (NumPy or dask, optional) as points."""
    _, patches = _matplotlib()
    basis, origin = projection(model, features)
    ax = _axes(ax)
    means = (np.asarray(model.means_, dtype=np.float64) - origin) @ basis.T
    covariances = basis @ full_covariances(model) @ basis.T
    if X is not None:
        if int(np.shape(X)[1]) != basis.shape[1]:
            raise ValueError(
                f"X has {np.shape(X)[1]} features, the model {basis.shape[1]}: plot the rows "
                "it was fitted to."
            )
        points = (_sample(X, sample, seed) - origin) @ basis.T
        ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.3, color="grey", label="rows")
    weights = np.asarray(model.weights_, dtype=np.float64)
    colours = [f"C{k % 10}" for k in range(len(weights))]
    for k, (mean, cov) in enumerate(zip(means, covariances, strict=True)):
        values, vectors = np.linalg.eigh(cov)
        values = np.maximum(values, 0.0)
        angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
        ax.add_patch(
            patches.Ellipse(
                tuple(mean),
                width=2.0 * n_std * math.sqrt(values[1]),
                height=2.0 * n_std * math.sqrt(values[0]),
                angle=angle,
                fill=False,
                color=colours[k],
                linewidth=0.5 + 3.0 * weights[k] * len(weights) / 2.0,
                label=f"component {k} ({weights[k]:.2f})",
            )
        )
        ax.plot(*mean, "+", color=colours[k])
    ax.autoscale_view()
    if features is None and basis.shape[1] > 2:
        ax.set_xlabel("first principal axis of the mixture")
        ax.set_ylabel("second principal axis")
    else:
        chosen = list(features) if features is not None else [0, 1]
        ax.set_xlabel(f"feature {chosen[0]}")
        ax.set_ylabel(f"feature {chosen[1]}")
    ax.set_title(f"{len(weights)} components ({model.covariance_type})")
    return ax
