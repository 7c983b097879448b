"""The ServerApp of a distmix federation: the coordinator's EM loop over Flower.

Runs on the coordinator's side (under the SuperLink) with the coordinator's
installed distmix. Run config (``distmix federate`` sets it): ``manifest`` (path
of the manifest JSON every site accepted), ``out`` (where the model is
written), the model's ``components``, ``covariance-type``, ``init-params``,
``means-init`` (a ``.npy`` path, optional), ``max-iter``, ``tol``,
``reg-covar``, ``random-state``, ``timeout`` (seconds a round waits),
``overwrite`` and ``personal-weights``.
"""

import logging
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from distmix import GaussianMixture
from distmix.federated import Federation, Manifest
from distmix.federated.flower import FlowerTransport

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO)
    config = context.run_config
    manifest = Manifest.from_json(Path(str(config["manifest"])).read_text())
    transport = FlowerTransport(grid, manifest.sites, timeout=float(config["timeout"]))
    means = str(config["means-init"])
    model = GaussianMixture(
        int(config["components"]),
        covariance_type=str(config["covariance-type"]),
        init_params=str(config["init-params"]),
        means_init=np.load(means, allow_pickle=False) if means else None,
        max_iter=int(config["max-iter"]),
        tol=float(config["tol"]),
        reg_covar=float(config["reg-covar"]),
        random_state=int(config["random-state"]),
    ).fit(Federation(transport, manifest, personal_weights=bool(config["personal-weights"])))
    model.save(str(config["out"]), overwrite=bool(config["overwrite"]))
    by_kind = defaultdict(list)
    for kind, seconds in transport.timings:
        by_kind[kind].append(seconds)
    print(
        "distmix federate: exchanges "
        + ", ".join(
            f"{kind} {len(times)} x {statistics.median(times):.2f} s"
            for kind, times in by_kind.items()
        )
    )
    if hasattr(model, "privacy_"):  # a private manifest: nothing but the noisy sums left
        report = model.privacy_
        outcome = (
            f"{model.n_iter_} private iterations, epsilon={report['epsilon']:.6g} at "
            f"delta={report['delta']:g} spent"
        )
    else:
        outcome = (
            f"{model.n_iter_} iterations, converged={model.converged_}, "
            f"lower bound {model.lower_bound_:.6f}"
        )
    print(
        f"distmix federate: {outcome}, sites {', '.join(transport.site_names)}; "
        f"model written to {config['out']}"
    )
