"""Names shared by every layer: the covariance types and their registries' keys."""

from __future__ import annotations

from typing import Literal, get_args

CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES: tuple[str, ...] = get_args(CovarianceType)

InitParams = Literal["kmeans", "k-means++", "random", "random_from_data", "moments"]
INIT_PARAMS: tuple[str, ...] = get_args(InitParams)


def check_covariance_type(covariance_type: object) -> str:
    """Return ``covariance_type`` if it names a registered type, else raise.

    The error lists the valid names, so a typo tells the user what to write.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type={covariance_type!r} is not one of "
            f"{', '.join(repr(c) for c in COVARIANCE_TYPES)}."
        )
    return covariance_type  # type: ignore[return-value]
