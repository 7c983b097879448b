"""Writing Zarr arrays whose corruption cannot go unnoticed.

Arrays distmix writes (:func:`create_zarr_array`) carry a CRC-32C checksum as
the last codec and NaN as fill value, so a truncated or bit-flipped chunk fails
its checksum and a chunk that is absent anyway reads as NaN, which the first
pass reports: never wrong numbers.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import zarr
from numcodecs import CRC32C
from zarr.codecs import Crc32cCodec

from distmix.sources.zarr_arrays import missing_backend_error


def create_zarr_array(
    store: Any,
    shape: tuple[int, int],
    chunks: int | tuple[int, int],
    dtype: Any = np.float64,
    *,
    zarr_format: Literal[2, 3] = 3,
    compressors: Any = None,
    shards: tuple[int, int] | None = None,
    attributes: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Create an empty 2-D float Zarr array whose corruption cannot go unnoticed.

    * The last codec is a CRC-32C checksum of the stored bytes (v3: the
      ``crc32c`` codec after any compressor; v2: the ``crc32c`` compressor), so
      a truncated or bit-flipped chunk fails to decode instead of reading as
      other numbers.
    * The fill value is NaN, so a chunk that is absent anyway reads as NaN,
      which a fit reports, instead of zeros; every chunk is written, even one
      that holds only NaN (``write_empty_chunks``), so absence means loss.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        Where to create it (a path or an fsspec URL).
    shape : (n_rows, n_features)
    chunks : int or (int, int)
        Rows per chunk (all columns in one chunk), or the full chunk shape.
    dtype : float dtype, default=float64
    zarr_format : {2, 3}, default=3
    compressors : bytes-to-bytes codecs, optional
        Run before the checksum (v3 only). ``None``: no compression, because
        Gaussian float data barely compress (zstd saves about 5% on float64
        noise) while decoding them costs several times the read.
    shards : (int, int), optional
        Shard shape (v3 only): the stored objects then hold several chunks.
    attributes : dict, optional
    storage_options : dict, optional
        For an fsspec URL.
    overwrite : bool, default=False

    Returns
    -------
    zarr.Array
    """
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ValueError(
            f"create_zarr_array writes float arrays (NaN is the fill value), got dtype {dt}."
        )
    if len(shape) != 2:
        raise ValueError(f"shape must be (n_rows, n_features), got {shape}.")
    chunk_shape = (int(chunks), int(shape[1])) if isinstance(chunks, (int, np.integer)) else chunks
    if zarr_format == 3:
        if compressors is None:
            extra: list[Any] = []
        elif isinstance(compressors, (list, tuple)):
            extra = list(compressors)
        else:
            extra = [compressors]
        codecs: Any = (*extra, Crc32cCodec())
    elif zarr_format == 2:
        if compressors is not None or shards is not None:
            raise ValueError(
                "Zarr v2 arrays hold the checksum in their single compressor slot and have no "
                "shards: leave compressors and shards as None, or write zarr_format=3."
            )
        codecs = CRC32C()
    else:
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}.")
    options: dict[str, Any] = {}
    if storage_options:
        options["storage_options"] = storage_options
    if shards is not None:
        options["shards"] = tuple(shards)
    try:
        return zarr.create_array(
            store=store,
            shape=tuple(int(s) for s in shape),
            chunks=tuple(int(c) for c in chunk_shape),
            dtype=dt,
            fill_value=np.nan,
            compressors=codecs,
            zarr_format=zarr_format,
            attributes=attributes,
            overwrite=overwrite,
            config={"write_empty_chunks": True},
            **options,
        )
    except ImportError as err:  # no fsspec backend for the URL's protocol
        raise missing_backend_error(store, err) from err
