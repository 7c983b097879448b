"""Holding BLAS to one thread.

Two places need it. Blocks that run side by side on threads (the local
engine, Dask's threaded scheduler) would each start BLAS's own threads and
oversubscribe the cores. And the M-step's products are tiny (K × D × D): BLAS
threads cannot speed them up, but after OpenBLAS has woken its threads they
keep spinning for a while, taking a core from the next pass's blocks
(measured: a stream of 62 updates over 2,000,000 × 16 rows, K = 8, on 2
cores ran 1.5× slower for it).
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _threadpool_controller() -> Any:
    """One controller per process: scanning the loaded BLAS libraries costs ~2 ms."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread() -> Any:
    """Context manager holding BLAS to one thread in this process while it is open."""
    return _threadpool_controller().limit(limits=1, user_api="blas")
