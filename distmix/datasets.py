"""Synthetic Gaussian-mixture datasets, written chunk by chunk with bounded memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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
        pieces.append(mixture.means[labels] + np.einsum("nd,ned->ne", noise, chol[labels]))
    return np.concatenate(pieces)


def write_zarr(
    path: str,
    n_rows: int,
    n_features: int,
    n_components: int,
    seed: int = 0,
    chunk_rows: int = 65536,
    dtype: Any = np.float64,
) -> Any:
    """Write a synthetic mixture dataset to a Zarr v3 array at ``path``, chunk by chunk.

    Memory stays at one chunk whatever ``n_rows`` is. The true parameters are
    stored in the array's attributes (see :class:`TrueMixture`).
    """
    import zarr

    mixture = random_mixture(n_features, n_components, seed)
    array = zarr.create_array(
        store=path,
        shape=(n_rows, n_features),
        chunks=(chunk_rows, n_features),
        dtype=dtype,
        fill_value=np.nan,
        overwrite=False,
    )
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        array[start:stop] = sample_rows(mixture, start, stop, seed, chunk_rows).astype(dtype)
    array.attrs.update(mixture.to_attrs())
    return array
