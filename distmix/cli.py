"""The ``distmix`` command (a leaf: nothing imports it).

=========  ================================================================
generate   write a synthetic Gaussian-mixture dataset as a Zarr array
fit        fit a GaussianMixture to a Zarr/NumPy dataset on a Dask cluster
predict    write the most probable component (or responsibilities) per row
score      mean log-likelihood, BIC and AIC of a model on a dataset
info       what a model file holds
select     fit a grid of K × covariance types sharing every pass; keep the best by BIC
plot       a model's convergence and its components over a sample of rows (PNG, SVG, PDF)
demo       generate, fit on a local cluster and check recovery, in one go
manifest   write a federation manifest (bounds, roster, privacy budget)
site       serve one site of a federation (its rows stay; Flower SuperNode)
federate   fit over the sites of a federation (Flower; exact secure sums)
=========  ================================================================

``distmix <command> --help`` explains each one's options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import logging
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import distmix
from distmix.cluster import connect, resolve
from distmix.datasets import write_zarr
from distmix.engines.dask import parallel_blocks
from distmix.federated import deploy
from distmix.federated.manifest import Manifest
from distmix.kernels import KERNEL_CHOICES, set_kernel
from distmix.online import WARMUP_ROWS_PER_PARAMETER
from distmix.outputs import check_output_path, staged_directory, write_output
from distmix.persist import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    STREAM_CHECKPOINT_FORMAT,
    atomic_write_bytes,
    check_file_target,
    load_checkpoint,
    load_stream_checkpoint,
)
from distmix.progress import TextProgress, reporting
from distmix.settings import check_settings
from distmix.sources.dataset import open_dataset
from distmix.stepwise import StepSchedule


def _demo(args: argparse.Namespace) -> int:
    """``examples/out_of_core.py`` (shipped as ``distmix.examples``) with the demo's sizes."""
    try:
        # function-level import: the examples may be missing (an editable install made
        # before they existed); the demo says so instead of failing to import the CLI
        from distmix.examples import out_of_core
    except ModuleNotFoundError as error:
        if error.name not in ("distmix.examples", "distmix.examples.out_of_core"):
            raise
        raise ImportError(
            "distmix.examples is missing from this installation (an editable install made "
            "before it existed, or the package run from a source tree): reinstall distmix "
            "(pip install .), or run python examples/out_of_core.py from the repository"
        ) from None

    argv = ["--rows", str(args.rows), "--features", str(args.features)]
    argv += ["--components", str(args.components), "--chunk-rows", str(args.chunk_rows)]
    argv += ["--workers", str(args.workers), "--seed", str(args.seed), "--tol", repr(args.tol)]
    if args.path:
        argv += ["--path", args.path]
    return out_of_core.main(argv)


def _open_data(path: str) -> Any:
    """A dask array over ``path``: a Zarr array (path or fsspec URL) or a ``.npy`` file.

    Either way every task reads its own rows (a ``.npy`` file memory-mapped), so
    the task graph stays small however large the file is.
    """
    return open_dataset(path)


#: whether the command shows tracebacks and worker logs (``--debug``)
_DEBUG = {"on": False}


def _client(spec: str | None) -> Any:
    """A distributed client for ``--cluster`` (``threads``: none, Dask's threaded scheduler).

    A cluster this command starts keeps its workers' logs to critical messages
    (unless ``--debug``): a failing block is reported once, by the command,
    not also as a worker's ``Compute Failed`` traceback.
    """
    if spec == "threads":
        return contextlib.nullcontext(None)
    target = resolve(spec)
    if isinstance(target, str) or target.type not in ("local", "local-cuda"):
        return connect(target)
    if not _DEBUG["on"] and "silence_logs" not in target.cluster:
        cluster = {**target.cluster, "silence_logs": logging.CRITICAL}
        target = dataclasses.replace(target, cluster=cluster)
    # the worker processes start with Ctrl-C ignored (an ignored signal stays ignored
    # in a child): Ctrl-C interrupts this command, which then closes its cluster, instead
    # of every worker printing a traceback of its own
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return connect(target)
    finally:
        signal.signal(signal.SIGINT, previous)


#: flags of ``distmix fit`` that only batch EM uses, and why a stream has no use for them
_BATCH_ONLY = {
    "max_iter": ("--max-iter", "online EM stops after --passes passes over the data"),
    "tol": ("--tol", "online EM has no convergence test; it stops after --passes passes"),
    "n_init": ("--n-init", "a stream is initialised once, from its first window of blocks"),
    "progress": ("--progress", "every update prints a line of its own (see --report-every)"),
}
#: batch EM's defaults for those flags (their parser default is None, to see them given)
_BATCH_DEFAULTS = {"max_iter": 100, "tol": 1e-3, "n_init": 1}
#: flags of ``distmix fit`` that only --stream uses: ``dest`` → flag
_STREAM_ONLY = {
    "passes": "--passes",
    "window": "--window",
    "shuffle": "--no-shuffle",
    "learning_decay": "--learning-decay",
    "learning_offset": "--learning-offset",
    "forgetting_factor": "--forgetting-factor",
    "average_after": "--average-after",
    "warmup_rows": "--warmup-rows",
    "report_every": "--report-every",
    "validation": "--validation",
}
#: the flags of a private fit (``dest`` → flag): all four, or none
_PRIVACY_FLAGS = {
    "epsilon": "--epsilon",
    "delta": "--delta",
    "clip_radius": "--clip-radius",
    "centre": "--centre",
}
#: a private fit's iterations when --max-iter is not given: each one spends its share of
#: the budget, so a private fit runs few (benchmarks/README.md, bench_privacy)
PRIVATE_MAX_ITER = 10
#: estimator parameters whose flag is not ``--`` + the name with dashes
_FLAG_OF_PARAMETER = {"n_components": "--components", "block_size": "--block-rows"}


def _flag(parameter: str) -> str:
    return _FLAG_OF_PARAMETER.get(parameter, "--" + parameter.replace("_", "-"))


def _check_fit_paths(args: argparse.Namespace) -> None:
    """Refuse, before the first pass, files that ``fit`` could not or must not write."""

    def same(a: str, b: str) -> bool:
        return "://" not in a + b and Path(a).resolve() == Path(b).resolve()

    given = [("--out", args.out), ("--checkpoint", args.checkpoint)]
    given += [("DATA", args.data), ("--validation", getattr(args, "validation", None))]
    named = [(flag, path) for flag, path in given if path is not None]
    for i, (flag, path) in enumerate(named):
        for other_flag, other in named[i + 1 :]:
            if same(path, other):
                raise ValueError(
                    f"{flag} and {other_flag} name the same file ({path}): give each its own."
                )
    if args.out is not None:
        check_file_target(args.out, what="--out", kinds=(MODEL_FORMAT,), replace=args.overwrite)
    if args.checkpoint is not None:
        kind = STREAM_CHECKPOINT_FORMAT if args.stream else CHECKPOINT_FORMAT
        # an existing checkpoint is continued (--resume) or started over (--overwrite)
        replace = args.resume or args.overwrite
        if not replace and Path(args.checkpoint).is_file():
            check_file_target(args.checkpoint, what="--checkpoint", kinds=(kind,), replace=True)
            raise FileExistsError(
                f"--checkpoint {args.checkpoint} holds a fit already: add --resume to "
                "continue it, or --overwrite to start over and replace it."
            )
        check_file_target(args.checkpoint, what="--checkpoint", kinds=(kind,), replace=True)


def _check_fit_flags(args: argparse.Namespace) -> None:
    """Refuse flags that the chosen kind of fit would ignore, before anything runs."""
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint PATH: the file to continue from.")
    if args.stream:
        for dest, (flag, reason) in _BATCH_ONLY.items():
            value = getattr(args, dest)
            if value is not None and value is not False:  # --no-progress is harmless
                raise ValueError(
                    f"{flag} does not apply with --stream: {reason}. "
                    "Drop it, or fit by batch EM without --stream."
                )
        for dest, flag in (
            ("passes", "--passes"),
            ("window", "--window"),
            ("report_every", "--report-every"),
        ):
            value = getattr(args, dest)
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be an integer >= 1, got {value}.")
    else:
        for dest, flag in _STREAM_ONLY.items():
            if getattr(args, dest) is not None:
                if dest == "shuffle":
                    flag = "--shuffle" if args.shuffle else "--no-shuffle"
                raise ValueError(f"{flag} applies only to online EM: add --stream, or drop {flag}.")
        if _private(args) and args.max_iter is None:
            args.max_iter = PRIVATE_MAX_ITER
        for dest, default in _BATCH_DEFAULTS.items():
            if getattr(args, dest) is None:
                setattr(args, dest, default)
    _check_privacy_flags(args)


def _private(args: argparse.Namespace) -> bool:
    return any(getattr(args, dest, None) is not None for dest in _PRIVACY_FLAGS)


def _check_privacy_flags(args: argparse.Namespace) -> None:
    """A private fit needs all four flags (distmix never derives the ball from the
    rows), batch EM from one start, and no checkpoint (not yet)."""
    if not _private(args):
        return
    missing = [flag for dest, flag in _PRIVACY_FLAGS.items() if getattr(args, dest) is None]
    if missing:
        raise ValueError(
            f"a private fit needs {', '.join(_PRIVACY_FLAGS.values())}; {', '.join(missing)} "
            "missing. The clipping centre and radius must be public (known without these "
            "rows: the instrument's range, a public sample); distmix never derives them "
            "from the data."
        )
    if args.stream:
        raise ValueError("--epsilon does not apply with --stream: private fits are batch EM.")
    if args.checkpoint:
        raise ValueError("--checkpoint is not supported for private fits (--epsilon) yet.")
    if args.n_init != 1:
        raise ValueError(
            f"--n-init {args.n_init}: a private fit runs one start (every start would "
            "spend the budget again)."
        )
    if args.max_iter < 1:
        raise ValueError(
            f"--max-iter {args.max_iter}: a private fit runs at least one noisy iteration."
        )


def _centre(text: str, n_features: int, where: str = "DATA has") -> np.ndarray:
    """``--centre``: one number for every feature, D comma-separated numbers, or a .npy."""
    if text.endswith(".npy"):
        centre = np.load(text, allow_pickle=False)
    else:
        try:
            centre = np.array([float(v) for v in text.split(",")])
        except ValueError:
            raise ValueError(
                f"--centre {text!r}: give one number, {n_features} comma-separated numbers, "
                "or a .npy file."
            ) from None
    centre = np.asarray(centre, dtype=np.float64).reshape(-1)
    if centre.size == 1:
        centre = np.full(n_features, centre[0])
    if centre.size != n_features:
        raise ValueError(f"--centre has {centre.size} values but {where} {n_features} features.")
    return centre


def _privacy_for(args: argparse.Namespace, n_features: int) -> Any:
    """The ``distmix.Privacy`` of ``--epsilon --delta --clip-radius --centre``, its
    errors naming the flags."""
    try:
        return distmix.Privacy(
            epsilon=args.epsilon,
            delta=args.delta,
            clip_radius=args.clip_radius,
            centre=_centre(args.centre, n_features),
        )
    except ValueError as error:
        message = str(error)
        for words, flag in (
            ("epsilon", "--epsilon"),
            ("delta", "--delta"),
            ("the clipping radius", "--clip-radius"),
            ("the clipping centre", "--centre"),
        ):
            if message.startswith(words):
                message = flag + message[len(words) :]
        raise ValueError(message) from None


def _model_for(args: argparse.Namespace) -> Any:
    """The ``GaussianMixture`` that ``args`` describe, its settings checked (flags named)."""
    settings: dict[str, Any] = {
        "covariance_type": args.covariance_type,
        "reg_covar": args.reg_covar,
        "init_params": args.init_params,
        "random_state": args.random_state,
        "verbose": 0 if args.quiet else 2,
        "verbose_interval": 1,
        "block_size": args.block_rows,
        "split_every": args.split_every,
        "checkpoint": args.checkpoint,
        "resume": args.resume,
        "kernel": args.kernel,
    }
    if args.stream:
        # only the flags given: the estimator's defaults are the stream's defaults
        for name in (
            "learning_decay",
            "learning_offset",
            "forgetting_factor",
            "average_after",
            "warmup_rows",
        ):
            if getattr(args, name) is not None:
                settings[name] = getattr(args, name)
    else:
        settings.update(max_iter=args.max_iter, tol=args.tol, n_init=args.n_init)
    model = distmix.GaussianMixture(args.components, **settings)
    try:
        check_settings(model.get_params())
    except ValueError as error:
        # the estimator names its parameters; a command-line user knows the flags
        message = str(error)
        first = re.match(r"\w+", message)
        if first is not None and first.group() in model.get_params():
            message = _flag(first.group()) + message[first.end() :]
            message = message.replace("must be None or ", "must be ")
        raise ValueError(message) from None
    return model


def _fit(args: argparse.Namespace) -> int:
    _check_fit_flags(args)
    _check_fit_paths(args)
    args.checkpoint_before = _file_state(args.checkpoint)  # for the line after a Ctrl-C
    model = _model_for(args)
    if args.stream:
        return _fit_stream(args, model)
    # the estimator opens DATA itself (by path), so that blocks are whole Zarr chunks,
    # --block-rows rounds to them, and blocks it chose can shrink to fit the workers
    X = open_dataset(args.data, block_rows=args.block_rows)
    rows, features = X.shape
    print(f"{args.data}: {rows:,} rows × {features} features in {X.numblocks[0]} blocks")
    if _private(args):
        model.set_params(privacy=_privacy_for(args, features))
        plan = model.privacy.plan(int(args.max_iter))
        print(
            f"private fit: {args.max_iter} noisy iterations for epsilon={args.epsilon:g}, "
            f"delta={args.delta:g} (zCDP rho={plan.rho:.4g}); rows clipped to radius "
            f"{args.clip_radius:g} about --centre"
        )
    if args.resume and Path(args.checkpoint).is_file():
        state = load_checkpoint(args.checkpoint)
        if state.finished:
            where = "the fit it records had finished; its data are checked, then it is returned"
        elif state.current is not None:
            where = (
                f"initialisation {state.init_index + 1} of {args.n_init} resumes after "
                f"iteration {state.current.n_iter}"
            )
        else:
            where = f"initialisation {state.init_index + 1} of {args.n_init} starts"
        print(f"resuming the fit in {args.checkpoint}: {where}")
    progress_bar = sys.stdout.isatty() if args.progress is None else args.progress
    # one bar for the whole fit: its iterations and the blocks of the pass in progress
    progress = reporting(TextProgress(sys.stdout)) if progress_bar else contextlib.nullcontext()
    with _client(args.cluster) as client:
        if client is not None:
            print(f"Dask cluster at {client.scheduler.address}, dashboard {client.dashboard_link}")
        start = time.perf_counter()
        with progress:
            model.fit(args.data)
        seconds = time.perf_counter() - start
    if _private(args):
        report = model.privacy_
        print(
            f"{model.n_iter_} private iterations in {seconds:.1f}s; spent epsilon="
            f"{report['epsilon']:.6g} at delta={report['delta']:g} (rho={report['rho']:.4g}); "
            "no log-likelihood or row count is released"
        )
    else:
        status = "converged" if model.converged_ else "did not converge"
        print(
            f"{status} after {model.n_iter_} iterations in {seconds:.1f}s; "
            f"mean log-likelihood {model.lower_bound_:.6f}"
        )
    if args.out:
        model.save(args.out, overwrite=args.overwrite)
        print(f"model written to {args.out}")
    return 0


def _fit_stream(args: argparse.Namespace, model: Any) -> int:
    """``distmix fit --stream``: stepwise online EM, one update per window of blocks."""
    X = _open_data(args.data)
    # a Zarr source goes to the estimator as its path, so that the stream reads whole
    # chunks (and --block-rows rounds to them) exactly as distmix.fit_stream(path) does
    source: Any = X if args.data.endswith(".npy") else args.data
    if args.block_rows is not None and source is args.data:
        X = open_dataset(args.data, block_rows=args.block_rows)
    validation = None if args.validation is None else _open_data(args.validation)
    rows, features = X.shape
    if validation is not None and validation.shape[1] != features:
        raise ValueError(
            f"--validation {args.validation} has {validation.shape[1]} features, "
            f"DATA {args.data} has {features}: give held-out rows of the same features."
        )
    print(f"{args.data}: {rows:,} rows × {features} features in {X.numblocks[0]} blocks")
    # the plan of the stream: the flags given, else (as distmix.fit_stream does) those of
    # the stream being resumed, else the defaults; resolved here to print them first
    stored: dict[str, Any] = {}
    seen_before = 0
    if args.resume and Path(args.checkpoint).exists():
        stored, state, position, _ = load_stream_checkpoint(args.checkpoint)
        seen_before = state.n_samples_seen
        if position is not None and position.in_segment:
            where = (
                f"stopped in pass {position.pass_index + 1} over rows "
                f"{position.segment_start:,}–{position.segment_stop:,}"
            )
        else:
            done = position.rows_done if position is not None else 0
            where = f"the first {done:,} rows streamed in full"
        print(
            f"resuming the stream in {args.checkpoint} after {state.n_steps:,} updates "
            f"({state.n_samples_seen:,} rows read; {where})"
        )
    passes = args.passes if args.passes is not None else int(stored.get("n_passes") or 1)
    shuffle = args.shuffle if args.shuffle is not None else bool(stored.get("shuffle", True))
    report_every = (
        args.report_every if args.report_every is not None else _stream_defaults()["report_every"]
    )
    with _client(args.cluster) as client:
        if client is not None:
            print(f"Dask cluster at {client.scheduler.address}, dashboard {client.dashboard_link}")
        # by default one block per thread that runs them: the workers' threads when a
        # client is active, else this machine's cores
        window = args.window or stored.get("window") or parallel_blocks()
        schedule = StepSchedule(
            model.learning_decay, model.learning_offset, model.forgetting_factor
        )
        floor = schedule.forgetting_factor
        print(
            f"online EM: {window} block{'s' * (window != 1)} per update, {passes} "
            f"pass{'es' * (passes != 1)}, blocks {'shuffled' if shuffle else 'in order'}; "
            f"step size (t + {schedule.learning_offset:g})^-{schedule.learning_decay:g}"
            + ("" if floor is None else f", at least {floor:g}")
        )
        start = time.perf_counter()
        model.fit_stream(
            source,
            n_passes=passes,
            window=window,
            shuffle=shuffle,
            validation=validation,
            report_every=report_every,
        )
        seconds = time.perf_counter() - start
    read = model.n_samples_seen_ - seen_before
    held_out = [
        r["validation_log_likelihood"]
        for r in model.stream_history_
        if r["validation_log_likelihood"] is not None
    ]
    if read == 0:
        this_run = "nothing new to read in this run"
    else:
        this_run = f"{read:,} read in this run in {seconds:.1f}s, {read / seconds:,.0f} rows/s"
    print(
        f"streamed {model.n_steps_:,} update{'s' * (model.n_steps_ != 1)} over "
        f"{model.n_samples_seen_:,} rows ({this_run}); "
        f"running mean log-likelihood {model.lower_bound_:.6f}"
        + (f"; held-out {held_out[-1]:.6f}" if held_out else "")
    )
    if args.out:
        model.save(args.out, overwrite=args.overwrite)
        print(f"model written to {args.out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    # the output path is checked before anything is read; it is written all or
    # nothing (a hidden temporary beside it, renamed onto it once complete)
    inputs = {"MODEL": args.model, "DATA": args.data}
    check_output_path(args.out, overwrite=args.overwrite, inputs=inputs)
    model = distmix.load(args.model).set_params(kernel=args.kernel)
    X = _open_data(args.data)
    if args.proba:
        kind, result = "responsibilities", model.predict_proba(X)
    elif args.score_samples:
        kind, result = "log-densities", model.score_samples(X)
    else:
        kind, result = "labels", model.predict(X)
    attributes = {"distmix": {"output": kind, "model": str(args.model), "data": str(args.data)}}
    with _client(args.cluster) as client:
        write_output(
            args.out, result, overwrite=args.overwrite, client=client, attributes=attributes
        )
    print(f"{kind} of {X.shape[0]:,} rows written to {args.out}")
    return 0


def _score(args: argparse.Namespace) -> int:
    model = distmix.load(args.model).set_params(kernel=args.kernel)
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
    model = distmix.load(args.model)
    print(
        f"{args.model}: GaussianMixture, {model.n_components} components × "
        f"{model.n_features_in_} features, covariance_type={model.covariance_type!r}"
    )
    if hasattr(model, "n_steps_"):
        print(
            f"online EM: {model.n_steps_:,} updates over {model.n_samples_seen_:,} rows, "
            f"running mean log-likelihood {model.lower_bound_:.6f}"
        )
    elif hasattr(model, "privacy_"):
        report = model.privacy_
        print(
            f"private fit: {model.n_iter_} noisy iterations, epsilon={report['epsilon']:.6g} "
            f"at delta={report['delta']:g} (rho={report['rho']:.4g}), rows clipped to "
            f"radius {report['clip_radius']:g}; no log-likelihood was released"
        )
    else:
        print(
            f"fit: {model.n_iter_} iterations, converged={model.converged_}, "
            f"mean log-likelihood {model.lower_bound_:.6f}"
        )
    with np.printoptions(precision=4, suppress=True):
        for k in range(model.n_components):
            print(f"  component {k}: weight {model.weights_[k]:.4f}, mean {model.means_[k]}")
    return 0


def _warmup_rows(text: str) -> int | str:
    """``--warmup-rows``: ``auto`` or a whole number (checked with the other settings)."""
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give 'auto' or a whole number, not {text!r}") from None


def _components_range(text: str) -> list[int]:
    """``--components``: ``1-12``, ``2,4,8`` or a mix (``1-4,8``)."""
    values: list[int] = []
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            values += list(range(int(low), int(high) + 1)) if high else [int(low)]
    except ValueError:
        raise ValueError(
            f"--components {text!r}: give a range and/or list, e.g. 1-12 or 2,4,8."
        ) from None
    if not values or min(values) < 1:
        raise ValueError(f"--components {text!r}: numbers of components are at least 1.")
    return sorted(set(values))


def _select(args: argparse.Namespace) -> int:
    grid = _components_range(args.components)
    types = [t.strip() for t in args.covariance_type.split(",") if t.strip()]
    unknown = [t for t in types if t not in ("full", "tied", "diag", "spherical")]
    if unknown or not types:
        raise ValueError(
            f"--covariance-type {args.covariance_type!r}: give full, tied, diag and/or spherical."
        )
    if args.out:
        check_output_path(args.out, overwrite=args.overwrite)
    settings = dict(
        n_init=args.n_init,
        max_iter=args.max_iter,
        tol=args.tol,
        reg_covar=args.reg_covar,
        init_params=args.init_params,
        random_state=args.random_state,
    )
    with _client(args.cluster) as client:
        if client is not None:
            print(f"Dask cluster at {client.scheduler.address}, dashboard {client.dashboard_link}")
        start = time.perf_counter()
        selection = distmix.select(args.data, grid, types, criterion=args.criterion, **settings)
        seconds = time.perf_counter() - start
    print(selection.table())
    print(selection.explanation)
    print(f"{len(grid) * len(types)} candidates in {seconds:.1f}s")
    if args.out:
        selection.best_estimator_.save(args.out, overwrite=args.overwrite)
        print(f"model written to {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    model = distmix.load(args.model)
    features = None
    if args.features is not None:
        try:
            features = [int(f) for f in args.features.split(",")]
        except ValueError:
            raise ValueError(f"--features {args.features!r}: give two indices, e.g. 0,3.") from None
    suffix = Path(args.out).suffix.lower().lstrip(".")
    if suffix not in ("png", "svg", "pdf"):
        raise ValueError(f"--out {args.out}: give a .png, .svg or .pdf path.")
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already exists; pass --overwrite to replace it.")
    X = None if args.data is None else _open_data(args.data)
    try:
        fig = distmix.plot.figure(model, X, features=features, sample=args.sample, seed=args.seed)
    except ValueError as error:
        message = str(error).replace("features must be", "--features must be")
        raise ValueError(message) from None
    image = io.BytesIO()
    fig.savefig(image, format=suffix, dpi=args.dpi)
    atomic_write_bytes(args.out, image.getvalue())  # all of the image, or no file
    print(f"plot of {args.model} written to {args.out}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    _write_dataset(args.out, args)
    return 0


def _write_dataset(path: str, args: argparse.Namespace) -> None:
    start = time.perf_counter()
    settings = dict(seed=args.seed, chunk_rows=args.chunk_rows)
    if "://" in path:  # a remote store: written in place (chunks, then the attributes)
        write_zarr(path, args.rows, args.features, args.components, **settings)
    else:  # all or nothing: written beside, renamed onto PATH once complete
        with staged_directory(path, overwrite=getattr(args, "overwrite", False)) as tmp:
            write_zarr(
                str(tmp), args.rows, args.features, args.components, overwrite=True, **settings
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
    parser.add_argument(
        "--kernel",
        choices=KERNEL_CHOICES,
        help="block kernels: compiled (numba, NumPy blocks), array-api (the reference) or "
        "auto (compiled where it can run); default: DISTMIX_KERNEL, else auto",
    )


_FIT_EXAMPLES = """\
examples:
  distmix fit data.zarr -k 8 --out model.npz
      batch EM on a local Dask cluster
  distmix fit data.zarr -k 8 --stream --checkpoint state.npz --resume --out model.npz --overwrite
      online EM, one pass; rerun the same command after rows were appended to
      data.zarr (or after a crash) to read only what the stream has not read yet
      (--overwrite: replace the model file the previous run wrote)
"""


def _stream_defaults() -> dict[str, Any]:
    """The defaults of ``distmix.fit_stream`` and of the estimator's stream parameters."""
    defaults = {}
    for function in (distmix.fit_stream, distmix.GaussianMixture.__init__):
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults[name] = parameter.default
    return defaults


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
        help="fit a GaussianMixture to a dataset (batch EM, or online EM with --stream)",
        # written wrapped: the raw formatter keeps the examples' layout (and this one's)
        description="""\
Fit a Gaussian mixture to DATA (a Zarr array path or URL, or a .npy file) on a
Dask cluster and save the model. By default by batch EM: every iteration reads
all of DATA and prints a line. With --stream by online EM: see "streaming" below.""",
        epilog=_FIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fit.add_argument("data", metavar="DATA", help="Zarr array (path or fsspec URL) or .npy file")
    fit.add_argument("--components", "-k", type=int, required=True, help="number of components")
    fit.add_argument(
        "--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"]
    )
    fit.add_argument("--out", "-o", metavar="MODEL", help="write the fitted model here (.npz)")
    _add_cluster(fit)
    fit.add_argument(
        "--init-params",
        default="kmeans",
        choices=["kmeans", "k-means++", "random", "random_from_data", "moments"],
        help="how to start (with --stream: from the first window of blocks)",
    )
    fit.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    fit.add_argument("--reg-covar", type=float, default=1e-6, help="added to covariance diagonals")
    fit.add_argument("--block-rows", type=int, help="rows per block (default: the Zarr chunks)")
    fit.add_argument("--split-every", type=int, default=8, help="fan-in of the reduction tree")
    fit.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="write the fit's state here after every iteration (with --stream: every update)",
    )
    fit.add_argument(
        "--resume", action="store_true", help="continue from --checkpoint if it exists"
    )
    fit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out model file, or start over an existing --checkpoint "
        "(without --resume); without it, existing files are refused before the fit starts",
    )
    fit.add_argument(
        "--quiet", "-q", action="store_true", help="no per-iteration (per-update) lines"
    )

    private = fit.add_argument_group(
        "differential privacy (batch EM)",
        description=f"""\
With all four flags the fit is (epsilon, delta)-differentially private for the
individuals whose rows are fitted: every row is clipped to the public ball of
--clip-radius about --centre, and each of --max-iter (default
{PRIVATE_MAX_ITER} here) noisy iterations spends its share of the budget. It starts from a
draw in the ball seeded by --random-state (never from the rows), has no
convergence test and releases no log-likelihood.""",
    )
    _add_privacy_flags(private)

    batch = fit.add_argument_group("batch EM (not with --stream)")
    batch.add_argument(
        "--max-iter",
        type=int,
        help=f"EM iterations at most (default {_BATCH_DEFAULTS['max_iter']})",
    )
    batch.add_argument(
        "--tol",
        type=float,
        help=f"stop when the mean log-likelihood changes less (default {_BATCH_DEFAULTS['tol']:g})",
    )
    batch.add_argument(
        "--n-init",
        type=int,
        help=f"initialisations; the best is kept (default {_BATCH_DEFAULTS['n_init']})",
    )
    batch.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="one progress line for the fit: its iterations and the blocks of the pass "
        "in progress (default: on a terminal)",
    )

    stream_defaults = _stream_defaults()
    stream = fit.add_argument_group(
        "streaming (online EM)",
        description="""\
--stream fits by stepwise online EM: the model is updated after every window
of blocks, folding their statistics into a running average with a decaying
step size, so DATA is read once per pass instead of once per EM iteration.
With --checkpoint the state is saved after every update; rerunning the same
command with --checkpoint state.npz --resume continues an interrupted stream
exactly, or, after rows were appended to the Zarr array, fits only those
(--passes, --window and --no-shuffle, if left out, continue the checkpoint's).
The rows read before are re-read first, hash only, to check they did not change.""",
    )
    stream.add_argument(
        "--stream", action="store_true", help="fit by online EM instead of batch EM"
    )
    stream.add_argument(
        "--passes",
        type=int,
        metavar="N",
        help="passes over DATA (default 1)",
    )
    stream.add_argument(
        "--window",
        type=int,
        metavar="W",
        help="blocks per update (default: one per worker thread, or per core without a cluster)",
    )
    stream.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        help="--no-shuffle reads the blocks in order (default: a random order every pass, "
        "seeded by --random-state)",
    )
    stream.add_argument(
        "--learning-decay",
        type=float,
        metavar="KAPPA",
        help="κ in (0.5, 1] of the step size (t + t0)^-κ of update t "
        f"(default {stream_defaults['learning_decay']:g})",
    )
    stream.add_argument(
        "--learning-offset",
        type=float,
        metavar="T0",
        help="t0 >= 0 of the step size; larger trusts the first updates less "
        f"(default {stream_defaults['learning_offset']:g})",
    )
    stream.add_argument(
        "--forgetting-factor",
        type=float,
        metavar="F",
        help="a floor in (0, 1] on the step size, to follow data that drift (default: none)",
    )
    stream.add_argument(
        "--average-after",
        type=int,
        metavar="N",
        help="keep the average of the parameters of the updates after the N-th (default: "
        "the latest parameters)",
    )
    stream.add_argument(
        "--warmup-rows",
        type=_warmup_rows,
        metavar="N",
        help="begin with batch EM on the first batches holding N rows (default auto: "
        f"{WARMUP_ROWS_PER_PARAMETER} rows per free parameter of the mixture; 0: none)",
    )
    stream.add_argument(
        "--report-every",
        type=int,
        metavar="N",
        help=f"updates between progress lines (default {stream_defaults['report_every']})",
    )
    stream.add_argument(
        "--validation",
        metavar="PATH",
        help="held-out rows (Zarr array or .npy file) whose mean log-likelihood every "
        "progress line shows",
    )
    fit.set_defaults(run=_fit)

    predict = commands.add_parser("predict", help="labels or responsibilities of every row")
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("data", metavar="DATA")
    predict.add_argument(
        "--out",
        "-o",
        required=True,
        help="a local .npy file or Zarr array, written all or nothing (labels: int64, -1 "
        "never written; floats: NaN never written; Zarr chunks checksummed with CRC-32C)",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (only once the new one is complete)",
    )
    what = predict.add_mutually_exclusive_group()
    what.add_argument("--proba", action="store_true", help="responsibilities instead of labels")
    what.add_argument(
        "--score-samples", action="store_true", help="log-density of each row instead of labels"
    )
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

    select = commands.add_parser(
        "select",
        help="fit a grid of numbers of components and covariance types, keep the best",
        description="Fit every candidate - each number of components in --components with "
        "each covariance type - sharing every pass over DATA (one read of each block per "
        "iteration for all of them), print their table (log-likelihood, parameters, BIC, "
        "AIC, ICL, iterations) and keep the best by --criterion.",
    )
    select.add_argument("data", metavar="DATA", help="Zarr array (path or fsspec URL) or .npy")
    select.add_argument(
        "--components", default="1-8", help="numbers of components: 1-12, 2,4,8 (default 1-8)"
    )
    select.add_argument(
        "--covariance-type", default="full,diag", help="comma-separated (default full,diag)"
    )
    select.add_argument("--criterion", default="bic", choices=["bic", "aic", "icl"])
    select.add_argument("--out", "-o", metavar="MODEL", help="write the chosen model here (.npz)")
    select.add_argument("--overwrite", action="store_true", help="replace an existing MODEL")
    select.add_argument("--n-init", type=int, default=1, help="restarts per candidate")
    select.add_argument("--max-iter", type=int, default=100)
    select.add_argument("--tol", type=float, default=1e-3)
    select.add_argument("--reg-covar", type=float, default=1e-6)
    select.add_argument(
        "--init-params",
        default="kmeans",
        choices=["kmeans", "k-means++", "random", "random_from_data", "moments"],
    )
    select.add_argument("--random-state", type=int, default=0)
    _add_cluster(select)
    select.set_defaults(run=_select)

    plot = commands.add_parser(
        "plot",
        help="a model's convergence and its components over a sample of rows",
        description="Draw a fitted model: its mean log-likelihood per iteration (or per "
        "streaming update) and its components as 2-standard-deviation ellipses over a 2-D "
        "view (the mixture's first two principal axes, or --features), with a random sample "
        "of DATA's rows as points. The format follows OUT's suffix (.png, .svg, .pdf).",
    )
    plot.add_argument("model", metavar="MODEL")
    plot.add_argument("data", metavar="DATA", nargs="?", help="rows to draw (Zarr or .npy)")
    plot.add_argument("--out", "-o", required=True, metavar="OUT", help="the image to write")
    plot.add_argument("--features", metavar="I,J", help="two features instead of the axes")
    plot.add_argument("--sample", type=int, default=5_000, help="rows drawn (default 5,000)")
    plot.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    plot.add_argument("--dpi", type=int, default=120, help="resolution of a PNG (default 120)")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    plot.set_defaults(run=_plot)

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
    generate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing Zarr array at OUT (only once the new one is complete)",
    )
    generate.set_defaults(run=_generate)
    _add_federation_commands(commands)
    for command in commands.choices.values():
        command.add_argument(
            "--debug",
            "-v",
            action="store_true",
            help="on failure, print the full traceback (and keep the workers' logs)",
        )
    return parser


def _site(args: argparse.Namespace) -> int:
    # the site's own Dask cluster (Zarr and .npy data), inside its trust domain; in-memory
    # NumPy data is not what a site serves, so 'threads' (no cluster) is the default
    with _client(args.cluster or "threads"):
        return deploy.run_site(
            args.data,
            args.name,
            args.manifest,
            args.socket,
            superlink=args.superlink,
            root_certificates=args.root_certificates,
            auth_key=args.auth_key,
            node_port=args.node_port,
            block_size=args.block_rows,
            weights_out=args.weights_out,
            ledger=args.ledger,
        )


def _manifest(args: argparse.Namespace) -> int:
    """``distmix manifest``: the public document every site of a federation accepts."""
    sites = tuple(name.strip() for name in args.sites.split(",") if name.strip())
    centre: Any = 0.0
    if args.centre is not None:
        values = _centre(args.centre, args.features, "--features gives")
        centre = float(values[0]) if np.all(values == values[0]) else tuple(values.tolist())
    dp: dict[str, Any] = {}
    if _private(args) or args.dp_iterations is not None:
        missing = [flag for dest, flag in _PRIVACY_FLAGS.items() if getattr(args, dest) is None]
        if args.dp_iterations is None:
            missing.append("--dp-iterations")
        if missing:
            raise ValueError(
                "a private manifest needs --epsilon, --delta, --clip-radius, --centre and "
                f"--dp-iterations; {', '.join(missing)} missing."
            )
        dp = {
            "dp_epsilon": args.epsilon,
            "dp_delta": args.delta,
            "dp_clip_radius": args.clip_radius,
            "dp_iterations": args.dp_iterations,
            "dp_noise": args.dp_noise,
        }
    manifest = Manifest(
        sites=sites,
        n_features=args.features,
        max_rows_per_site=args.max_rows_per_site,
        radius=args.radius,
        centre=centre,
        mode=args.mode,
        threshold=args.threshold,
        **dp,
    )
    target = Path(args.out)
    if target.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists: give --overwrite to replace it.")
    atomic_write_bytes(target, manifest.to_json().encode())
    kind = "private " if manifest.private else ""
    print(
        f"{kind}manifest for {len(sites)} sites ({manifest.mode}) written to {args.out}; "
        f"SHA-256 {manifest.digest.hex()}"
    )
    if manifest.private:
        plan = manifest.privacy_plan()
        print(
            f"privacy: epsilon={plan.epsilon:g}, delta={plan.delta:g} (rho={plan.rho:.4g}) over a "
            f"first release and {plan.releases} iterations; noise {manifest.dp_noise}"
            + (
                f", in shares over any {manifest.noise_parts} sites"
                if manifest.noise_parts > 1
                else ""
            )
        )
    return 0


def _check_federate_privacy(args: argparse.Namespace) -> int:
    """The iterations of a federated fit; privacy flags, if given, must be the manifest's
    (its sites enforce it)."""
    manifest = Manifest.from_json(Path(args.manifest).read_text())
    privacy = manifest.privacy()
    if _private(args):
        if privacy is None:
            raise ValueError(
                f"--epsilon: the manifest {args.manifest} has no privacy budget, and its sites "
                "enforce the manifest they accepted: write a private one (distmix manifest "
                "--epsilon ... --dp-iterations ...) and have every site accept it."
            )
        given = {
            "--epsilon": (args.epsilon, privacy.epsilon),
            "--delta": (args.delta, privacy.delta),
            "--clip-radius": (args.clip_radius, privacy.clip_radius),
        }
        for flag, (value, pinned) in given.items():
            if value is not None and float(value) != float(pinned):
                raise ValueError(f"{flag} {value:g} differs from the manifest's ({pinned:g}).")
        if args.centre is not None and not np.array_equal(
            _centre(args.centre, manifest.n_features, "the manifest has"), privacy.centre
        ):
            raise ValueError("--centre differs from the manifest's centre.")
    if privacy is not None:
        allowed = int(manifest.dp_iterations or 1)
        if args.max_iter is None:
            return allowed
        if not 1 <= args.max_iter <= allowed:
            raise ValueError(
                f"--max-iter {args.max_iter}: a fit under this private manifest runs 1 to "
                f"{allowed} iterations (its dp_iterations)."
            )
    return 100 if args.max_iter is None else int(args.max_iter)


def _federate(args: argparse.Namespace) -> int:
    max_iter = _check_federate_privacy(args)
    deploy.run_federation(
        args.manifest,
        args.superlink,
        args.root_certificates,
        args.out,
        components=args.components,
        covariance_type=args.covariance_type,
        init_params=args.init_params,
        means_init=args.means_init,
        max_iter=max_iter,
        tol=args.tol,
        reg_covar=args.reg_covar,
        random_state=args.random_state,
        timeout=args.round_timeout,
        overwrite=args.overwrite,
        personal_weights=args.personal_weights,
    )
    print(f"distmix federate: model written to {args.out}")
    return 0


def _add_federation_commands(commands: Any) -> None:
    site = commands.add_parser(
        "site",
        help="serve one site of a federation: its rows stay here, only masked sums leave",
        description="Serve a site: its data behind a local Unix socket that answers only "
        "distmix's fixed requests, and (with --superlink) a Flower SuperNode with TLS and "
        "the site's registered key. Runs until interrupted.",
    )
    site.add_argument("data", metavar="DATA", help="the site's rows: Zarr array or .npy file")
    site.add_argument("--name", required=True, help="this site's name in the manifest")
    site.add_argument("--manifest", required=True, help="the federation manifest (JSON) accepted")
    site.add_argument("--socket", required=True, help="Unix socket path the site listens on")
    site.add_argument("--superlink", help="HOST:PORT of the federation's SuperLink")
    site.add_argument("--root-certificates", help="CA certificate of the SuperLink (PEM)")
    site.add_argument("--auth-key", help="this site's SuperNode private key (registered)")
    site.add_argument("--node-port", type=int, help="port of the SuperNode's local API")
    site.add_argument("--block-rows", type=int, help="rows per block of the site's engine")
    site.add_argument(
        "--cluster",
        metavar="CONFIG_OR_ADDRESS",
        help="the site's own Dask cluster (a cluster_configs YAML or bundled name, or a "
        "scheduler address inside the site); default: threads in this process",
    )
    site.add_argument(
        "--ledger",
        metavar="JSON",
        help="keep the site's ledger (which requests it released over which sites) in this "
        "file across restarts (recommended)",
    )
    site.add_argument(
        "--weights-out",
        metavar="NPY",
        help="when stopping, write this site's own mixing weights here (personalised fits)",
    )
    site.set_defaults(run=_site)

    federate = commands.add_parser(
        "federate",
        help="fit a GaussianMixture over the sites of a federation (Flower)",
        description="Submit distmix's Flower app to the SuperLink: the EM loop runs on the "
        "coordinator; every pass is one round of exact secure sums over the sites.",
    )
    federate.add_argument("--manifest", required=True, help="the federation manifest (JSON)")
    federate.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    federate.add_argument("--root-certificates", required=True, help="CA certificate (PEM)")
    federate.add_argument("--components", "-k", type=int, required=True)
    federate.add_argument(
        "--covariance-type", default="full", choices=["full", "tied", "diag", "spherical"]
    )
    federate.add_argument(
        "--init-params", default="moments", help="'moments' (default: moves no row)"
    )
    federate.add_argument("--means-init", help=".npy file of starting means (K, D)")
    federate.add_argument(
        "--max-iter",
        type=int,
        help="EM iterations at most (default 100; a private manifest's dp_iterations)",
    )
    federate.add_argument("--tol", type=float, default=1e-3)
    federate.add_argument("--reg-covar", type=float, default=1e-6)
    federate.add_argument("--random-state", type=int, default=0)
    federate.add_argument(
        "--round-timeout", type=float, default=120.0, help="seconds a round waits for sites"
    )
    federate.add_argument("--out", "-o", required=True, metavar="MODEL", help="model file (.npz)")
    federate.add_argument("--overwrite", action="store_true", help="replace an existing MODEL")
    federate.add_argument(
        "--personal-weights",
        action="store_true",
        help="each site keeps its own mixing weights (never sent; see distmix site --weights-out)",
    )
    _add_privacy_flags(
        federate.add_argument_group(
            "differential privacy",
            description="A private federation's budget is its manifest's (every site "
            "enforces it): these flags, if given, must match it.",
        )
    )
    federate.set_defaults(run=_federate)

    manifest = commands.add_parser(
        "manifest",
        help="write a federation manifest: the public bounds, roster and privacy budget",
        description="Write the manifest every site of a federation accepts (JSON). Its "
        "SHA-256, printed, is what the sites and the coordinator agree on.",
    )
    manifest.add_argument("out", metavar="OUT.json")
    manifest.add_argument("--sites", required=True, help="the sites' names, comma-separated")
    manifest.add_argument("--features", type=int, required=True, help="columns of every site")
    manifest.add_argument(
        "--max-rows-per-site", type=int, required=True, help="bound on one site's rows"
    )
    manifest.add_argument(
        "--radius",
        type=float,
        default=float(2**32),
        help="rows and means lie within it of --centre (bounds the sums; default 2**32)",
    )
    manifest.add_argument("--mode", default="threshold", choices=["threshold", "all-or-nothing"])
    manifest.add_argument("--threshold", type=int, help="shares needed to unmask (a majority)")
    manifest.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    private = manifest.add_argument_group(
        "differential privacy",
        description="With these, the federation is private: its sites answer only private "
        "E-steps about the ball of --clip-radius around --centre, at most --dp-iterations "
        "of them and one first release, under the budget (--epsilon, --delta).",
    )
    _add_privacy_flags(private)
    private.add_argument(
        "--dp-iterations", type=int, help="the most private iterations a fit may run"
    )
    private.add_argument(
        "--dp-noise",
        default="distributed",
        choices=["distributed", "central"],
        help="who adds the noise: every site a share (default), or the coordinator",
    )
    manifest.set_defaults(run=_manifest)


def _add_privacy_flags(group: Any) -> None:
    group.add_argument("--epsilon", type=float, help="the whole fit's epsilon (> 0)")
    group.add_argument(
        "--delta", type=float, help="the whole fit's delta (well below 1 / the number of rows)"
    )
    group.add_argument(
        "--clip-radius", type=float, metavar="B", help="public radius rows are clipped to"
    )
    group.add_argument(
        "--centre",
        metavar="X0",
        help="public clipping centre: one number for every feature, D comma-separated "
        "numbers, or a .npy file",
    )


def _file_state(path: str | None) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a file, or ``None``: whether a run has written it since."""
    try:
        info = os.stat(path) if path else None
    except OSError:
        return None
    return None if info is None else (info.st_mtime_ns, info.st_size)


def _after_interrupt(args: argparse.Namespace) -> str:
    """What an interrupted command leaves behind, for its last line."""
    checkpoint = getattr(args, "checkpoint", None)
    if args.command == "fit" and checkpoint and Path(checkpoint).is_file():
        before = getattr(args, "checkpoint_before", None)
        if args.resume or _file_state(checkpoint) != before:
            step = "update" if args.stream else "iteration"
            return (
                f"the fit's state after its last finished {step} is in {checkpoint}: "
                "rerun the same command with --resume to continue"
            )
        return (  # --overwrite, interrupted before this run wrote its first checkpoint
            f"no model was written, and {checkpoint} still holds the fit it held before"
        )
    if args.command == "generate" and "://" in args.out:
        return f"{args.out} may be incomplete: generate it again with --overwrite"
    if args.command in ("fit", "predict", "generate", "demo"):
        return "no model or output was written"
    return "nothing was written"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _DEBUG["on"] = bool(getattr(args, "debug", False))
    if not _DEBUG["on"]:
        # an interrupted Dask client leaves futures whose errors asyncio would log
        # ("Task exception was never retrieved") after the command has said it all
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        if getattr(args, "kernel", None) is not None:
            set_kernel(args.kernel)  # this process, and the local cluster's workers it starts
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"\ndistmix {args.command}: interrupted; {_after_interrupt(args)}.", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError) as error:
        # bad input, a corrupt or missing dataset, a model file refused, a scheduler that
        # does not answer: say what and where in one line (outputs are written only
        # once complete, so nothing partial is left)
        if _DEBUG["on"]:
            traceback.print_exc()
        print(f"distmix {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:  # a bug or an unexpected failure: still one line
        if _DEBUG["on"]:
            traceback.print_exc()
        print(
            f"distmix {args.command}: error: {type(error).__name__}: {_one_line(error)} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """The ``distmix`` command's entry point: :func:`main`, then exit with its status.

    After Ctrl-C the process leaves at once: an orderly interpreter shutdown would
    wait for worker threads still inside a block (a Dask threaded block or a
    kernel can run for a long time, and one was seen holding the exit for over a
    minute). Outputs and checkpoints are complete by then (they are written
    atomically) and the cluster was closed on the way out of the command.
    """
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    run()
