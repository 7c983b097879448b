"""Engines move row blocks and add their statistics; see :mod:`distmix.engines.base`.

:func:`make_engine` (:mod:`distmix.engines.factory`) is the one place that
chooses and builds the engine for a source.
"""

from distmix.engines.base import Engine
from distmix.engines.dask import DaskEngine
from distmix.engines.factory import make_engine
from distmix.engines.local import LocalEngine

__all__ = ["DaskEngine", "Engine", "LocalEngine", "make_engine"]
