"""distmix: Gaussian mixtures fitted by EM on data that do not fit on one machine.

Every way of fitting is the same map-reduce: chunk → sufficient statistics →
tree sum → M-step → parameters, with a different engine moving the statistics.
"""

from distmix import plot
from distmix.em import EMResult, run_em
from distmix.engines import DaskEngine, LocalEngine
from distmix.engines.factory import make_engine
from distmix.estep import chunk_stats
from distmix.estimator import GaussianMixture, Selection, fit_stream, load, select
from distmix.mstep import EmptyComponentWarning, m_step
from distmix.params import Params
from distmix.privacy import Privacy
from distmix.suffstats import SuffStats

__version__ = "0.1.0"

__all__ = [
    "DaskEngine",
    "EMResult",
    "EmptyComponentWarning",
    "GaussianMixture",
    "LocalEngine",
    "Params",
    "Privacy",
    "SuffStats",
    "chunk_stats",
    "fit_stream",
    "load",
    "m_step",
    "make_engine",
    "plot",
    "run_em",
    "select",
    "Selection",
]
