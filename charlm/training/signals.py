"""SIGINT and SIGTERM during training: noted, so the loop stops cleanly after a checkpoint."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """The first stop signal received while `routed`, for the loop to read after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def request(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """Ask the loop to stop after the current step (the SIGINT/SIGTERM handler).

        Only records the first signal: a second Ctrl-C while the checkpoint is being written is
        ignored, so it cannot cut the save short.
        """
        if self.signum is None:
            self.signum = signum

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
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
