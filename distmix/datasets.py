"""Synthetic Gaussian-mixture datasets, written chunk by chunk with bounded memory.

On disk a dataset is one 2-D Zarr array of rows × features made by
:func:`distmix.sources.zarr_write.create_zarr_array` (CRC-32C checksum as the last codec,
NaN fill value, every chunk written), with the parameters it was drawn from in
its attributes (:class:`TrueMixture`) and how it was generated under
``distmix_generator``. The attributes are written last: an array without them
was not finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from distmix.sources.zarr_write import create_zarr_array

#: version of the generator's on-disk layout (attributes and codecs)
GENERATOR_FORMAT = 1


@dataclass(frozen=True)
class TrueMixture:
    """The parameters a synthetic dataset was drawn from."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    def to_attrs(self) -> dict[str, Any]:
        return {
            "distmix_true_weights": self.weights.tolist(),
            "distmix_true_means": self.means.tolist(),
            "distmix_true_covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_attrs(cls, attrs: Any) -> TrueMixture:
        return cls(
            np.asarray(attrs["distmix_true_weights"]),
            np.asarray(attrs["distmix_true_means"]),
            np.asarray(attrs["distmix_true_covariances"]),
        )


def random_mixture(
    n_features: int, n_components: int, seed: int, separation: float = 8.0
) -> TrueMixture:
    """Well-separated components with random full covariances (eigenvalues in [0.5, 2])."""
    rng = np.random.default_rng([seed, 0])
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        covariances[k] = (q * rng.uniform(0.5, 2.0, size=n_features)) @ q.T
    return TrueMixture(weights, means, covariances)


def sample_rows(
    mixture: TrueMixture, start: int, stop: int, seed: int, chunk_rows: int
) -> np.ndarray:
    """Rows ``start:stop`` of the dataset (each chunk has its own random stream)."""
    if start % chunk_rows:
        raise ValueError("start must be a multiple of chunk_rows")
    pieces = []
    chol = np.linalg.cholesky(mixture.covariances)
    for chunk_start in range(start, stop, chunk_rows):
        rng = np.random.default_rng([seed, 1, chunk_start // chunk_rows])
        n = min(chunk_rows, stop - chunk_start)
        labels = rng.choice(len(mixture.weights), size=n, p=mixture.weights)
        noise = rng.standard_normal(size=(n, mixture.means.shape[1]))
        # row i is μ_k + L_k zᵢ for its component k; one product per component
        # keeps the working set at the chunk itself, not an (n, D, D) stack of L_k
        rows = np.empty_like(noise)
        for k in range(len(mixture.weights)):
            mine = labels == k
            rows[mine] = mixture.means[k] + noise[mine] @ chol[k].T
        pieces.append(rows)
    return np.concatenate(pieces)


def write_zarr(
    path: str,
    n_rows: int,
    n_features: int,
    n_components: int,
    seed: int = 0,
    chunk_rows: int = 65536,
    dtype: Any = np.float64,
    *,
    zarr_format: Literal[2, 3] = 3,
    compressors: Any = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Write a synthetic mixture dataset to a Zarr array at ``path``, chunk by chunk.

    Memory stays at one chunk whatever ``n_rows`` is. Chunks hold
    ``chunk_rows`` rows and all columns, and each is drawn from its own random
    stream, so any rows can be regenerated alone (:func:`sample_rows`). The
    array is protected as :func:`distmix.sources.zarr_write.create_zarr_array` describes
    (checksum last, NaN fill value). The true parameters are stored in its
    attributes (see :class:`TrueMixture`), written after the last chunk.

    Parameters
    ----------
    path : str or os.PathLike
        A local path or an fsspec URL; an existing array there is an error
        unless ``overwrite``.
    n_rows, n_features, n_components : int
    seed : int, default=0
    chunk_rows : int, default=65536
    dtype : float dtype, default=float64
    zarr_format : {2, 3}, default=3
    compressors : bytes-to-bytes codecs, optional
        Before the checksum (v3 only); ``None``: uncompressed.
    storage_options : dict, optional
        For an fsspec URL.
    overwrite : bool, default=False

    Returns
    -------
    zarr.Array
    """
    for arg, value in (
        ("n_rows", n_rows),
        ("n_features", n_features),
        ("n_components", n_components),
        ("chunk_rows", chunk_rows),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}.")
    mixture = random_mixture(n_features, n_components, seed)
    array = create_zarr_array(
        path,
        (n_rows, n_features),
        int(chunk_rows),
        dtype,
        zarr_format=zarr_format,
        compressors=compressors,
        storage_options=storage_options,
        overwrite=overwrite,
    )
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        array[start:stop] = sample_rows(mixture, start, stop, seed, chunk_rows).astype(dtype)
    array.attrs.update(
        {
            **mixture.to_attrs(),
            "distmix_generator": {
                "format": GENERATOR_FORMAT,
                "seed": int(seed),
                "n_components": int(n_components),
                "chunk_rows": int(chunk_rows),
            },
        }
    )
    return array
