"""The kernel registry: which implementation of a block kernel runs on a block.

Layer: beside the kernels. The engines choose nothing: a block task asks here
for the kernel of its block, and the answer depends on the block's array type
and on the process's choice:

``"array-api"``
    :mod:`distmix.estep` for every block (the reference; NumPy, CuPy, torch, ...).
``"compiled"``
    the fused compiled kernels of :mod:`distmix.fused` (numba) for NumPy blocks;
    a block of another namespace raises, naming it.
``"auto"``
    compiled for NumPy blocks when numba is installed, the array-API kernel
    otherwise.

The choice is read from the environment variable ``DISTMIX_KERNEL`` (so that
Dask worker processes started from this one make the same choice), and can be
changed for this process with :func:`set_kernel` or for a block of code with
:func:`use_kernel`. A fit's own choice (``GaussianMixture(kernel=...)``) travels
with each of its block tasks, to whichever thread or worker process runs it,
and holds there for that block only (:func:`chosen`, a context variable: other
threads' blocks are not affected). :mod:`distmix.fused`, and numba with it, is
imported on first use only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Literal, get_args

import numpy as np

KernelChoice = Literal["auto", "compiled", "array-api"]
KERNEL_CHOICES: tuple[str, ...] = get_args(KernelChoice)
ENVIRONMENT = "DISTMIX_KERNEL"
DEFAULT: KernelChoice = "auto"


def check_kernel(choice: Any) -> KernelChoice:
    if choice not in KERNEL_CHOICES:
        raise ValueError(
            f"kernel={choice!r} is not one of {', '.join(repr(c) for c in KERNEL_CHOICES)}."
        )
    return choice  # type: ignore[no-any-return]


#: a block task's own choice, in the thread (context) that runs it
_CHOSEN: contextvars.ContextVar[KernelChoice | None] = contextvars.ContextVar(
    "distmix_kernel", default=None
)


def kernel_choice() -> KernelChoice:
    """The choice in force: a block task's own (:func:`chosen`), else this process's
    (``DISTMIX_KERNEL``, default ``"auto"``)."""
    own = _CHOSEN.get()
    if own is not None:
        return own
    value = os.environ.get(ENVIRONMENT, DEFAULT)
    try:
        return check_kernel(value)
    except ValueError:
        raise ValueError(
            f"{ENVIRONMENT}={value!r} is not one of {', '.join(KERNEL_CHOICES)}."
        ) from None


def set_kernel(choice: str) -> None:
    """Choose the kernels of this process (and of Dask workers it starts later)."""
    os.environ[ENVIRONMENT] = check_kernel(choice)


@contextlib.contextmanager
def use_kernel(choice: str) -> Iterator[None]:
    """Run a block of code with ``choice`` (the previous choice restored after)."""
    before = os.environ.get(ENVIRONMENT)
    set_kernel(choice)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENVIRONMENT, None)
        else:
            os.environ[ENVIRONMENT] = before


@contextlib.contextmanager
def chosen(choice: str | None) -> Iterator[None]:
    """Run a block task with ``choice`` in this thread only (``None``: the process's
    choice); what :func:`distmix.tasks.run_block` does with a fit's ``kernel``."""
    if choice is None:
        yield
        return
    token = _CHOSEN.set(check_kernel(choice))
    try:
        yield
    finally:
        _CHOSEN.reset(token)


@functools.cache
def compiled_available() -> bool:
    """Whether numba is installed (asked once: every block's task asks the registry)."""
    return importlib.util.find_spec("numba") is not None


#: the block tasks with a compiled kernel, and its name in :mod:`distmix.fused`
COMPILED_TASKS: dict[str, str] = {
    "estep": "chunk_stats",
    "log_likelihood": "log_likelihood",
    "score_samples": "score_samples_block",
    "predict_proba": "predict_proba_block",
    "predict": "predict_block",
    "kmeans": "kmeans_block",
    "kmeans_cost": "cost_block",
    "nearest_weight": "nearest_weight_block",
}


def compiled_module() -> ModuleType | None:
    """:mod:`distmix.fused`, imported (numba with it), where this process's choice runs
    NumPy blocks on the compiled kernels; ``None`` where it does not."""
    choice = kernel_choice()
    if choice == "compiled" or (choice == "auto" and compiled_available()):
        return importlib.import_module("distmix.fused")
    return None


def compiled_kernel(task: str, block: Any) -> Callable[..., Any] | None:
    """The compiled kernel of the block task ``task`` for ``block``, or ``None`` for
    the array-API one (by this process's choice; see the module's docstring)."""
    choice = kernel_choice()
    if choice == "array-api" or task not in COMPILED_TASKS:
        return None
    numpy_block = isinstance(block, np.ndarray)
    if choice == "compiled" and not numpy_block:
        raise ValueError(
            f"kernel='compiled' runs on NumPy blocks only, not {type(block).__module__}."
            f"{type(block).__name__}: use kernel='auto' (the array-API kernel for others)."
        )
    fused = compiled_module() if numpy_block else None
    if fused is None:
        return None
    return getattr(fused, COMPILED_TASKS[task])  # type: ignore[no-any-return]


def estep_kernel(block: Any) -> Callable[..., Any] | None:
    """The compiled E-step kernel for ``block``, or ``None`` for the array-API one."""
    return compiled_kernel("estep", block)
