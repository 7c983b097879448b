"""Engines move row blocks and add their statistics; see :mod:`distmix.engines.base`.

:func:`distmix.engines.factory.make_engine` (also ``distmix.make_engine``) is the
one place that chooses and builds the engine for a source; it is not imported
here, so that importing an engine (or the EM loop) does not import Zarr.
"""

from distmix.engines.base import Engine
from distmix.engines.dask import DaskEngine
from distmix.engines.local import LocalEngine

__all__ = ["DaskEngine", "Engine", "LocalEngine"]
