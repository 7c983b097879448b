"""Streaming (stepwise online EM) over a Zarr store: accuracy, bounded memory, throughput.

What is measured
----------------
Every dataset is a 2-D float64 Zarr array of rows drawn from a known,
well-separated full-covariance mixture (``distmix.datasets.random_mixture``;
the rows of chunk ``j`` come from ``distmix.datasets.sample_rows``, exactly as
``distmix.datasets.write_zarr`` would write them, one chunk per core at a
time). All fits use K = the number of components the data were drawn from.

1. **Accuracy of one pass.** On ``--rows`` rows (2,000,000 × 16, K = 8), both
   fits start from the same Params (``distmix.GaussianMixture(K, max_iter=0)``,
   i.e. k-means‖ + Lloyd without any EM iteration, on the store's first
   ``--init-rows`` rows) passed as ``weights_init``/``means_init``/
   ``precisions_init``:

   * batch EM, ``GaussianMixture(...).fit(path)`` run to convergence
     (``--tol``, ``--max-iter``): one pass over the store per iteration;
   * one pass of online EM, ``distmix.fit_stream(path, ...)`` with the defaults
     (``n_passes=1``, ``shuffle=True``, ``window`` = one block per core,
     ``learning_decay=0.6``, ``learning_offset=1``).

   Both are scored on ``--heldout-rows`` rows of the same mixture drawn with
   another seed (``model.score``: mean log-likelihood per row). Target:
   **batch − stream ≤ 0.02 nats per row**. The held-out log-likelihood of the
   start and of the true mixture bracket the two. ``--sweep`` repeats the
   stream for a few (learning_decay, learning_offset) pairs and with
   Polyak–Ruppert averaging; ``--separation`` (default 8) moves the true means
   closer together, for a harder fit.

2. **Memory is bounded.** A store of ``--memory-rows`` (N) rows and one of
   ``--memory-factor`` × N rows are each streamed (one pass, same settings) in a
   fresh Python process (this script re-invoked with a hidden ``--child``
   option), which reports its peak resident set size (``VmHWM`` in
   ``/proc/self/status``: the kernel's high-water mark of the process's own
   address space, no sampling gap), its RSS after the imports, and its RSS at
   every 10th update. (Not ``ru_maxrss``: Linux carries it across ``execve``,
   so a child's value starts at its parent's peak.)
   Target: **peak(10·N) / peak(N) − 1 < 10 %**.

3. **Throughput.** Over the larger store, in this process, interleaved
   (``--repeats`` rounds in rotating order after one warm-up of each; medians):
   ``stream`` = one ``fit_stream`` pass; ``read`` =
   ``dask.array.from_zarr(path).sum().compute()`` (every chunk read and decoded
   once, same chunks); ``batch iteration`` = one EM iteration over the same
   blocks (``distmix.em.e_step(DaskEngine(open_dataset(path), persist=False))``
   then ``m_step``). Target: **stream rows/s ÷ read rows/s ≥ 0.5** (issue 12,
   with the fused compiled kernel; issue 4 set 0.7). One pass of online EM does
   the same E-step work as one batch iteration, plus one M-step per update, and
   reads each window while the previous one updates the model, so stream ≈
   batch iteration is expected; where the E-step is compute bound the ratio to
   the read cannot reach the target.
   Three upper bounds make that a measurement
   (E-step work alone, no reading, over the read): distmix's E-step on every
   core; only its BLAS products (the quadratic forms' GEMMs and the second
   moments' SYRKs); and only the flop floor (triangular quadratic forms and
   the upper triangle of ``r x xᵀ``: ``2·K·D·(D+1)`` flops per row) at this
   machine's DGEMM rate.

Every verdict is printed (PASS/FAIL); the exit status is 0 whatever they say,
and non-zero only if the script itself fails. Other jobs on the machine skew
every figure: the load average is printed before and after.

Usage
-----
::

    python benchmarks/bench_stream.py --quick    # 200,000-row stores: ~1-2 min
    python benchmarks/bench_stream.py            # 2,000,000 and 20,000,000 rows (2.5 GiB)
    python benchmarks/bench_stream.py --sweep    # also a small learning-rate sweep
    python benchmarks/bench_stream.py --keep     # keep the stores; a later run reuses them
    python benchmarks/bench_stream.py --only memory --chunk-rows 65536

Stores go to ``--workdir`` (default the temp dir) and are deleted at the end
unless ``--keep``; a kept store with the same shape, seed and chunks is reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import sklearn
import threadpoolctl
import zarr
from _machine import cpu_model, load_average, n_cores

import distmix
import distmix.datasets
import distmix.em
import distmix.mstep
import distmix.sources.blocks
import distmix.sources.dataset
import distmix.sources.zarr_write
from distmix.params import Params

TARGET_GAP = 0.02  # nats per row, batch − stream
TARGET_MEMORY_GROWTH = 0.10  # peak(10·N) / peak(N) − 1
TARGET_STREAM_OVER_READ = 0.5  # rows/s ratio (issue 12, with the compiled kernel; 0.7 in issue 4)
REG_COVAR = 1e-6
HELDOUT_SEED_OFFSET = 1  # held-out rows: the same mixture, rows drawn with seed + this
STORE_TAG = "benchmarks/bench_stream.py"
MIB = 2**20

FULL = {"rows": 2_000_000, "heldout": 200_000, "memory_rows": 2_000_000, "repeats": 3}
QUICK = {"rows": 200_000, "heldout": 20_000, "memory_rows": 200_000, "repeats": 2}
#: (learning_decay, learning_offset, average_after as a share of the updates) for --sweep
SWEEP = [
    (0.51, 1.0, None),
    (0.6, 1.0, None),
    (0.75, 1.0, None),
    (0.9, 1.0, None),
    (1.0, 1.0, None),
    (0.6, 10.0, None),
    (0.75, 10.0, None),
    (1.0, 10.0, None),
    (0.6, 1.0, 0.5),
]


# -- results and the table ---------------------------------------------------------
@dataclass
class Result:
    """One line of the final table: a figure, its target and whether it was met."""

    label: str
    value: float
    unit: str = ""
    fmt: str = ".4f"
    target: str = ""
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "FAIL")


def print_table(results: list[Result]) -> None:
    width = max(len(r.label) for r in results) + 2
    print(f"{'measure':<{width}}{'value':>16}  {'target':<12}verdict")
    print("-" * (width + 38))
    for r in results:
        value = f"{r.value:{r.fmt}} {r.unit}".rstrip()
        print(f"{r.label:<{width}}{value:>16}  {r.target:<12}{r.verdict}")


# -- the environment ------------------------------------------------------------------


def print_header(workdir: str) -> None:
    memory = psutil.virtual_memory()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"date: {now}   host: {cpu_model()}, {n_cores()} cores, "
        f"{memory.total / 2**30:.1f} GiB memory ({memory.available / 2**30:.1f} GiB available)"
    )
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  dask {dask.__version__}  "
        f"zarr {zarr.__version__}  scikit-learn {sklearn.__version__}  "
        f"distmix {distmix.__version__}"
    )
    blas = ", ".join(
        f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
        for p in threadpoolctl.threadpool_info()
        if p.get("user_api") == "blas"
    )
    print(f"BLAS: {blas or 'unknown'}")
    print(
        f"workdir {workdir}: {shutil.disk_usage(workdir).free / 2**30:.1f} GiB free   "
        f"load average (1, 5, 15 min): {load_average()}"
    )
    print(flush=True)


# -- the stores -------------------------------------------------------------------------
@dataclass(frozen=True)
class Store:
    path: str
    n_rows: int
    n_features: int
    chunk_rows: int

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.n_features * 8

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_rows / self.chunk_rows)


@dataclass(frozen=True)
class DataSpec:
    """The mixture the rows are drawn from and how they are cut into chunks."""

    n_features: int
    n_components: int
    seed: int
    chunk_rows: int
    separation: float

    def mixture(self) -> distmix.datasets.TrueMixture:
        return distmix.datasets.random_mixture(
            self.n_features, self.n_components, self.seed, self.separation
        )

    def tag(self, n: int) -> dict[str, Any]:
        """What a store records about itself, so that a kept one can be reused."""
        return {"generator": STORE_TAG, "rows": n, **dataclasses.asdict(self)}

    def file_name(self, n: int) -> str:
        return (
            f"distmix-bench-stream-{n}x{self.n_features}-k{self.n_components}-seed{self.seed}"
            f"-sep{self.separation:g}-c{self.chunk_rows}.zarr"
        )


def write_store(path: str, n: int, spec: DataSpec) -> None:
    """The rows ``write_zarr(path, n, D, K, seed, chunk_rows)`` writes, one chunk per core.

    (Exactly those rows at the default separation, 8.) Every chunk has its own
    random stream (``sample_rows``), so chunks can be drawn in any order and on
    any thread; the attributes come last, as in ``write_zarr``.
    """
    mixture = spec.mixture()
    rows = spec.chunk_rows
    array = distmix.sources.zarr_write.create_zarr_array(
        path, (n, spec.n_features), rows, overwrite=True
    )

    def write_chunk(start: int) -> None:
        stop = min(start + rows, n)
        array[start:stop] = distmix.datasets.sample_rows(mixture, start, stop, spec.seed, rows)

    # NumPy releases the GIL in the random draws and products: one chunk per core
    with threadpoolctl.threadpool_limits(1), ThreadPoolExecutor(max(1, n_cores())) as pool:
        list(pool.map(write_chunk, range(0, n, rows)))
    array.attrs.update({**mixture.to_attrs(), "bench_stream": spec.tag(n)})


def ensure_store(workdir: str, n: int, spec: DataSpec, generated: list[str]) -> Store:
    """A store of ``n`` rows in ``workdir``: reused if a kept one matches, else written."""
    d, chunk_rows = spec.n_features, spec.chunk_rows
    path = os.path.join(workdir, spec.file_name(n))
    store = Store(path, n, d, chunk_rows)
    if path in generated:
        return store  # made (or found) earlier in this run
    generated.append(path)
    tag = spec.tag(n)
    try:
        if dict(zarr.open_array(path, mode="r").attrs).get("bench_stream") == tag:
            print(f"reusing {path} (kept by an earlier run)", flush=True)
            return store
    except Exception:  # absent, or not a finished array of ours: write it
        pass
    free = shutil.disk_usage(workdir).free
    if store.nbytes + 2**30 > free:
        raise SystemExit(
            f"not enough disk in {workdir} for {n:,} x {d} rows ({store.nbytes / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB free): pass --workdir on a larger disk or fewer rows."
        )
    print(
        f"writing {path}: {n:,} x {d} float64 ({store.nbytes / MIB:,.0f} MiB, "
        f"{store.n_chunks:,} chunks of {chunk_rows:,} rows) ...",
        end=" ",
        flush=True,
    )
    start = time.perf_counter()
    write_store(path, n, spec)
    seconds = time.perf_counter() - start
    print(f"{seconds:.1f} s ({store.nbytes / MIB / seconds:.0f} MiB/s)", flush=True)
    return store


def cached_share(path: str) -> float | None:
    """Share of the store's bytes now in the page cache (util-linux ``fincore``), if known."""
    if shutil.which("fincore") is None:
        return None
    files = [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    total = sum(os.path.getsize(f) for f in files)
    resident = 0
    for i in range(0, len(files), 256):
        command = ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES"]
        try:
            out = subprocess.run(
                command + files[i : i + 256], capture_output=True, text=True, check=True
            ).stdout
            resident += sum(int(word) for word in out.split())
        except (OSError, subprocess.CalledProcessError, ValueError):
            return None
    # pages are counted whole: a file's last page can count a little more than its bytes
    return min(resident / total, 1.0) if total else None


# -- shared pieces ----------------------------------------------------------------------
def initial_params(store: Store, k: int, init_rows: int, seed: int) -> Params:
    """The common start: k-means (k-means‖ + Lloyd) on the store's first rows, no EM iteration.

    Rows are drawn independently, so the first rows are a random sample of the mixture.
    """
    rows = np.asarray(zarr.open_array(store.path, mode="r")[: min(init_rows, store.n_rows)])
    start = distmix.GaussianMixture(k, max_iter=0, random_state=seed).fit(rows)
    return Params.from_precisions(start.weights_, start.means_, start.precisions_, "full")


def init_kwargs(params: Params) -> dict[str, Any]:
    return {
        "weights_init": params.weights,
        "means_init": params.means,
        "precisions_init": params.precisions,
    }


def heldout_log_likelihood(params: Params, heldout: np.ndarray) -> float:
    """Mean log-likelihood per held-out row under ``params`` (one in-memory pass)."""
    engine = distmix.LocalEngine(heldout, None, 8192, 8)
    return distmix.em.mean_log_likelihood_of(engine, params)


def stream_once(
    store: Store, k: int, start: Params, window: int, **kwargs: Any
) -> distmix.GaussianMixture:
    """One pass of online EM over the store, from ``start``, otherwise fit_stream's defaults."""
    return distmix.fit_stream(
        store.path, n_components=k, window=window, random_state=0, **init_kwargs(start), **kwargs
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()  # no collector pause from the previous contender's garbage
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# -- 1. accuracy ------------------------------------------------------------------------
def measure_accuracy(s: argparse.Namespace, store: Store, start: Params) -> list[Result]:
    k, d = s.components, s.features
    truth = s.spec.mixture()
    heldout = distmix.datasets.sample_rows(
        truth, 0, s.heldout_rows, s.seed + HELDOUT_SEED_OFFSET, s.chunk_rows
    )
    true_params = Params.from_covariances(truth.weights, truth.means, truth.covariances, "full")
    ll_true = heldout_log_likelihood(true_params, heldout)
    ll_start = heldout_log_likelihood(start, heldout)
    print(
        f"[1] accuracy: {store.n_rows:,} x {d}, K={k} (separation {s.separation:g}), "
        f"{store.n_chunks} chunks of "
        f"{store.chunk_rows:,} rows; held-out {s.heldout_rows:,} rows (seed "
        f"{s.seed + HELDOUT_SEED_OFFSET})",
        flush=True,
    )

    batch_s, batch = timed(
        lambda: distmix.GaussianMixture(
            k, tol=s.tol, max_iter=s.max_iter, random_state=s.seed, **init_kwargs(start)
        ).fit(store.path)
    )
    ll_batch = batch.score(heldout)
    print(
        f"  batch EM: {batch.n_iter_} iterations (= passes over the store), converged "
        f"{batch.converged_} at tol {s.tol:g}, {batch_s:.1f} s "
        f"({batch_s / max(batch.n_iter_, 1):.2f} s per iteration, blocks kept in memory by "
        "persist='auto' where they fit)",
        flush=True,
    )

    n_updates = math.ceil(store.n_chunks / s.window)
    report_every = max(1, n_updates // 8)
    stream_s, stream = timed(
        lambda: stream_once(
            store, k, start, s.window, validation=heldout, report_every=report_every
        )
    )
    ll_stream = stream.score(heldout)
    last = stream.stream_history_[-1]
    print(
        f"  stream: 1 pass, window {s.window} chunks = {s.window * store.chunk_rows:,} rows per "
        f"update, {stream.n_steps_} updates, {stream.n_samples_seen_:,} rows seen, "
        f"learning_decay {stream.learning_decay}, learning_offset {stream.learning_offset}, "
        f"last step size {last['step_size']:.4f}; {stream_s:.1f} s (with "
        f"{sum(r['validation_log_likelihood'] is not None for r in stream.stream_history_)} "
        "held-out scorings)",
        flush=True,
    )
    curve = "  ".join(
        f"{r['n_samples_seen'] / store.n_rows:.0%}: {r['validation_log_likelihood']:.4f}"
        for r in stream.stream_history_
        if r["validation_log_likelihood"] is not None
    )
    print(f"  stream held-out ll by share of the pass read: {curve}")
    print(
        "  parameters, batch vs stream (same component order, one start): max |d weight| "
        f"{np.max(np.abs(batch.weights_ - stream.weights_)):.2e}, max |d mean| "
        f"{np.max(np.abs(batch.means_ - stream.means_)):.2e}, max |d covariance| "
        f"{np.max(np.abs(batch.covariances_ - stream.covariances_)):.2e}"
    )
    gap = ll_batch - ll_stream
    print(
        f"  held-out ll: start {ll_start:.5f}  stream {ll_stream:.5f}  batch {ll_batch:.5f}  "
        f"true mixture {ll_true:.5f};  batch - stream {gap:.5f}",
        flush=True,
    )
    if s.sweep:
        sweep(s, store, start, heldout, ll_batch, n_updates)
    print()
    return [
        Result("held-out ll of the start (k-means)", ll_start, "nats"),
        Result(f"held-out ll, batch EM ({batch.n_iter_} passes)", ll_batch, "nats"),
        Result(f"held-out ll, stream (1 pass, {stream.n_steps_} updates)", ll_stream, "nats"),
        Result("held-out ll, true mixture", ll_true, "nats"),
        Result("gap batch - stream", gap, "nats", ".5f", f"<= {TARGET_GAP}", gap <= TARGET_GAP),
        Result(
            f"stream updates ({s.window} x {store.chunk_rows:,} rows each)",
            stream.n_steps_,
            "",
            ".0f",
        ),
        Result("batch EM fit", batch_s, "s", ".1f"),
        Result("stream pass (with scorings)", stream_s, "s", ".1f"),
    ]


def sweep(
    s: argparse.Namespace,
    store: Store,
    start: Params,
    heldout: np.ndarray,
    ll_batch: float,
    n_updates: int,
) -> None:
    print(
        f"  sweep: one pass each, window {s.window}, {n_updates} updates; held-out ll and "
        "batch - stream"
    )
    print(f"    {'decay':>6}{'offset':>8}{'average_after':>15}{'held-out ll':>13}{'gap':>10}")
    for decay, offset, share in SWEEP:
        after = None if share is None else int(share * n_updates)
        model = stream_once(
            store,
            s.components,
            start,
            s.window,
            learning_decay=decay,
            learning_offset=offset,
            average_after=after,
        )
        ll = model.score(heldout)
        shown = "-" if after is None else str(after)
        print(f"    {decay:>6}{offset:>8g}{shown:>15}{ll:>13.5f}{ll_batch - ll:>10.5f}", flush=True)


# -- 2. memory -------------------------------------------------------------------------
@dataclass
class ChildRun:
    n_rows: int
    seconds: float
    peak_rss: int
    rss_after_imports: int
    n_steps: int
    rss_by_rows: list[tuple[int, int]] = field(default_factory=list)


def stream_in_child(store: Store, k: int, window: int, init_file: str) -> ChildRun:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        store.path,
        "--child-init",
        init_file,
        "--components",
        str(k),
        "--window",
        str(window),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"the child streaming {store.path} failed (exit {done.returncode}):\n{done.stderr}"
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return ChildRun(
        store.n_rows,
        report["seconds"],
        report["peak_rss"],
        report["rss_after_imports"],
        report["n_steps"],
        [tuple(pair) for pair in report["rss_by_rows"]],
    )


def peak_rss_of_this_process() -> int:
    """Bytes: the high-water mark of this process's resident set since its ``execve``.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` would not do: Linux keeps it across
    ``execve``, so a child started by a 250 MiB parent reports at least 250 MiB.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status: the memory part needs Linux")


def child_main(path: str, init_file: str, k: int, window: int) -> int:
    """In a fresh process: stream ``path`` once, print what memory it took as one JSON line."""
    rss_after_imports = psutil.Process().memory_info().rss
    with np.load(init_file) as f:
        start = {name: f[name] for name in ("weights_init", "means_init", "precisions_init")}
    rss_by_rows: list[tuple[int, int]] = []

    def record(entry: Any) -> None:
        rss_by_rows.append((int(entry.n_samples_seen), psutil.Process().memory_info().rss))

    began = time.perf_counter()
    model = distmix.fit_stream(
        path,
        n_components=k,
        window=window,
        random_state=0,
        callback=record,
        report_every=10,
        **start,
    )
    seconds = time.perf_counter() - began
    peak = peak_rss_of_this_process()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss": peak,
                "rss_after_imports": rss_after_imports,
                "n_steps": int(model.n_steps_),
                "rss_by_rows": rss_by_rows,
            }
        )
    )
    return 0


def measure_memory(
    s: argparse.Namespace, small: Store, large: Store, start: Params
) -> list[Result]:
    print(
        f"[2] memory: one stream pass in a fresh process over {small.n_rows:,} and "
        f"{large.n_rows:,} rows x {small.n_features} ({small.nbytes / MIB:,.0f} and "
        f"{large.nbytes / MIB:,.0f} MiB on disk)",
        flush=True,
    )
    init_file = os.path.join(s.workdir, f"distmix-bench-stream-init-{os.getpid()}.npz")
    np.savez(init_file, **init_kwargs(start))
    runs = []
    try:
        for store in (small, large):
            run = stream_in_child(store, s.components, s.window, init_file)
            runs.append(run)
            trace = run.rss_by_rows
            picks = sorted({0, len(trace) // 2, len(trace) - 1}) if trace else []
            along = ", ".join(
                f"{trace[i][0] / run.n_rows:.0%} {trace[i][1] / MIB:.0f}" for i in picks
            )
            print(
                f"  {run.n_rows:>12,} rows: peak RSS {run.peak_rss / MIB:.0f} MiB (after imports "
                f"{run.rss_after_imports / MIB:.0f} MiB), {run.n_steps} updates in "
                f"{run.seconds:.1f} s ({run.n_rows / run.seconds:,.0f} rows/s); RSS MiB along "
                f"the pass: {along}",
                flush=True,
            )
    finally:
        os.remove(init_file)
    growth = runs[1].peak_rss / runs[0].peak_rss - 1
    above = [r.peak_rss - r.rss_after_imports for r in runs]
    print(
        f"  growth of the peak: {growth:+.1%} for {large.n_rows / small.n_rows:.0f}x the rows "
        f"(above the imports: {above[0] / MIB:.0f} -> {above[1] / MIB:.0f} MiB)"
    )
    print()
    return [
        Result(f"peak RSS streaming {small.n_rows:,} rows", runs[0].peak_rss / MIB, "MiB", ".0f"),
        Result(f"peak RSS streaming {large.n_rows:,} rows", runs[1].peak_rss / MIB, "MiB", ".0f"),
        Result(
            "peak RSS growth",
            100 * growth,
            "%",
            "+.1f",
            f"< {100 * TARGET_MEMORY_GROWTH:.0f} %",
            growth < TARGET_MEMORY_GROWTH,
        ),
    ]


# -- 3. throughput ------------------------------------------------------------------------
def read_store(store: Store) -> float:
    """Every chunk read and decoded once, reduced to one number."""
    return float(da.from_zarr(store.path).sum().compute())


def batch_iteration(store: Store, params: Params) -> Params:
    """One EM iteration over the store's blocks, read from storage (no persist)."""
    engine = distmix.DaskEngine(distmix.sources.dataset.open_dataset(store.path), persist=False)
    stats = distmix.em.e_step(engine, params)
    return distmix.mstep.m_step(stats, REG_COVAR, previous=params)


def _best_of(fn: Callable[[], Any], repeats: int = 5, *, collect: bool = True) -> float:
    """Fastest of ``repeats`` calls after a warm-up; ``collect``: ``gc.collect()``
    before each (False: back to back, caches warm)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        if collect:
            gc.collect()
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def flop_floor_per_row(k: int, d: int) -> int:
    """Fewest floating-point operations a full-covariance E-step needs per row.

    Per component: the quadratic form ``‖(x − μ_k) U_k‖²`` with a triangular
    ``U_k`` (D(D+1)/2 multiply-adds) and the upper triangle of ``r x xᵀ``
    (another D(D+1)/2); each multiply-add is 2 flops. Exponentials, the
    log-sum-exp and the first moments come on top.
    """
    return 2 * k * d * (d + 1)


def measure_ceiling(store: Store, start: Params, read_rows_per_s: float) -> list[Result]:
    """Upper bounds on stream / read, from E-step work alone (no reading at all).

    A pass cannot go faster than its E-step, so ``stream / read`` is at most
    ``E / R``, ``R`` being the read baseline's rows/s and ``E`` the rows/s of:

    * distmix's E-step on every core over blocks already in memory
      (``LocalEngine`` over the store's first chunks, the stream's start Params);
    * only its two BLAS products per component, on the blocks the kernel gets
      (one thread, divided by the cores): ``(x − μ_k) @ U_k`` for the quadratic
      forms and ``xcᵀ xc`` (syrk) for the second moments;
    * only the flop floor (:func:`flop_floor_per_row`) at this machine's DGEMM
      rate on ``(n, D) @ (D, D)`` (the best of a few sizes, one thread, times
      the cores): what a perfectly efficient float64 kernel would allow.
    """
    k, d = start.n_components, store.n_features
    rows = min(16 * store.chunk_rows, store.n_rows)
    blocks = np.asarray(zarr.open_array(store.path, mode="r")[:rows])
    engine = distmix.LocalEngine(blocks, None, store.chunk_rows, 8)
    estep = _best_of(lambda: distmix.em.e_step(engine, start)) / rows  # seconds per row
    piece = distmix.sources.blocks.default_block_rows(k, d)
    n_kernel = min(store.chunk_rows, rows) if store.chunk_rows <= 2 * piece else piece
    x = blocks[:n_kernel]
    u = start.precisions_cholesky

    def blas_products() -> None:
        for j in range(k):
            xc = x - start.means[j]
            xc @ u[j]
            xc.T @ xc

    def centring() -> None:
        for j in range(k):
            x - start.means[j]

    u_mat = np.triu(np.ones((d, d)))
    gflops = 0.0
    with threadpoolctl.threadpool_limits(1):
        blas = (
            (_best_of(blas_products, 20, collect=False) - _best_of(centring, 20, collect=False))
            / n_kernel
            / n_cores()
        )
        for n in (1024, 2048, 4096, 8192, 16384):  # in and out of cache
            a_mat = np.random.default_rng(0).standard_normal((n, d))
            gemm = _best_of(lambda a=a_mat: a @ u_mat, 50, collect=False)
            gflops = max(gflops, 2 * n * d * d / gemm / 1e9)
    floor_flops = flop_floor_per_row(k, d)
    floor = floor_flops / (gflops * 1e9 * n_cores())  # seconds per row on every core
    needed = 1.0 / (TARGET_STREAM_OVER_READ * read_rows_per_s)
    print(
        f"  per row on {n_cores()} cores: a pass at stream / read = {TARGET_STREAM_OVER_READ} "
        f"{1e9 * needed:,.0f} ns (read included); distmix's E-step alone {1e9 * estep:,.0f} "
        f"ns; its BLAS products alone ({n_kernel:,}-row blocks) {1e9 * blas:,.0f} ns; flop "
        f"floor {floor_flops:,} flop at {gflops:.1f} GFLOP/s per core (DGEMM (n x {d}) @ "
        f"({d} x {d})) {1e9 * floor:,.0f} ns"
    )
    return [
        Result("bound: E-step alone / read (rows/s)", 1.0 / estep / read_rows_per_s, "", ".3f"),
        Result("bound: its BLAS products alone / read", 1.0 / blas / read_rows_per_s, "", ".3f"),
        Result("bound: flop floor at DGEMM rate / read", 1.0 / floor / read_rows_per_s, "", ".3f"),
    ]


def measure_throughput(s: argparse.Namespace, store: Store, start: Params) -> list[Result]:
    print(
        f"[3] throughput over {store.n_rows:,} x {store.n_features} ({store.nbytes / MIB:,.0f} "
        f"MiB, {store.n_chunks} chunks of {store.chunk_rows:,} rows), this process, Dask's "
        f"threaded scheduler; one warm-up each, then {s.repeats} interleaved rounds",
        flush=True,
    )
    cached = cached_share(store.path)
    if cached is not None:
        print(f"  share of the store in the page cache before: {cached:.0%}")
    contenders: dict[str, Callable[[], Any]] = {
        "stream": lambda: stream_once(store, s.components, start, s.window),
        "read": lambda: read_store(store),
        "batch iteration": lambda: batch_iteration(store, start),
    }
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    n_steps = 0
    for round_ in range(-1, s.repeats):  # round -1: the warm-up
        shift = max(round_, 0) % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, out = timed(contenders[name])
            if name == "stream":
                n_steps = out.n_steps_
            if round_ >= 0:
                times[name].append(seconds)
            label = "warm-up" if round_ < 0 else f"round {round_ + 1}"
            print(f"    {label:<8} {name:<16}{seconds:8.2f} s", flush=True)
    cached = cached_share(store.path)
    if cached is not None:
        print(f"  share of the store in the page cache after: {cached:.0%}")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"  {name:<16} median {median[name]:.2f} s  ({store.n_rows / median[name]:,.0f} "
            f"rows/s, {store.nbytes / MIB / median[name]:,.0f} MiB/s)  every round: "
            + " ".join(f"{x:.2f}" for x in t)
        )
    ratio = median["read"] / median["stream"]
    per_update = median["stream"] / max(n_steps, 1)
    beyond = (median["stream"] - median["batch iteration"]) / max(n_steps, 1)
    print(
        f"  stream: {n_steps} updates, {per_update * 1e3:.1f} ms each "
        f"({s.window} chunks = {s.window * store.chunk_rows:,} rows per update); "
        f"(stream - batch iteration) / updates = {beyond * 1e3:.1f} ms: what an update costs "
        "beyond its share of the batch iteration (its M-step, what its read ahead did not hide)"
    )
    ceiling = measure_ceiling(store, start, store.n_rows / median["read"])
    print()
    return [
        Result("stream rows/s", store.n_rows / median["stream"], "", ",.0f"),
        Result("read rows/s", store.n_rows / median["read"], "", ",.0f"),
        Result(
            "stream / read (rows/s)",
            ratio,
            "",
            ".3f",
            f">= {TARGET_STREAM_OVER_READ}",
            ratio >= TARGET_STREAM_OVER_READ,
        ),
        Result("batch EM iteration (same store)", median["batch iteration"], "s", ".2f"),
        Result("stream pass", median["stream"], "s", ".2f"),
        Result("stream pass / batch iteration", median["stream"] / median["batch iteration"]),
        *ceiling,
    ]


# -- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="200,000-row stores: a smoke run of 1-2 minutes"
    )
    parser.add_argument("--rows", type=int, help="rows of the accuracy store (2,000,000)")
    parser.add_argument("--heldout-rows", type=int, help="held-out rows for scoring (200,000)")
    parser.add_argument(
        "--memory-rows", type=int, help="N: rows of the smaller memory store (2,000,000)"
    )
    parser.add_argument(
        "--memory-factor", type=int, default=10, help="the larger store has this x N rows (10)"
    )
    parser.add_argument("--features", type=int, default=16, help="D (16)")
    parser.add_argument("--components", type=int, default=8, help="K, drawn and fitted (8)")
    parser.add_argument(
        "--chunk-rows", type=int, default=16_384, help="rows per Zarr chunk (16,384)"
    )
    parser.add_argument(
        "--init-rows", type=int, default=20_000, help="rows the common k-means start sees"
    )
    parser.add_argument(
        "--window",
        type=int,
        help="chunks per online-EM update (default: fit_stream's, one per core)",
    )
    parser.add_argument("--tol", type=float, default=1e-6, help="batch EM's tol (1e-6)")
    parser.add_argument("--max-iter", type=int, default=1000, help="batch EM's max_iter (1000)")
    parser.add_argument("--repeats", type=int, help="timed rounds of the throughput (3)")
    parser.add_argument(
        "--sweep", action="store_true", help="also stream for a few learning_decay/offset pairs"
    )
    parser.add_argument(
        "--only",
        choices=("accuracy", "memory", "throughput"),
        action="append",
        help="run only these parts (repeatable; default all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the mixture and rows (0)")
    parser.add_argument(
        "--separation",
        type=float,
        default=8.0,
        help="scale of the true means (random_mixture's separation, 8: well separated; "
        "smaller values make EM's job harder)",
    )
    parser.add_argument(
        "--workdir", default=tempfile.gettempdir(), help="where the stores go (the temp dir)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the stores (a later run reuses them)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-init", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.rows = args.rows or defaults["rows"]
    args.heldout_rows = args.heldout_rows or defaults["heldout"]
    args.memory_rows = args.memory_rows or defaults["memory_rows"]
    args.repeats = args.repeats or defaults["repeats"]
    # fit_stream's default without a distributed client; passed explicitly so it can be printed
    args.window = args.window or n_cores()
    args.spec = DataSpec(
        args.features, args.components, args.seed, args.chunk_rows, args.separation
    )
    for name in ("rows", "heldout_rows", "memory_rows", "memory_factor", "chunk_rows", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer.")
    if args.init_rows < args.components:
        parser.error("--init-rows must be at least --components.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.child_init, args.components, args.window)
    os.makedirs(args.workdir, exist_ok=True)
    parts = args.only or ["accuracy", "memory", "throughput"]
    print_header(args.workdir)
    spec, k = args.spec, args.components
    generated: list[str] = []
    results: list[Result] = []
    try:
        main_store = ensure_store(args.workdir, args.rows, spec, generated)
        small = large = main_store
        if "memory" in parts:
            small = ensure_store(args.workdir, args.memory_rows, spec, generated)
        if "memory" in parts or "throughput" in parts:
            large_rows = args.memory_factor * args.memory_rows
            large = ensure_store(args.workdir, large_rows, spec, generated)
        print()
        start = initial_params(main_store, k, args.init_rows, args.seed)
        if "accuracy" in parts:
            results += measure_accuracy(args, main_store, start)
        if "memory" in parts:
            results += measure_memory(args, small, large, start)
        if "throughput" in parts:
            results += measure_throughput(args, large, start)
        print_table(results)
        print(f"\nload average after the run (1, 5, 15 min): {load_average()}")
    finally:
        for path in generated:
            if args.keep:
                print(f"kept {path}")
            elif os.path.exists(path):
                shutil.rmtree(path, ignore_errors=True)
                print(f"deleted {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
