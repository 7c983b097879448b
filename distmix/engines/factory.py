"""``make_engine``: the one place that chooses and builds the engine for a source.

A NumPy (or other array-API) array becomes a :class:`~distmix.engines.local.LocalEngine`
over in-memory blocks; a dask array, a Zarr array, a path or URL of one, or a
``.npy`` path becomes a :class:`~distmix.engines.dask.DaskEngine` with one task
per block. Shape, dtype and weights are validated here, before any pass;
finiteness is checked by the first pass itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import array_api_compat
import dask
import dask.array as da
import numpy as np
from sklearn.utils import check_array
from sklearn.utils.validation import _check_sample_weight

from distmix.engines.dask import DaskEngine
from distmix.engines.local import LocalEngine
from distmix.reduce import DEFAULT_SPLIT_EVERY
from distmix.sources.blocks import as_dask_rows, check_block_size, default_block_rows
from distmix.sources.checks import check_dtype, check_shape, is_dask_array, is_zarr_source
from distmix.sources.dataset import open_dataset


def make_engine(
    source: Any,
    sample_weight: Any = None,
    *,
    block_size: int | tuple[int, ...] | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    passes: Literal["many", "one"] = "many",
    persist: bool | str = "auto",
    persist_fraction: float = 0.5,
    n_components: int | None = None,
    covariance_type: str | None = None,
    min_components: int | None = None,
    min_rows: int = 1,
    check_features: Callable[[int, Any], None] | None = None,
    check_memory: bool | Literal["cached"] | None = None,
    refused_tasks: frozenset[str] = frozenset(),
    kernel: str | None = None,
) -> Any:
    """The engine for ``source``, its shape, dtype and weights validated.

    Parameters
    ----------
    source : array-like (n, D), dask array, ``zarr.Array``, the path/URL of a
        Zarr array or ``.npy`` file, or an object with a ``__distmix_engine__``
        method that builds its own engine (:class:`distmix.federated.Federation`)
    sample_weight : array-like or dask array (n,), optional
        Non-negative, finite row weights.
    block_size : int, tuple of int or None
        Rows per block (``None``: about 1 MiB blocks in memory, the input's
        chunks for dask, whole Zarr chunks, blocks that shrink if the workers
        need it for a Zarr fit), or the length of every block.
    split_every : int
        Fan-in of the reduction tree.
    passes : {"many", "one"}
        ``"many"`` for a fit (blocks may be persisted, the workers' memory is
        measured); ``"one"`` for a prediction, a score or a stream (blocks are
        read once per call, the workers' last measurement is reused).
    persist, persist_fraction
        For dask and Zarr sources making many passes: see ``DaskEngine``.
    n_components, covariance_type : optional
        Of the model the blocks will be fitted to or scored with: they size the
        workers' memory check and the in-memory blocks.
    min_components : int, optional
        A new fit's number of components: the source must have at least as many rows.
    min_rows : int
        Fewest rows accepted (a fit needs 2).
    check_features : callable, optional
        ``check_features(n_features, array_like)``, called before any engine is
        built (the estimator's check of ``n_features_in_`` and feature names):
        ``array_like`` is the in-memory input as given (for scikit-learn's checks
        of feature names), ``None`` for dask and Zarr sources.
    check_memory : True, "cached", False or None
        Of a Dask engine (``None``: ``True`` for many passes, ``"cached"`` for one).
    refused_tasks : frozenset of str
        Block tasks the engine refuses by name.
    kernel : {"auto", "compiled", "array-api"} or None
        The fit's choice of block kernels (:mod:`distmix.kernels`), passed with each
        block task to whichever thread or worker runs it; ``None``: theirs. A
        federation's sites keep their own.
    """
    many = passes == "many"
    if passes not in ("many", "one"):
        raise ValueError(f"passes must be 'many' or 'one', got {passes!r}.")
    hook = getattr(source, "__distmix_engine__", None)
    if hook is not None:  # a source that brings its own engine (a federation)
        return hook(
            sample_weight,
            min_components=min_components,
            check_features=check_features,
            refused_tasks=refused_tasks,
        )
    k = min_components
    reblock: Callable[[int], Any] | None = None
    X = source
    if is_zarr_source(X):
        # a zarr.Array, path or URL: open_dataset validates it and reads whole chunks
        X = open_dataset(source)
        # blocks of our choosing shrink if the workers need it, for a fit; a stream's
        # position counts its blocks, so a stream keeps the same blocks run after run
        if block_size is None and many:
            float_rows = X.dtype.kind == "f"

            def reblock(rows: int) -> Any:
                smaller = open_dataset(source, block_rows=rows)
                return smaller if float_rows else smaller.astype(np.float64)

        else:
            X = open_dataset(source, block_rows=check_block_size(block_size, int(X.shape[0])))
        check_shape(tuple(X.shape), k)
    elif is_dask_array(X):
        check_dtype(X.dtype)
        check_shape(tuple(X.shape), k)
        X = as_dask_rows(X, check_block_size(block_size, int(X.shape[0])))
    if is_dask_array(X):
        if check_features is not None:
            check_features(int(X.shape[1]), None)
        if X.dtype.kind not in "f":
            X = X.astype(np.float64)
        w = None if sample_weight is None else dask_sample_weight(sample_weight, X)
        return DaskEngine(
            X,
            w,
            split_every=split_every,
            persist=persist if many else False,
            persist_fraction=persist_fraction,
            n_components=n_components,
            covariance_type=covariance_type,
            reblock=reblock,
            check_memory=(True if many else "cached") if check_memory is None else check_memory,
            refused_tasks=refused_tasks,
            kernel=kernel,
        )
    return _local_engine(
        X,
        sample_weight,
        block_size=block_size,
        split_every=split_every,
        n_components=n_components,
        min_components=min_components,
        min_rows=min_rows,
        check_features=check_features,
        refused_tasks=refused_tasks,
        kernel=kernel,
    )


def _local_engine(
    X: Any,
    sample_weight: Any,
    *,
    block_size: Any,
    split_every: int,
    n_components: int | None,
    min_components: int | None,
    min_rows: int,
    check_features: Callable[[int, Any], None] | None,
    refused_tasks: frozenset[str],
    kernel: str | None,
) -> LocalEngine:
    source = X
    if is_device_array(X):
        X, sample_weight = _checked_device_input(X, sample_weight, min_rows)
        default_rows = device_block_rows(n_components or 1, int(X.shape[1]))
    else:
        if hasattr(X, "dtype") and getattr(X.dtype, "kind", "f") not in "biufcO":
            check_dtype(X.dtype)
        if len(getattr(X, "shape", ())) > 2:  # scikit-learn's message only says "dim <= 2"
            check_shape(tuple(X.shape), min_components)
        X = check_array(
            X, dtype=[np.float64, np.float32], ensure_all_finite=False, ensure_min_samples=min_rows
        )
        if sample_weight is not None:
            sample_weight = _check_sample_weight(
                sample_weight, X, dtype=np.float64, ensure_non_negative=True
            )
        default_rows = default_block_rows(n_components or 1, X.shape[1])
    if check_features is not None:
        check_features(int(X.shape[1]), source)
    check_shape(tuple(X.shape), min_components)
    n_rows = int(X.shape[0])
    block = check_block_size(block_size, n_rows)
    if block is None:
        block = default_rows
    if isinstance(block, int):
        block = min(block, n_rows)
    return LocalEngine(
        X, sample_weight, block, split_every, refused_tasks=refused_tasks, kernel=kernel
    )


def is_device_array(X: Any) -> bool:
    """An array of an array-API namespace other than NumPy (CuPy, torch, ...), which
    stays in its namespace and on its device: no NumPy copy of it is made."""
    return array_api_compat.is_array_api_obj(X) and not (
        array_api_compat.is_numpy_array(X) or is_dask_array(X)
    )


#: bytes of the (K, rows, D) float64 stack of a device block's E-step (see device_block_rows)
DEVICE_STACK_BYTES = 2**27


def device_block_rows(n_components: int, n_features: int) -> int:
    """Rows per block of an in-memory device array: a (K, rows, D) float64 stack of
    ``DEVICE_STACK_BYTES`` (128 MiB: 131,072 rows at K = 8, D = 16), at least 4,096.

    A device runs a block's E-step as a few dozen kernels on the whole block,
    and every block's statistics are copied to the host, which waits for the
    device: host-sized blocks (:func:`default_block_rows`, about 1 MiB of rows)
    would leave it idle between small kernels. The figure is a choice, not yet a
    measurement: ``benchmarks/bench_gpu.py`` times the E-step per block size.
    """
    rows = DEVICE_STACK_BYTES // (8 * max(1, n_components) * max(1, n_features))
    return int(max(rows, 4096))


def _checked_device_input(X: Any, sample_weight: Any, min_rows: int) -> tuple[Any, Any]:
    """scikit-learn's checks of ``check_array`` and ``_check_sample_weight`` on an
    array of another namespace, made in that namespace: ``(X, sample_weight)``
    with X float32 or float64 (integers and booleans converted to float64) and
    the weights float64 next to X.

    The weights' checks (finite, non-negative) read two values back from the
    device: once per call, never per block.
    """
    xp = array_api_compat.array_namespace(X)
    if X.ndim != 2:
        check_shape(tuple(X.shape), None)
    if xp.isdtype(X.dtype, "complex floating"):
        raise ValueError(
            f"Complex data not supported: X has dtype {X.dtype}; a Gaussian mixture over "
            "complex values needs its real and imaginary parts as features."
        )
    if xp.isdtype(X.dtype, ("bool", "integral")):
        X = xp.astype(X, xp.float64)
    elif X.dtype not in (xp.float32, xp.float64):
        raise TypeError(
            f"X has dtype {X.dtype}, which distmix does not fit; give float32 or float64 data."
        )
    n = int(X.shape[0])
    if n < min_rows:
        raise ValueError(
            f"Found array with {n} sample(s) (shape={tuple(X.shape)}) while a minimum of "
            f"{min_rows} is required."
        )
    if sample_weight is None:
        return X, None
    w = xp.asarray(sample_weight, dtype=xp.float64, device=array_api_compat.device(X))
    if tuple(w.shape) != (n,):
        raise ValueError(
            f"sample_weight must have shape (n_samples,) = ({n},), got {tuple(w.shape)}."
        )
    if not bool(xp.all(xp.isfinite(w))):
        raise ValueError("Input sample_weight contains NaN or infinity.")
    smallest = float(xp.min(w))
    if smallest < 0:
        raise ValueError(f"Negative values in data passed to sample_weight (smallest: {smallest}).")
    return X, w


def dask_sample_weight(sample_weight: Any, X: Any) -> Any:
    """Row weights as a dask array chunked like ``X``'s rows, validated.

    Validated eagerly (one small compute over the weights, not the rows) so that
    a bad weight never reaches an E-step.
    """
    n = int(X.shape[0])
    if is_dask_array(sample_weight):
        w = sample_weight.astype(np.float64)
    else:
        w_np = np.asarray(sample_weight, dtype=np.float64)
        if w_np.shape != (n,):
            raise ValueError(
                f"sample_weight must have shape (n_samples,) = ({n},), got {w_np.shape}."
            )
        w = da.from_array(w_np, chunks=(X.chunks[0],))
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape (n_samples,) = ({n},), got {w.shape}.")
    finite, smallest = dask.compute(da.isfinite(w).all(), w.min())
    if not finite:
        raise ValueError("Input sample_weight contains NaN or infinity.")
    if smallest < 0:
        raise ValueError(f"Negative values in data passed to sample_weight (smallest: {smallest}).")
    return w
