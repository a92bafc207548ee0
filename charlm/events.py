"""What training and sweeps report as they go, one dataclass per kind, for the CLI to show.

The library never prints: it calls a `Callback` with these, and the CLI, the TensorBoard logger
or a test decide what to do with them (match on the class, not on a string).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from charlm.rundir import Summary


@dataclass(frozen=True)
class Started:
    """Training (new or resumed) is about to take its first step."""

    run_dir: str
    device: str
    precision: str
    precision_probe: dict[str, float] | None
    parameters: int
    vocab_size: int
    train_chars: int
    val_chars: int
    max_steps: int | None
    max_time: float | None
    step: int
    elapsed_s: float = 0.0  # trained already (a resumed run's time before this attempt)


@dataclass(frozen=True)
class Progress:
    """How far training is, at most once a second between metrics lines, so a display moves
    even when lines are far apart. Built from counts the loop keeps anyway: no device sync.

    `chars_per_s` is the speed since the previous report, interval evals left out (None when no
    step ended since). On a GPU the steps are counted as queued, a few ahead of the device.
    """

    step: int
    elapsed_s: float
    chars_per_s: float | None


@dataclass(frozen=True)
class Logged:
    """A metrics line (also written to metrics.jsonl): train loss, val scores, or both.

    The last step's line is reported in two parts: its training numbers before its evals (the
    final eval can take a while), then its scores; metrics.jsonl holds them as one line.
    """

    step: int
    elapsed_s: float
    row: dict[str, Any] = field(default_factory=dict)  # the metrics.jsonl line, step included

    @property
    def train_loss(self) -> float | None:
        return self.row.get("train_loss")

    @property
    def train_bpc(self) -> float | None:
        """The train loss in bits per character (metrics.jsonl keeps nats)."""
        loss = self.train_loss
        return None if loss is None else loss / math.log(2)

    @property
    def val_bpc(self) -> float | None:
        return self.row.get("val_bpc")

    @property
    def chars_per_s(self) -> float | None:
        return self.row.get("chars_per_s")


@dataclass(frozen=True)
class CheckpointSaved:
    path: str
    step: int


@dataclass(frozen=True)
class FinalEvalStarted:
    """The whole-split evaluation at the end of a run begins (it can take a while)."""

    step: int
    chars: int


@dataclass(frozen=True)
class FinalEvalFinished:
    step: int
    seconds: float
    loss: float
    bpc: float


@dataclass(frozen=True)
class Resumed:
    path: str
    step: int


@dataclass(frozen=True)
class Warned:
    message: str


@dataclass(frozen=True)
class Interrupted:
    signal: str
    step: int


@dataclass(frozen=True)
class Ended:
    """The run finished; `summary` is what summary.json holds (charlm.rundir.Summary)."""

    summary: Summary


@dataclass(frozen=True)
class SweepRun:
    """A sweep reaches its next planned run: skip (finished), continue, or start it."""

    index: int
    total: int
    name: str
    action: Literal["skip", "continue", "start"]


@dataclass(frozen=True)
class SweepMoved:
    """An unfinished run that cannot be resumed was kept under another name."""

    name: str
    moved_to: str


@dataclass(frozen=True)
class SweepPrecision:
    """The precision every run of a sweep trains in, resolved once from `auto`."""

    precision: str
    probe: dict[str, float] | None


Event = (
    Started
    | Progress
    | Logged
    | CheckpointSaved
    | FinalEvalStarted
    | FinalEvalFinished
    | Resumed
    | Warned
    | Interrupted
    | Ended
    | SweepRun
    | SweepMoved
    | SweepPrecision
)
Callback = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The callback of a caller that does not listen."""
