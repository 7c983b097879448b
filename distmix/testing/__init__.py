"""Conformance suites that every engine and every kernel backend inherits.

Subclass :class:`EngineTests` in a test module and give ``make_engine(X,
sample_weight, block_rows, split_every)``, which builds the engine under test
(and, optionally, ``refused``: the tasks it must refuse); the subclass then
runs every check of the engine protocol of :mod:`distmix.engines.base`::

    from distmix.testing import EngineTests

    class TestMyEngine(EngineTests):
        def make_engine(self, X, sample_weight, block_rows, split_every):
            return MyEngine(X, sample_weight, block_rows, split_every)

Subclass :class:`KernelTests` with ``xp``, ``device`` and ``dtype`` to check
the array-API kernels of :mod:`distmix.estep` on that namespace and device.

This package imports pytest; nothing in :mod:`distmix` imports it.
"""

from distmix.testing.engines import EngineTests
from distmix.testing.kernels import KernelTests

__all__ = ["EngineTests", "KernelTests"]
