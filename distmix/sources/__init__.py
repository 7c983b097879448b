"""Sources → row blocks, and the validation that rides along.

A source is a NumPy (or other array-API) array, a dask array, a Zarr array
(an open ``zarr.Array``, or a path or fsspec URL) or a local ``.npy`` file.
Whatever it is, distmix sees it as row blocks holding all columns. Shape and
dtype are checked before any pass; finiteness is checked in the first pass
itself (:mod:`distmix.nonfinite`).

* :mod:`~distmix.sources.checks`: what a source is, and its dtype and shape;
* :mod:`~distmix.sources.blocks`: how many rows a block holds, and a dask
  array recut to blocks of all columns;
* :mod:`~distmix.sources.zarr_arrays`: reading Zarr arrays: missing chunk
  files found before any pass, read errors that name the rows and the chunk;
* :mod:`~distmix.sources.zarr_write`: Zarr arrays whose corruption cannot go
  unnoticed (CRC-32C checksum, NaN fill value);
* :mod:`~distmix.sources.npy`: ``.npy`` files read by block inside the tasks;
* :mod:`~distmix.sources.dataset`: :func:`~distmix.sources.dataset.open_dataset`,
  a path, URL, ``zarr.Array`` or ``.npy`` path → a dask array of row blocks.

Layering: the EM loop, the engines and the kernels import
:mod:`~distmix.sources.checks` and :mod:`~distmix.sources.blocks` at most,
which import no Zarr. This package therefore imports none of its modules
itself: import them by name, ``from distmix.sources.dataset import open_dataset``.
"""
