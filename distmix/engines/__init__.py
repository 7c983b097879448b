"""Engines move row blocks and add their statistics; see :mod:`distmix.engines.base`."""

from distmix.engines.base import Engine
from distmix.engines.dask import DaskEngine
from distmix.engines.local import LocalEngine

__all__ = ["DaskEngine", "Engine", "LocalEngine"]
