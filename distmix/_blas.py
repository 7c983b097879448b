"""Holding BLAS to one thread.

Two places need it. Blocks that run side by side on threads (the local
engine, Dask's threaded scheduler) would each start BLAS's own threads and
oversubscribe the cores. And the M-step's products are tiny (K × D × D): BLAS
threads cannot speed them up, but after OpenBLAS has woken its threads they
keep spinning for a while, taking a core from the next pass's blocks
(measured: a stream of 62 updates over 2,000,000 × 16 rows, K = 8, on 2
cores ran 1.5× slower for it).

BLAS's thread count is one setting for the whole process, so the limit is
counted: the first holder sets it, the last one out restores what was there
before, whichever threads enter and leave in whatever order (two fits on two
threads must not leave BLAS at one thread for good). While any holder is
inside, every BLAS call in the process runs on one thread.

threadpoolctl ≥ 3.8 lets only one "controlling" Python thread change a
pthreads OpenBLAS (others are silently ignored) until that thread's
``with`` block ends. The first and last holders may be different threads, so
each change here takes control for itself and hands it back at once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import threadpoolctl

_LOCK = threading.Lock()
_holders = 0
_limiter: Any = None


@functools.cache
def _threadpool_controller() -> Any:
    """One controller per process: scanning the loaded BLAS libraries costs ~2 ms."""
    return threadpoolctl.ThreadpoolController()


def _release_openblas_control() -> None:
    """Let any thread change OpenBLAS's limit next (threadpoolctl ≥ 3.8; else no-op)."""
    controller = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(controller, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Hold BLAS to one thread in this process while the block runs (counted)."""
    global _holders, _limiter
    with _LOCK:
        if _holders == 0:
            _release_openblas_control()
            _limiter = _threadpool_controller().limit(limits=1, user_api="blas")
            _release_openblas_control()
        _holders += 1
    try:
        yield
    finally:
        with _LOCK:
            _holders -= 1
            if _holders == 0:
                _release_openblas_control()
                _limiter.restore_original_limits()
                _release_openblas_control()
                _limiter = None
