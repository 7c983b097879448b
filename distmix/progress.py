"""Reporting: messages through :mod:`logging`, progress through one reporter.

Layer: imports nothing of distmix. The EM loop and the online driver log what
a verbose scikit-learn estimator prints (``logging.getLogger("distmix")``, at
INFO) and tell the active :class:`ProgressReporter` where the fit stands; the
engines tell it how far the current pass over the blocks has got. Nothing in
the library prints: an application chooses where messages go (the CLI sends
them to standard output, a notebook user may call :func:`log_to`).

One overall bar per fit: its steps are EM iterations (or a stream's updates),
and it shows the blocks of the pass in progress, so that initialisation's
passes (k-means, about fifteen) move the same bar instead of drawing their own.

Use::

    with distmix.progress.reporting(distmix.progress.TextProgress()):
        model.fit(X)
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, TextIO

#: the logger of every distmix message (INFO: what ``verbose`` shows)
logger = logging.getLogger("distmix")


class ProgressReporter:
    """Where a fit stands; the base class ignores everything (no reporting).

    Calls come in this order: :meth:`begin` once per fit (``total`` steps, or
    ``None`` when unknown); per pass over the blocks, :meth:`begin_pass` then
    :meth:`blocks_done` with the number of blocks done so far (possibly
    fractional, from a cluster's task counts); :meth:`step` after every
    iteration or update; :meth:`end` when the fit is over (also on error).

    A reporter with ``counts_blocks = False`` hears only of fits and steps: the
    engines then do not count blocks for it (on a cluster, counting watches the
    scheduler's tasks).
    """

    #: whether the engines should report the blocks of each pass to this reporter
    counts_blocks = True

    def begin(self, total: int | None, what: str = "iteration") -> None:
        """A fit of ``total`` steps (``what``: "iteration" or "update") starts."""

    def begin_pass(self, n_blocks: int) -> None:
        """A pass over ``n_blocks`` blocks starts."""

    def blocks_done(self, done: float) -> None:
        """``done`` blocks of the current pass are done."""

    def step(self, n_done: int, note: str = "") -> None:
        """``n_done`` steps are done (``note``: e.g. the log-likelihood)."""

    def end(self) -> None:
        """The fit is over."""


class TextProgress(ProgressReporter):
    """One line on a text stream, rewritten in place: a bar of the steps, the step
    count, the blocks of the pass in progress, the latest note and the time.

    Works on a terminal and in a notebook's output alike (``\\r`` rewrites the
    line); :meth:`end` leaves the final line in place.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 24) -> None:
        self.stream = stream
        self.width = width
        self.total: int | None = None
        self.what = "iteration"
        self.n_done = 0
        self.n_blocks = 0
        self.blocks = 0.0
        self.note = ""
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self.drawn = False

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def begin(self, total: int | None, what: str = "iteration") -> None:
        self.total, self.what, self.n_done = total, what, 0
        self.started = time.perf_counter()
        self._draw(force=True)

    def begin_pass(self, n_blocks: int) -> None:
        self.n_blocks, self.blocks = n_blocks, 0.0
        self._draw()

    def blocks_done(self, done: float) -> None:
        self.blocks = done
        self._draw(force=done >= self.n_blocks)

    def step(self, n_done: int, note: str = "") -> None:
        self.n_done, self.note = n_done, note
        self._draw(force=True)

    def end(self) -> None:
        self._draw(force=True)
        self._out().write("\n")
        self._out().flush()
        self.drawn = False

    def line(self) -> str:
        """The line as it stands."""
        total = self.total
        frac = min(1.0, self.n_done / total) if total else 0.0
        bar = "#" * int(self.width * frac)
        count = f"{self.n_done}/{total}" if total else str(self.n_done)
        pass_part = (
            f" | pass {int(self.blocks)}/{self.n_blocks} blocks ({self._pass_percent()}%)"
            if self.n_blocks
            else ""
        )
        note = f" | {self.note}" if self.note else ""
        seconds = time.perf_counter() - self.started
        return f"[{bar:<{self.width}}] {self.what} {count}{pass_part}{note} | {seconds:.1f}s"

    def _pass_percent(self) -> int:
        return int(100 * min(1.0, self.blocks / self.n_blocks)) if self.n_blocks else 100

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_draw < 0.1:
            return  # at most ten redraws a second
        self._last_draw = now
        self.drawn = True
        out = self._out()
        out.write("\r\x1b[2K" + self.line() if out.isatty() else "\r" + self.line())
        out.flush()


_NO_REPORTER = ProgressReporter()
_REPORTER: ContextVar[ProgressReporter] = ContextVar("distmix_progress", default=_NO_REPORTER)


def current() -> ProgressReporter:
    """The reporter of the fit in progress (a no-op one outside :func:`reporting`)."""
    return _REPORTER.get()


def reporting_on() -> bool:
    """Whether a reporter listens to block counts (engines skip their counting when
    none does)."""
    reporter = _REPORTER.get()
    return reporter is not _NO_REPORTER and reporter.counts_blocks


@contextlib.contextmanager
def reporting(reporter: ProgressReporter | None = None) -> Iterator[ProgressReporter]:
    """Within this block, fits and passes report to ``reporter`` (default: a
    :class:`TextProgress` on standard error)."""
    chosen = TextProgress() if reporter is None else reporter
    token = _REPORTER.set(chosen)
    try:
        yield chosen
    finally:
        _REPORTER.reset(token)


@contextlib.contextmanager
def fit_progress(total: int | None, what: str = "iteration") -> Iterator[ProgressReporter]:
    """The reporter, told that a fit of ``total`` steps begins, and that it ends."""
    reporter = current()
    reporter.begin(total, what)
    try:
        yield reporter
    finally:
        reporter.end()


@contextlib.contextmanager
def log_to(stream: TextIO | None = None, level: int = logging.INFO) -> Iterator[None]:
    """Within this block, distmix's messages go to ``stream`` (default: standard output)
    as plain lines, once each: they do not also propagate to the root logger's handlers.

    An application that has given the ``distmix`` logger a handler of its own keeps it:
    then nothing changes here.
    """
    if logger.handlers:
        yield
        return
    handler = _LineHandler(stream if stream is not None else sys.stdout)
    level_before, propagate_before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level_before)
        logger.propagate = propagate_before


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Plain message lines that do not run into a progress line on the same stream:
    the line is cleared first and drawn again after the message."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        bar = current()
        shared = isinstance(bar, TextProgress) and bar.drawn and bar._out() is self.stream
        if shared:
            self.stream.write("\r\x1b[2K" if self.stream.isatty() else "\n")
        super().emit(record)
        if shared:
            assert isinstance(bar, TextProgress)
            bar._draw(force=True)


def verbose_logging(verbose: Any) -> contextlib.AbstractContextManager[None]:
    """What scikit-learn's ``verbose`` means here: with ``verbose > 0``, distmix's
    messages are printed to standard output for the duration of the call, whatever the
    root logger's configuration (to route them elsewhere, leave ``verbose=0`` and give
    the ``distmix`` logger a handler at INFO)."""
    return log_to() if verbose else contextlib.nullcontext()
