"""Prove that two checkouts of distmix fit exactly the same numbers.

``python benchmarks/compare_results.py OLD_DIR [NEW_DIR] [--quick]`` runs a battery of fits,
streams, predictions, checkpoints and samples once per checkout and compares every resulting
array for exact equality (same dtype, same shape, same values — NaN equal to NaN — and the
same bits, so that ``-0.0`` against ``0.0`` counts too). ``NEW_DIR`` defaults to the checkout
this script lives in. The exit status is 0 when everything is identical, 1 when any array
differs or exists in one run only, 2 when a run could not produce its results.

How it stays honest about *which* code ran: for each checkout the script starts itself in a
fresh interpreter, ``sys.executable compare_results.py --produce OUT.npz --checkout DIR``, with
``PYTHONPATH=DIR`` only; that child refuses to run unless ``distmix.__file__`` lies inside
``DIR`` (an editable install of another checkout would otherwise win silently). The child uses
the public API only — ``GaussianMixture`` (``fit``, ``partial_fit``, ``fit_stream``, the
predictions, ``sample``, ``save``), ``distmix.fit_stream`` and ``distmix.load`` — so the same
battery runs against the code before and after a redesign of the layers beneath it. Each
case's results go into one ``.npz`` keyed ``case/attribute``; a call that raises is recorded
as ``case/error`` (its type and message) instead of stopping the run, and the categories of
the warnings a case raised are recorded as ``case/warnings``.

Inputs are drawn from a seeded Gaussian mixture written here (not taken from either
checkout); every estimator gets an integer ``random_state``. Dask input runs on Dask's
default threaded scheduler (no ``distributed.Client``); Zarr arrays are written with
``zarr.create_array`` into a temporary directory that the child deletes.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: separates the case from the attribute in the keys of a results file
SEP = "/"
#: keys under this prefix hold how a run went (seconds per case, where distmix came from);
#: they are printed, never compared
META = "_meta"
N_COMPONENTS = 3
N_FEATURES = 4
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
#: differing keys listed in the report
SHOWN_DIFFERENCES = 15

Results = dict[str, Any]


# --------------------------------------------------------------------------- #
# data                                                                        #
# --------------------------------------------------------------------------- #
def mixture_rows(
    seed: int, n_rows: int, n_features: int, n_components: int, separation: float = 3.0
) -> np.ndarray:
    """(n_rows, n_features) float64 rows drawn from a Gaussian mixture with random full
    covariances; ``separation`` scales the spread of the centres (3 makes EM take a few
    dozen iterations, so that rounding would have room to show)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=separation, size=(n_components, n_features))
    weights = rng.dirichlet(np.full(n_components, 4.0))
    labels = rng.choice(n_components, size=n_rows, p=weights)
    mixing = rng.normal(size=(n_components, n_features, n_features)) / np.sqrt(n_features)
    mixing += np.eye(n_features)
    noise = rng.normal(size=(n_rows, n_features))
    return centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])


def uneven_chunks(n_rows: int) -> tuple[int, ...]:
    """Row chunks of very different lengths (one of a single row) that add up to ``n_rows``."""
    cuts = [1, n_rows // 4, n_rows // 4 + 7, n_rows // 2 + 3, n_rows - 97]
    return tuple(int(b - a) for a, b in itertools.pairwise([0, *cuts, n_rows]))


def starting_params(X: np.ndarray, covariance_type: str, seed: int) -> dict[str, np.ndarray]:
    """User-given ``weights_init``/``means_init``/``precisions_init`` in the shape of
    ``covariance_type``: random rows as means, the pooled covariance's inverse as precisions."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    means = X[rng.choice(n, size=N_COMPONENTS, replace=False)]
    precision = np.linalg.inv(np.cov(X, rowvar=False) + 1e-3 * np.eye(d))
    precisions = {
        "full": np.repeat(precision[None], N_COMPONENTS, axis=0),
        "tied": precision,
        "diag": np.tile(np.diag(precision), (N_COMPONENTS, 1)),
        "spherical": np.full(N_COMPONENTS, float(np.mean(np.diag(precision)))),
    }[covariance_type]
    weights = rng.dirichlet(np.full(N_COMPONENTS, 5.0))
    return {"weights_init": weights, "means_init": means, "precisions_init": precisions}


@dataclass(frozen=True)
class Data:
    """Everything the cases read: rows, held-out rows, weights and a Zarr copy of the rows."""

    X: np.ndarray  # (n, D) training rows
    held_out: np.ndarray  # (m, D) rows for predictions and stream validation
    int_weights: np.ndarray  # (n,) counts 0..3 (0 drops a row)
    float_weights: np.ndarray  # (n,) positive reals
    zarr_path: str  # X as a Zarr v3 array, chunks of zarr_chunk_rows rows
    zarr_chunk_rows: int
    workdir: Path  # checkpoints, model files and growing arrays go here


def write_zarr(path: Path, X: np.ndarray, chunk_rows: int) -> Any:
    import zarr

    array = zarr.create_array(str(path), shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype="f8")
    array[:] = X
    return array


def make_data(n_rows: int, workdir: Path) -> Data:
    # one draw, split: the held-out rows come from the same mixture as the training rows
    rows = mixture_rows(0, n_rows + max(500, n_rows // 5), N_FEATURES, N_COMPONENTS)
    X, held_out = rows[:n_rows], rows[n_rows:]
    rng = np.random.default_rng(2)
    chunk_rows = max(250, n_rows // 8)
    zarr_path = workdir / "x.zarr"
    write_zarr(zarr_path, X, chunk_rows)
    return Data(
        X=X,
        held_out=held_out,
        int_weights=rng.integers(0, 4, size=n_rows),
        float_weights=rng.uniform(0.1, 2.0, size=n_rows),
        zarr_path=str(zarr_path),
        zarr_chunk_rows=chunk_rows,
        workdir=workdir,
    )


def as_dask(X: np.ndarray, chunks: int | tuple[int, ...]) -> Any:
    import dask.array as da

    return da.from_array(X, chunks=(chunks, X.shape[1]))


def open_zarr(path: str) -> Any:
    import zarr

    return zarr.open_array(path, mode="r")


# --------------------------------------------------------------------------- #
# what a case records                                                         #
# --------------------------------------------------------------------------- #
def fitted(model: Any, prefix: str = "") -> Results:
    """Every public fitted attribute (``name_``) of ``model``; ``stream_history_`` (a list
    of dicts) becomes one array per field, ``None`` (no held-out value) as NaN."""
    out: Results = {}
    for name, value in sorted(vars(model).items()):
        if not name.endswith("_") or name.startswith("_"):
            continue
        if name == "stream_history_":
            fields = list(dict.fromkeys(key for record in value for key in record))
            for field in fields:
                column = [record.get(field) for record in value]
                out[f"{prefix}{name}.{field}"] = [np.nan if v is None else v for v in column]
        else:
            out[prefix + name] = value
    return out


def computed(value: Any) -> np.ndarray:
    return np.asarray(value.compute() if hasattr(value, "compute") else value)


def predictions(model: Any, X: Any, prefix: str) -> Results:
    """predict, predict_proba, score_samples, score, bic and aic of ``model`` on ``X``
    (dask results computed)."""
    return {
        prefix + name: computed(getattr(model, name)(X))
        for name in ("predict", "predict_proba", "score_samples", "score", "bic", "aic")
    }


def as_array(value: Any) -> np.ndarray:
    """``value`` as an array that ``np.load`` reads back without pickle."""
    array = np.asarray(value)
    if array.dtype == object:
        array = np.asarray([str(v) for v in np.ravel(array)])
    return array


# --------------------------------------------------------------------------- #
# the cases                                                                   #
# --------------------------------------------------------------------------- #
def gm(**params: Any) -> Any:
    import distmix

    return distmix.GaussianMixture(**{"n_components": N_COMPONENTS, "random_state": 0, **params})


def fit_case(source: Callable[[], Any], sample_weight: Any = None, **params: Any) -> Results:
    model = gm(**params).fit(source(), sample_weight=sample_weight)
    return fitted(model)


def warm_start_case(data: Data) -> Results:
    model = gm(max_iter=3, warm_start=True)
    model.fit(data.X)
    first = fitted(model, "first.")
    model.set_params(max_iter=100)
    model.fit(data.X)
    return {**first, **fitted(model, "second.")}


def predictions_case(data: Data, covariance_type: str) -> Results:
    model = gm(covariance_type=covariance_type)
    labels = computed(model.fit_predict(data.X))
    return {
        **fitted(model),
        "fit_predict": labels,
        **predictions(model, data.held_out, "numpy."),
        **predictions(model, as_dask(data.held_out, 300), "dask."),
        **predictions(model, open_zarr(data.zarr_path), "zarr."),
    }


def save_load_case(data: Data) -> Results:
    import distmix

    model = gm(covariance_type="diag", n_init=2).fit(data.X)
    path = data.workdir / "model.npz"
    model.save(path)
    loaded = distmix.load(path)
    return {**fitted(loaded), **predictions(loaded, data.held_out, "numpy.")}


def sample_case(data: Data, covariance_type: str) -> Results:
    model = gm(covariance_type=covariance_type, max_iter=10, random_state=7).fit(data.X)
    rows, labels = model.sample(500)
    return {"X": rows, "labels": labels}


class Interrupted(Exception):
    """Raised by a block read or a callback to stop a fit halfway, as a crash would."""


def counting_dask(X: np.ndarray, chunks: int, fail_after: int | None, calls: Any) -> Any:
    """``X`` as a dask array whose block reads are counted in ``calls`` (an
    ``itertools.count``) and raise :class:`Interrupted` from read number ``fail_after`` on."""

    def read(block: np.ndarray) -> np.ndarray:
        if next(calls) >= (np.inf if fail_after is None else fail_after):
            raise Interrupted("stopped on purpose, as a crash mid-fit would")
        return block

    return as_dask(X, chunks).map_blocks(read, dtype=X.dtype, meta=np.empty((0, 0)))


def checkpoint_resume_case(data: Data) -> Results:
    """An uninterrupted checkpointed fit; the same fit stopped halfway (a block read
    raises) and resumed from its checkpoint; and the finished checkpoint resumed."""
    params = dict(covariance_type="full", n_init=2, tol=1e-4, max_iter=60, persist=False)
    reads = itertools.count()
    whole_path = data.workdir / "whole.ck"
    whole = gm(checkpoint=whole_path, **params).fit(counting_dask(data.X, 500, None, reads))
    total_reads = next(reads)
    path = data.workdir / "interrupted.ck"
    stopped = "no interruption"
    try:
        halfway = counting_dask(data.X, 500, total_reads // 2, itertools.count())
        gm(checkpoint=path, **params).fit(halfway)
    except Interrupted as error:
        stopped = type(error).__name__
    plain = counting_dask(data.X, 500, None, itertools.count())
    resumed = gm(checkpoint=path, resume=True, **params).fit(plain)
    finished = gm(checkpoint=whole_path, resume=True, **params).fit(data.X)
    return {
        **fitted(whole, "whole."),
        "interruption": stopped,
        **fitted(resumed, "resumed."),
        **fitted(finished, "finished_resumed."),
    }


def checkpoint_more_iterations_case(data: Data) -> Results:
    """A short checkpointed fit, then the same checkpoint resumed with a larger max_iter
    (a checkpoint records max_iter: expect the same refusal from both checkouts)."""
    path = data.workdir / "short.ck"
    results = fitted(gm(checkpoint=path, max_iter=3).fit(data.X), "short.")
    try:
        longer = gm(checkpoint=path, resume=True, max_iter=50).fit(data.X)
    except ValueError as error:
        results["longer.error"] = error_text(error, data.workdir)
    else:
        results.update(fitted(longer, "longer."))
    return results


def stream_resume_case(data: Data) -> Results:
    """A checkpointed stream stopped by its callback after 4 updates, then resumed."""
    import distmix

    opts = dict(block_size=max(100, len(data.X) // 20), random_state=3)
    whole = distmix.fit_stream(data.X, n_components=N_COMPONENTS, window=1, n_passes=2, **opts)

    def stop_after_4(record: Any) -> None:
        if record.n_steps == 4:
            raise Interrupted("stopped on purpose after 4 updates")

    model = gm(checkpoint=data.workdir / "stream.ck", resume=True, **opts)
    stopped = "no interruption"
    try:
        model.fit_stream(data.X, window=1, n_passes=2, report_every=1, callback=stop_after_4)
    except Interrupted as error:
        stopped = type(error).__name__
    model.fit_stream(data.X)  # window, passes and seed come from the checkpoint
    return {**fitted(whole, "whole."), "interruption": stopped, **fitted(model, "resumed.")}


def stream_case(source: Callable[[], Any], **kwargs: Any) -> Results:
    import distmix

    kwargs = {"n_components": N_COMPONENTS, "random_state": 0, **kwargs}
    return fitted(distmix.fit_stream(source(), **kwargs))


def partial_fit_case(batches: list[Any], **params: Any) -> Results:
    model = gm(**params)
    out: Results = {}
    for i, batch in enumerate(batches):
        X, w = batch if isinstance(batch, tuple) else (batch, None)
        model.partial_fit(X, sample_weight=w)
        if i == 0:
            out.update(fitted(model, "after_first."))
    return {**out, **fitted(model)}


def growing_stream_case(data: Data) -> Results:
    """Stream a Zarr array, append rows, continue the same model over the new rows only."""
    import zarr

    import distmix

    half = len(data.X) // 2
    path = data.workdir / "grow.zarr"
    write_zarr(path, data.X[:half], data.zarr_chunk_rows)
    model = distmix.fit_stream(
        str(path), n_components=N_COMPONENTS, random_state=4, window=2, shuffle=False
    )
    first = fitted(model, "first.")
    zarr.open_array(str(path), mode="a").append(data.X[half:])
    model.set_params(warm_start=True)
    distmix.fit_stream(str(path), model)
    return {**first, **fitted(model, "continued.")}


def battery(data: Data, quick: bool) -> list[tuple[str, Callable[[], Results]]]:
    """The cases, in order: (name, zero-argument function returning its results)."""
    X, n = data.X, len(data.X)
    numpy_source = functools.partial(np.asarray, X)
    zarr_source = functools.partial(open_zarr, data.zarr_path)
    cases: list[tuple[str, Callable[[], Results]]] = []

    def add(name: str, run: Callable[..., Results], *args: Any, **kwargs: Any) -> None:
        cases.append((name, functools.partial(run, *args, **kwargs)))

    # batch EM on NumPy: every covariance type × every initialisation (quick: a diagonal)
    for i, covariance_type in enumerate(COVARIANCE_TYPES):
        for j, init in enumerate(INIT_PARAMS):
            if quick and (i + j) % 2:
                continue
            n_init = 2 if (i + j) % 3 == 0 else 1
            name = f"fit/numpy/{covariance_type}/{init}/n_init={n_init}"
            add(
                name,
                fit_case,
                numpy_source,
                covariance_type=covariance_type,
                init_params=init,
                n_init=n_init,
            )
    add(
        "fit/numpy/full/blocks+split2",
        fit_case,
        numpy_source,
        block_size=uneven_chunks(n),
        split_every=2,
    )
    add("fit/numpy/full/one-block", fit_case, numpy_source, block_size=n)
    add("fit/numpy/full/float32", fit_case, functools.partial(np.asarray, X, np.float32))

    # dask arrays (threaded scheduler) in regular, ragged and uneven chunks
    dask_chunks: list[int | tuple[int, ...]] = [n // 6, 700, uneven_chunks(n)]
    for i, covariance_type in enumerate(COVARIANCE_TYPES):
        chunks = dask_chunks[i % len(dask_chunks)]
        label = "uneven" if isinstance(chunks, tuple) else str(chunks)
        add(
            f"fit/dask/{covariance_type}/chunks={label}",
            fit_case,
            functools.partial(as_dask, X, chunks),
            covariance_type=covariance_type,
        )
    add(
        "fit/dask/full/k-means++/persist=False",
        fit_case,
        functools.partial(as_dask, X, 700),
        init_params="k-means++",
        persist=False,
    )
    add(
        "fit/dask/diag/rechunk-block_size",
        fit_case,
        functools.partial(as_dask, X, 700),
        covariance_type="diag",
        block_size=1000,
        n_init=2,
    )

    # Zarr arrays (and a Zarr path)
    for covariance_type in COVARIANCE_TYPES[: 2 if quick else 4]:
        add(f"fit/zarr/{covariance_type}", fit_case, zarr_source, covariance_type=covariance_type)
    add(
        "fit/zarr-path/full/random",
        fit_case,
        functools.partial(str, data.zarr_path),
        init_params="random",
        n_init=2,
    )

    # weights, far from the origin, warm start, user-given start
    for kind, weights in (("int", data.int_weights), ("float", data.float_weights)):
        add(f"fit/numpy/weights={kind}", fit_case, numpy_source, weights)
        add(
            f"fit/dask/weights={kind}",
            fit_case,
            functools.partial(as_dask, X, 700),
            as_dask(weights[:, None], 700)[:, 0],
        )
    add("fit/zarr/weights=int", fit_case, zarr_source, data.int_weights, covariance_type="diag")
    for covariance_type in ("full", "diag") if quick else COVARIANCE_TYPES:
        add(
            f"fit/numpy/offset=1e6/{covariance_type}",
            fit_case,
            functools.partial(np.add, X, 1e6),
            covariance_type=covariance_type,
        )
    add("fit/dask/offset=1e6/full", fit_case, functools.partial(as_dask, X + 1e6, 700))
    add(
        "fit/dask/float32/diag",
        fit_case,
        functools.partial(as_dask, X.astype(np.float32), 700),
        covariance_type="diag",
    )
    add("fit/numpy/warm_start", warm_start_case, data)
    for i, covariance_type in enumerate(COVARIANCE_TYPES):
        start = starting_params(X, covariance_type, seed=10 + i)
        add(
            f"fit/numpy/user-init/{covariance_type}",
            fit_case,
            numpy_source,
            covariance_type=covariance_type,
            **start,
        )
    add(
        "fit/dask/user-init/tied",
        fit_case,
        functools.partial(as_dask, X, 700),
        covariance_type="tied",
        **starting_params(X, "tied", seed=20),
    )

    # predictions on NumPy, dask and Zarr input; a model file round trip
    for covariance_type in ("full", "diag") if quick else COVARIANCE_TYPES:
        add(f"predict/{covariance_type}", predictions_case, data, covariance_type)
    add("save-load/diag", save_load_case, data)

    # streaming: arrays, batches, partial_fit, settings of the step size
    block = max(100, n // 24)
    batches = [X[i : i + block] for i in range(0, n, block)]
    weighted_batches = [
        (X[i : i + block], data.float_weights[i : i + block]) for i in range(0, n, block)
    ]
    add(
        "stream/numpy/window=2/passes=2/shuffle",
        stream_case,
        numpy_source,
        block_size=block,
        window=2,
        n_passes=2,
        shuffle=True,
    )
    add(
        "stream/numpy/window=1/no-shuffle/validation",
        stream_case,
        numpy_source,
        block_size=block,
        window=1,
        shuffle=False,
        validation=data.held_out,
        report_every=3,
    )
    add(
        "stream/numpy/weights=float",
        stream_case,
        numpy_source,
        sample_weight=data.float_weights,
        block_size=block,
        window=3,
        random_state=5,
    )
    add(
        "stream/numpy/decay+offset+forgetting+average",
        stream_case,
        numpy_source,
        block_size=block,
        window=1,
        learning_decay=0.8,
        learning_offset=0.0,
        forgetting_factor=0.05,
        average_after=5,
    )
    for covariance_type in ("tied", "diag", "spherical"):
        add(
            f"stream/numpy/{covariance_type}",
            stream_case,
            numpy_source,
            block_size=block,
            window=2,
            covariance_type=covariance_type,
            random_state=6,
        )
    add(
        "stream/zarr/window=2/passes=2",
        stream_case,
        zarr_source,
        window=2,
        n_passes=2,
        random_state=1,
    )
    add(
        "stream/zarr-path/no-shuffle",
        stream_case,
        functools.partial(str, data.zarr_path),
        window=1,
        shuffle=False,
        covariance_type="diag",
    )
    add(
        "stream/dask/window=2",
        stream_case,
        functools.partial(as_dask, X, block),
        window=2,
        random_state=2,
    )
    add("stream/zarr/grow-and-continue", growing_stream_case, data)
    add(
        "stream/list/passes=2",
        stream_case,
        functools.partial(list, batches),
        n_passes=2,
        random_state=8,
    )
    add(
        "stream/list/weighted-pairs",
        stream_case,
        functools.partial(list, weighted_batches),
        random_state=9,
    )
    add("partial_fit/batches", partial_fit_case, batches)
    add(
        "partial_fit/weighted/diag/offset=0",
        partial_fit_case,
        weighted_batches,
        covariance_type="diag",
        learning_offset=0.0,
    )
    add("partial_fit/user-init/full", partial_fit_case, batches, **starting_params(X, "full", 30))

    # checkpoints
    add("checkpoint/fit/interrupt+resume", checkpoint_resume_case, data)
    add("checkpoint/fit/resume-with-larger-max_iter", checkpoint_more_iterations_case, data)
    add("checkpoint/stream/interrupt+resume", stream_resume_case, data)

    # sampling
    for covariance_type in COVARIANCE_TYPES:
        add(f"sample/{covariance_type}", sample_case, data, covariance_type)
    return cases


# --------------------------------------------------------------------------- #
# the child: run the battery against one checkout                            #
# --------------------------------------------------------------------------- #
def error_text(error: Exception, workdir: Path) -> str:
    """``"Type: message"`` with the temporary directory spelt ``<tmp>`` (it differs per run)."""
    message = f"{type(error).__name__}: {error}"
    for spelling in {str(workdir), os.path.realpath(workdir)}:
        message = message.replace(spelling, "<tmp>")
    return message


def run_case(run: Callable[[], Results], workdir: Path) -> Results:
    """The case's results, or ``{"error": "Type: message"}``; plus ``warnings``: the sorted
    categories of the warnings it raised (none of them is shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            results = run()
        except Exception as error:  # recorded, to be compared with the other checkout's
            results = {"error": error_text(error, workdir)}
    results["warnings"] = sorted({w.category.__name__ for w in caught})
    return results


def produce(out: Path, checkout: Path, quick: bool) -> int:
    import distmix

    where = Path(distmix.__file__).resolve()
    if not where.is_relative_to(checkout.resolve()):
        print(
            f"distmix was imported from {where}, not from the checkout {checkout}: "
            "PYTHONPATH must name the checkout and nothing else may shadow it.",
            file=sys.stderr,
        )
        return 2
    arrays: dict[str, np.ndarray] = {f"{META}{SEP}distmix_file": np.asarray(str(where))}
    errors = []
    with tempfile.TemporaryDirectory(prefix="distmix-compare-") as tmp:
        data = make_data(3000 if quick else 8000, Path(tmp))
        for name, run in battery(data, quick):
            start = time.perf_counter()
            results = run_case(run, data.workdir)
            arrays[f"{META}{SEP}seconds{SEP}{name}"] = np.asarray(time.perf_counter() - start)
            if "error" in results:
                errors.append(f"  {name}: {results['error']}")
            for attribute, value in results.items():
                arrays[f"{name}{SEP}{attribute}"] = as_array(value)
    np.savez(out, **arrays)
    print(f"{len(arrays)} arrays, {len(errors)} case(s) raised", file=sys.stderr)
    if errors:
        print("\n".join(errors), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- #
# the parent: produce both, compare                                           #
# --------------------------------------------------------------------------- #
def run_child(checkout: Path, out: Path, quick: bool, label: str) -> float:
    """Seconds the child took to write ``out`` for ``checkout``; exits 2 if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--produce", str(out)]
    command += ["--checkout", str(checkout)] + (["--quick"] if quick else [])
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    print(f"[{label}] running the battery against {checkout} ...", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    for line in done.stderr.strip().splitlines():
        print(f"[{label}] {line}")
    if done.returncode != 0:
        print(f"[{label}] the run against {checkout} failed (exit status {done.returncode}).")
        sys.exit(2)
    print(f"[{label}] done in {seconds:.1f} s")
    return seconds


def load_results(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def difference(a: np.ndarray | None, b: np.ndarray | None) -> str | None:
    """Why ``a`` and ``b`` are not the same bits (``None`` if they are)."""
    if a is None or b is None:
        return "only in OLD" if b is None else "only in NEW"
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} vs {b.dtype}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    numeric = a.dtype.kind in "fc"
    if not np.array_equal(a, b, equal_nan=numeric):
        if a.dtype.kind in "biufc":
            gap = np.abs(a.astype(np.complex128) - b.astype(np.complex128))
            gap = gap[np.isfinite(gap)]
            largest = f"{float(gap.max()):.3g}" if gap.size else "nan"
            return f"{int(np.sum(a != b))} of {a.size} values differ, max |diff| = {largest}"
        return f"{short(a)} vs {short(b)}"
    if a.tobytes() != b.tobytes():
        return "equal values, different bits (signed zeros or NaN payloads)"
    return None


def short(a: np.ndarray, width: int = 70) -> str:
    text = repr(a.tolist())
    return text if len(text) <= width else text[: width - 3] + "..."


def case_of(key: str) -> str:
    return key.rsplit(SEP, 1)[0]


def compare(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> int:
    """Print the table and the differing keys; the number of differing keys."""
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(META + SEP))
    seconds = {
        label: {
            k.split(SEP, 2)[2]: float(v)
            for k, v in run.items()
            if k.startswith(f"{META}{SEP}seconds{SEP}")
        }
        for label, run in (("old", old), ("new", new))
    }
    cases = list(dict.fromkeys(case_of(k) for k in keys))
    by_case: dict[str, list[str]] = {case: [] for case in cases}
    for key in keys:
        by_case[case_of(key)].append(key)
    differing: list[tuple[str, str]] = []
    width = max(len(case) for case in cases)
    header = f"{'case':<{width}}  {'arrays':>6}  {'diffs':>5}  {'old s':>6}  {'new s':>6}  note"
    print(header)
    print("-" * len(header))
    for case in cases:
        found = [(k, difference(old.get(k), new.get(k))) for k in by_case[case]]
        found_differing = [(k, why) for k, why in found if why is not None]
        differing += found_differing
        raised = {
            label: run.get(case + SEP + "error") for label, run in (("OLD", old), ("NEW", new))
        }
        if difference(raised["OLD"], raised["NEW"]) is None and raised["OLD"] is not None:
            notes = [f"raised in both: {short(raised['OLD'], 60)}"]
        else:
            notes = [
                f"raised in {label}: {short(error, 60)}"
                for label, error in raised.items()
                if error is not None
            ]
        times = [seconds[label].get(case) for label in ("old", "new")]
        shown = ["" if t is None else f"{t:.2f}" for t in times]
        print(
            f"{case:<{width}}  {len(found):>6}  {len(found_differing):>5}  "
            f"{shown[0]:>6}  {shown[1]:>6}  {'; '.join(notes)}"
        )
    print("-" * len(header))
    total_seconds = [sum(seconds[label].values()) for label in ("old", "new")]
    print(
        f"{'total: ' + str(len(cases)) + ' cases':<{width}}  {len(keys):>6}  {len(differing):>5}"
        f"  {total_seconds[0]:>6.1f}  {total_seconds[1]:>6.1f}"
    )
    if differing:
        print(
            f"\nDifferences (first {min(SHOWN_DIFFERENCES, len(differing))} of {len(differing)}):"
        )
        for key, why in differing[:SHOWN_DIFFERENCES]:
            print(f"  {key}: {why}")
    else:
        print("\nEvery array is identical: same dtype, same shape, same bits.")
    return len(differing)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fit the same battery with two checkouts of distmix and require "
        "bit-identical results (exit status 1 on any difference)."
    )
    parser.add_argument("old", nargs="?", type=Path, help="checkout of the reference commit")
    parser.add_argument(
        "new",
        nargs="?",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="checkout to check (default: the one this script is in)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rows and cases")
    parser.add_argument("--produce", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkout", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.produce is None and args.old is None:
        parser.error("give OLD_DIR, the checkout of the commit to compare with")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.produce is not None:
        return produce(args.produce, args.checkout, args.quick)
    for checkout in (args.old, args.new):
        if not (checkout / "distmix" / "__init__.py").is_file():
            print(f"{checkout} is not a distmix checkout (no distmix/__init__.py in it).")
            return 2
    with tempfile.TemporaryDirectory(prefix="distmix-compare-results-") as tmp:
        outputs = {label: Path(tmp) / f"{label}.npz" for label in ("old", "new")}
        run_child(args.old.resolve(), outputs["old"], args.quick, "old")
        run_child(args.new.resolve(), outputs["new"], args.quick, "new")
        old, new = load_results(outputs["old"]), load_results(outputs["new"])
    print(f"\nOLD: {old[f'{META}{SEP}distmix_file']}\nNEW: {new[f'{META}{SEP}distmix_file']}\n")
    return 1 if compare(old, new) else 0


if __name__ == "__main__":
    sys.exit(main())
