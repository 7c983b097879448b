"""Where arrays live: the namespace read blocks are put in, and the way back to the host.

Layer: a leaf beside the sources and the engines. It imports NumPy,
array-api-compat and Dask's configuration, nothing of distmix; the array
libraries it names (CuPy) are imported when a block is first put there, so
that a machine without them never loads them.

**Blocks read from storage.** The Zarr and ``.npy`` readers of
:mod:`distmix.sources` produce NumPy rows. The Dask config key
``distmix.block-namespace`` (:data:`BLOCK_NAMESPACE`) names the array namespace
each read task then puts its block in, in the process that runs the task:
``"cupy"`` moves it to the worker's GPU (``cupy.asarray``, on the device the
worker sees first: its own under dask-cuda, which gives each worker one), so the
E-step of the block runs there and only its statistics come back. The key is
read where the task runs, not where the graph is built: a cluster config sets
it for its workers (``dask_config:`` of ``cluster_configs/local-cuda.yaml``,
which the nannies hand to the worker processes they start), the environment
sets it for workers started elsewhere (``DASK_DISTMIX__BLOCK_NAMESPACE=cupy``),
and ``dask.config.set`` for Dask's threads in this process. The dask array's
meta stays NumPy: what a block task returns to the client (statistics, rows,
predictions of a source read this way) is moved back to the host.

**The way back.** :func:`to_host` copies an array of any namespace and device
to NumPy, its dtype kept (CuPy through ``.get()``, others through DLPack).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, get_args

import array_api_compat
import dask.config
import numpy as np

#: the Dask config key naming the namespace read blocks are put in
BLOCK_NAMESPACE = "distmix.block-namespace"
BlockNamespace = Literal["numpy", "cupy", "array_api_strict"]
#: ``numpy``: as read; ``cupy``: on the GPU; ``array_api_strict``: the standard's own
#: namespace, which allows nothing beyond it (the tests' stand-in for a device)
BLOCK_NAMESPACES: tuple[str, ...] = get_args(BlockNamespace)
#: the package that provides each namespace, for the error when it is missing
_PACKAGES = {
    "cupy": "cupy-cuda12x (pip install 'distmix[gpu]')",
    "array_api_strict": "array-api-strict",
}


def block_namespace() -> BlockNamespace:
    """This process's ``distmix.block-namespace`` (``None`` or absent: ``"numpy"``)."""
    value = dask.config.get(BLOCK_NAMESPACE, default=None)
    if value is None:
        return "numpy"
    if value not in BLOCK_NAMESPACES:
        raise ValueError(
            f"Dask config {BLOCK_NAMESPACE}={value!r} is not one of "
            f"{', '.join(repr(v) for v in BLOCK_NAMESPACES)} (null: NumPy, as read)."
        )
    return value  # type: ignore[no-any-return]


def to_block_namespace(block: np.ndarray) -> Any:
    """``block`` (rows as read, NumPy) in this process's :func:`block_namespace`.

    ``"cupy"`` copies it to the current CUDA device; ``"numpy"`` returns it as it is.
    """
    name = block_namespace()
    if name == "numpy":
        return block
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise ImportError(
            f"Dask config {BLOCK_NAMESPACE}={name!r} asks for blocks in {name}, which does "
            f"not import in this process ({error}); install {_PACKAGES[name]} where the "
            f"blocks are read, or unset {BLOCK_NAMESPACE}."
        ) from error
    return module.asarray(block)


def is_host_array(array: Any) -> bool:
    """Whether ``array`` is a NumPy array (or scalar)."""
    return isinstance(array, (np.ndarray, np.generic))


def to_host(array: Any) -> np.ndarray:
    """A NumPy copy of ``array`` of any namespace and device, its dtype kept."""
    if is_host_array(array):
        return np.asarray(array)
    if array_api_compat.is_cupy_array(array):
        return np.asarray(array.get())
    if array_api_compat.is_torch_array(array):
        return np.asarray(array.detach().cpu().numpy())
    try:
        return np.asarray(np.from_dlpack(array))
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(array)
