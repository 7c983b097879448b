"""Federated fits: sites keep their rows; the coordinator sees only exact secure sums.

``Federation([Site(X_a, "a"), Site(X_b, "b"), Site(X_c, "c")])`` is a dataset
the estimator fits like any other. See :mod:`distmix.federated.site` for what a
site answers, :mod:`distmix.federated.engine` for the coordinator, and
:mod:`distmix.federated.secagg` for the masks.
"""

from __future__ import annotations

from distmix.federated.engine import (
    FederatedEngine,
    FederationAbort,
    SiteError,
    SiteInvalidRowsError,
)
from distmix.federated.federation import Federation
from distmix.federated.manifest import Manifest
from distmix.federated.site import Site

__all__ = [
    "FederatedEngine",
    "Federation",
    "FederationAbort",
    "Manifest",
    "Site",
    "SiteError",
    "SiteInvalidRowsError",
]
