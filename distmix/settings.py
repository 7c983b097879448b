"""The estimator's settings: one check of all of them, before any work.

Layer: the loop's side (imports the kernels-side registries it validates
against, never an engine or the estimator). :class:`distmix.GaussianMixture`
and the command line both call :func:`check_settings`, so that a bad value is
refused with the same message, naming the parameter, whichever way it came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from distmix._typing import INIT_PARAMS, check_covariance_type
from distmix.kernels import check_kernel
from distmix.privacy import Privacy
from distmix.reduce import check_split_every
from distmix.stepwise import StepSchedule


def check_count(name: str, value: Any, minimum: int, *, none_ok: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer >= ``minimum``
    (or ``None``, with ``none_ok``); a bool is not an integer here."""
    if none_ok and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        allowed = "None or an integer" if none_ok else "an integer"
        raise ValueError(f"{name} must be {allowed} >= {minimum}, got {value!r}.")


def check_settings(settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first estimator setting out of its range.

    ``settings`` are :meth:`GaussianMixture.get_params`'s (the ``*_init`` arrays
    are checked against the data's shape once it is known, not here).
    """
    for name, minimum in (
        ("n_components", 1),
        ("max_iter", 0),
        ("n_init", 1),
        ("verbose_interval", 1),
    ):
        check_count(name, settings[name], minimum)
    check_covariance_type(settings["covariance_type"])
    for name in ("tol", "reg_covar"):
        value = settings[name]
        if (
            not isinstance(value, (int, float, np.number))
            or not value >= 0
            or not math.isfinite(value)
        ):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    if settings["init_params"] not in INIT_PARAMS:
        raise ValueError(
            f"init_params={settings['init_params']!r} is not one of "
            f"{', '.join(repr(i) for i in INIT_PARAMS)}."
        )
    check_split_every(settings["split_every"])
    persist = settings["persist"]
    if not (isinstance(persist, bool) or persist == "auto"):
        raise ValueError(f"persist must be 'auto', True or False, got {persist!r}.")
    fraction = settings["persist_fraction"]
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction <= 1
    ):
        raise ValueError(f"persist_fraction must be a number in (0, 1], got {fraction!r}.")
    StepSchedule(  # checks the step sizes of online EM
        settings["learning_decay"], settings["learning_offset"], settings["forgetting_factor"]
    )
    check_count("average_after", settings["average_after"], 0, none_ok=True)
    warmup = settings.get("warmup_rows", "auto")
    if not (isinstance(warmup, str) and warmup == "auto"):
        try:
            check_count("warmup_rows", warmup, 0)
        except ValueError:
            raise ValueError(
                f"warmup_rows must be 'auto' or an integer >= 0, got {warmup!r}."
            ) from None
    if settings.get("kernel") is not None:
        check_kernel(settings["kernel"])
    privacy = settings.get("privacy")
    if privacy is not None and not isinstance(privacy, Privacy):
        raise TypeError(f"privacy must be a distmix.Privacy or None, got {type(privacy).__name__}.")
