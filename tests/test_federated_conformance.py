"""The engine conformance kit on the federated engine: in-process sites, both modes.

The kit's rows are cut into its blocks, and the blocks into three sites
(each site a local engine over its blocks, keeping their global rows); the
federation refuses every task that moves rows or gives per-row outputs, shows
one block of all its rows, and reports NaN/inf rows without naming them.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from distmix.engines.base import block_offsets
from distmix.engines.local import LocalEngine
from distmix.federated import Federation, Site
from distmix.federated.engine import FEDERATION_REFUSED
from distmix.federated.wire import PRIVATE_TASKS
from distmix.tasks import ROW_MOVING_TASKS, TASKS
from distmix.testing import EngineTests
from distmix.testing.engines import ComputeCount

N_SITES = 3


def site_groups(block_rows: tuple[int, ...]) -> list[list[int]]:
    """Blocks (by index) of each of three sites: consecutive groups, as even as can be;
    a single block is cut into three."""
    n = len(block_rows)
    bounds = np.linspace(0, n, N_SITES + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(N_SITES)]


def federation_of(
    X: np.ndarray, sample_weight: np.ndarray | None, block_rows: tuple[int, ...], **kwargs
) -> Federation:
    """Three in-process sites holding ``X``'s blocks (each with its global first rows)."""
    if len(block_rows) < N_SITES:  # cut into thirds, each one block
        n = sum(block_rows)
        cuts = np.linspace(0, n, N_SITES + 1).round().astype(int)
        block_rows = tuple(int(b - a) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    starts = block_offsets(block_rows)
    sites = []
    for i, blocks in enumerate(site_groups(block_rows)):
        lengths = tuple(block_rows[b] for b in blocks)
        first = starts[blocks[0]] if blocks else 0
        rows = slice(first, first + sum(lengths))
        w = None if sample_weight is None else sample_weight[rows]
        engine = LocalEngine(
            X[rows], w, lengths, 2, n_threads=1, row_offsets=tuple(starts[b] for b in blocks)
        )
        sites.append(Site(engine=engine, name=f"site-{'abc'[i]}"))
    return Federation(sites, **kwargs)


class TestFederatedEngine(EngineTests):
    refused = FEDERATION_REFUSED | PRIVATE_TASKS  # a private E-step: private federations
    accepts_empty_blocks = False  # each site is a local engine: block lengths are positive
    exposes_blocks = False
    names_bad_rows = False
    _exchanges: collections.Counter[str] = collections.Counter()

    def make_engine(self, X, sample_weight, block_rows, split_every):
        federation = federation_of(X, sample_weight, block_rows, **self.options())
        transport = federation.transport
        counts = TestFederatedEngine._exchanges
        original = transport.exchange

        def counted(requests):
            counts.update({r.kind for r in requests.values()})
            return original(requests)

        transport.exchange = counted  # type: ignore[method-assign]
        return federation.engine()

    def options(self) -> dict:
        return {"mode": "threshold"}

    @contextmanager
    def compute_counter(self) -> Iterator[ComputeCount]:
        """Rounds of compute requests (one pass at every site each)."""
        tally = ComputeCount()
        before = self._exchanges["compute"]
        yield tally
        tally.count = self._exchanges["compute"] - before


class TestFederatedEngineAllOrNothing(TestFederatedEngine):
    def options(self) -> dict:
        return {"mode": "all-or-nothing"}


def test_the_federation_refuses_rows_and_per_row_outputs():
    """Rows and per-row outputs; a private E-step is for private federations only, which
    run nothing else (tests/test_private_federation.py)."""
    map_tasks = {name for name, task in TASKS.items() if task.kind == "map"}
    # and, not yet, several models' E-steps in one round
    assert FEDERATION_REFUSED == ROW_MOVING_TASKS | map_tasks | {"estep_many", "scores"}
    assert PRIVATE_TASKS == {"private_estep", "private_moments"}
