"""``Federation``: what a user fits on when the rows are at several sites.

Layer: the federated engine, transports and sites; nothing imports it but the
package's ``__init__`` (the estimator reaches it through the engine factory's
``__distmix_engine__`` hook, never by import).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distmix.federated.engine import FederatedEngine
from distmix.federated.manifest import Manifest
from distmix.federated.site import Site
from distmix.federated.transport import InProcessTransport, Transport
from distmix.privacy import RELEASED_FIELDS, Privacy, normalised_shares


class Federation:
    """Sites whose rows never leave them, fitted as one dataset.

    ``GaussianMixture(...).fit(Federation([...]))`` runs the usual EM loop; each
    pass is one round of exact secure sums over the sites.

    Parameters
    ----------
    sites : sequence of Site, or a Transport
        In-process sites (one machine, tests, benchmarks), or a transport that
        reaches remote sites by name (Flower).
    manifest : Manifest, optional
        The bounds every site accepted. For in-process sites it may be left out:
        one is written from the keywords below and the sites accept it.
    mode, threshold, radius, centre, max_rows_per_site, max_weight
        See :class:`~distmix.federated.manifest.Manifest` (in-process sites only;
        ``max_rows_per_site`` defaults to the next power of two of the largest site).
    max_attempts : int
        All-or-nothing mode: tries of a round with the same sites.
    personal_weights : bool
        Each site keeps its own mixing weights π_s (updated at the site, never
        sent) over shared components whose statistics are securely summed: EM
        for the per-site-weights model (a FedGMM-style personalisation). The
        fitted ``weights_`` are then the federation's average proportions.
    drop, arrival : callable, optional
        In-process tests only: see :class:`~distmix.federated.transport.InProcessTransport`.
    privacy : distmix.Privacy, optional
        In-process sites: a differentially private federation (the manifest's ``dp_``
        fields, its ``centre`` the clipping centre), at most ``dp_iterations`` private
        iterations, the noise added where ``dp_noise`` says ("distributed": by the
        sites, in shares; "central": by the coordinator).
    """

    def __init__(
        self,
        sites: Sequence[Site] | Transport,
        manifest: Manifest | None = None,
        *,
        mode: str = "threshold",
        threshold: int | None = None,
        radius: float = float(2**32),
        centre: float | Sequence[float] = 0.0,
        max_rows_per_site: int | None = None,
        max_weight: float = 1.0,
        max_attempts: int = 3,
        personal_weights: bool = False,
        drop: Callable[[str, Any], bool] | None = None,
        arrival: Callable[[list[str]], list[str]] | None = None,
        privacy: Privacy | None = None,
        dp_iterations: int | None = None,
        dp_noise: str = "distributed",
    ) -> None:
        if privacy is not None and (manifest is not None or not isinstance(sites, Sequence)):
            raise ValueError(
                "privacy= writes the manifest of in-process sites; with a manifest (or a "
                "transport) the budget is the manifest's dp_ fields, which its sites enforce."
            )
        if personal_weights and privacy is not None:
            raise ValueError("personal_weights is not supported in a private federation yet.")
        if isinstance(sites, Sequence):
            sites = list(sites)
            if not all(isinstance(site, Site) for site in sites):
                raise TypeError("a Federation takes Site objects or a transport.")
            if manifest is None:
                largest = max(site.engine.n_rows for site in sites)
                if privacy is not None:
                    if dp_iterations is None:
                        raise ValueError(
                            "a private Federation needs dp_iterations: the most private "
                            "iterations a fit under its manifest may run."
                        )
                    centre = tuple(float(c) for c in privacy.centre)
                    dp: dict[str, Any] = {
                        "dp_epsilon": privacy.epsilon,
                        "dp_delta": privacy.delta,
                        "dp_clip_radius": privacy.clip_radius,
                        "dp_iterations": dp_iterations,
                        "dp_noise": dp_noise,
                    }
                    if privacy.noise_shares is not None:
                        shares = normalised_shares(privacy.noise_shares)
                        dp["dp_shares"] = tuple(shares[name] for name in RELEASED_FIELDS)
                else:
                    dp = {}
                manifest = Manifest(
                    sites=tuple(site.name for site in sites),
                    n_features=sites[0].engine.n_features,
                    max_rows_per_site=max_rows_per_site or 1 << max(0, largest - 1).bit_length(),
                    radius=radius,
                    centre=tuple(centre) if isinstance(centre, Sequence) else float(centre),
                    max_weight=max_weight,
                    mode=mode,  # type: ignore[arg-type]
                    threshold=threshold,
                    **dp,
                )
            for site in sites:
                if site.manifest is None or site.manifest.digest != manifest.digest:
                    site.accept(manifest)
            self.transport: Transport = InProcessTransport(sites, drop=drop, arrival=arrival)
        else:
            if manifest is None:
                raise ValueError(
                    "a Federation over a transport needs the manifest its sites accepted."
                )
            self.transport = sites
        self.manifest = manifest
        self.max_attempts = max_attempts
        self.personal_weights = bool(personal_weights)
        if self.personal_weights and manifest.private:
            raise ValueError("personal_weights is not supported in a private federation yet.")

    def __repr__(self) -> str:
        return f"Federation({', '.join(self.manifest.sites)}; {self.manifest.mode})"

    @property
    def __distmix_privacy__(self) -> Privacy | None:
        """A private federation's settings (from its manifest): a fit on it is private."""
        return self.manifest.privacy()

    def engine(self) -> FederatedEngine:
        """A new session over the sites (fresh keys): the engine a fit runs on."""
        return FederatedEngine(
            self.transport,
            self.manifest,
            max_attempts=self.max_attempts,
            site_weights=self.personal_weights,
        )

    def __distmix_engine__(
        self,
        sample_weight: Any = None,
        *,
        min_components: int | None = None,
        check_features: Callable[[int, Any], None] | None = None,
        **_: Any,
    ) -> FederatedEngine:
        """The engine the estimator fits on (called by ``make_engine``)."""
        if sample_weight is not None:
            raise ValueError(
                "sample_weight cannot be given for a Federation: row weights stay at the "
                "sites (Site(..., sample_weight=...))."
            )
        if check_features is not None:
            check_features(self.manifest.n_features, None)
        engine = self.engine()
        # a private federation releases no row count
        if (
            min_components is not None
            and not engine.manifest.private
            and (engine.n_rows < min_components)
        ):
            raise ValueError(
                f"n_samples={engine.n_rows} should be >= n_components={min_components}."
            )
        return engine
