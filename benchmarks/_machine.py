"""What the benchmarks print about the machine they ran on (shared by the scripts)."""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
import threadpoolctl


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def n_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> str:
    """The machine's load averages: other jobs running meanwhile skew every figure."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def dgemm_gflops(threads: int, size: int = 2000, repeats: int = 3) -> float:
    """This machine's float64 matrix-product rate in GFLOP/s, BLAS on ``threads`` threads.

    The median of ``repeats`` products ``a @ b`` of two ``(size, size)`` float64
    matrices (``2 size³`` flops each: one multiply and one add per term), after
    one untimed product (BLAS's threads started, pages touched). The ceiling a
    float64 kernel's GFLOP/s is read against.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size))
    b = rng.standard_normal((size, size))
    seconds = []
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds) / 1e9
