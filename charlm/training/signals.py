"""SIGINT and SIGTERM during training: noted, so the loop stops cleanly after a checkpoint.

Work that can be thrown away and redone (the evals of the last step) runs `abortable`: a stop
signal then ends it at once. A process that exits once it stops (the CLI) runs
`ignored_after_stop`, so a second or third Ctrl-C while it stops cannot cut the stop short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IGNORE_AFTER_STOP: list[bool] = [False]


@contextlib.contextmanager
def ignored_after_stop() -> Iterator[None]:
    """Inside, once a routed stop signal has arrived, SIGINT and SIGTERM stay ignored instead
    of getting back the handlers from before (for the CLI, whose process then only stops)."""
    _IGNORE_AFTER_STOP[0] = True
    try:
        yield
    finally:
        _IGNORE_AFTER_STOP[0] = False


class StopRequested(Exception):
    """Raised inside `StopSignals.abortable` when a stop signal arrives."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """The first stop signal received while `routed`, for the loop to read after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.aborting = False

    def request(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """Ask the loop to stop after the current step (the SIGINT/SIGTERM handler).

        Only records the first signal: a second Ctrl-C while the checkpoint is being written is
        ignored, so it cannot cut the save short.
        """
        if self.signum is None:
            self.signum = signum
            if self.aborting:
                self.aborting = False
                raise StopRequested(signum)

    @contextlib.contextmanager
    def abortable(self) -> Iterator[None]:
        """Inside, a stop signal raises `StopRequested` at once; one that came before, on entry."""
        if self.signum is not None:
            raise StopRequested(self.signum)
        self.aborting = True
        try:
            yield
        finally:
            self.aborting = False

    @contextlib.contextmanager
    def routed(self) -> Iterator[None]:
        """Route SIGINT/SIGTERM to `request` (main thread only), then restore the old ones."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self.request)
        try:
            yield
        finally:
            for s, handler in previous.items():
                if self.signum is not None and _IGNORE_AFTER_STOP[0]:
                    handler = signal.SIG_IGN
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
