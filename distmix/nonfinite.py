"""Non-finite input: the count a pass keeps, and the error it becomes.

Finiteness is not checked by a pass of its own: the kernels count the
non-finite rows of each block and remember the first one's global index in the
same pass that computes their statistics (:class:`NonFinite`, which adds like
the statistics), and :func:`raise_if_nonfinite` turns those counts into an
error naming how many rows and which one first.

Kernel side: the kernels, the EM loop and the engines import this module, so it
imports nothing but NumPy and the standard library (no source, no Zarr, no Dask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class NonFiniteInputError(ValueError):
    """The input holds NaN or infinity."""


@dataclass(frozen=True)
class NonFinite:
    """Count of non-finite rows and the first one's global index (``inf`` when none)."""

    count: float
    first: float

    def __add__(self, other: NonFinite) -> NonFinite:
        return NonFinite(self.count + other.count, min(self.first, other.first))

    def to_host(self) -> NonFinite:
        return self

    def pack(self) -> np.ndarray:
        """``[count, first]`` as float64 (``first`` is ``inf`` when there is none)."""
        return np.asarray([self.count, self.first], dtype=np.float64)

    def schema(self) -> dict[str, Any]:
        return {"type": "NonFinite"}

    @classmethod
    def unpack(cls, vector: Any, schema: dict[str, Any]) -> NonFinite:
        flat = np.asarray(vector, dtype=np.float64)
        if flat.shape != (2,):
            raise ValueError(f"packed NonFinite has 2 values, got an array of shape {flat.shape}.")
        return cls(float(flat[0]), float(flat[1]))

    def raise_if_any(self, name: str = "X") -> None:
        raise_if_nonfinite(self.count, self.first, name)


def raise_if_nonfinite(n_nonfinite: float, first_row: float, name: str = "X") -> None:
    """Raise :class:`NonFiniteInputError` if a pass counted non-finite rows."""
    if n_nonfinite > 0:
        raise NonFiniteInputError(
            f"Input {name} contains NaN or infinity in {int(n_nonfinite)} row(s); the first "
            f"is row {int(first_row)}. Remove or impute them (e.g. with "
            "sklearn.impute.SimpleImputer)."
        )
