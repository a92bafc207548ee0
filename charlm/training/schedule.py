"""The schedule of a run: the learning rate at each step, and when a step evaluates or saves.

The learning rate is a pure function of the step (or of elapsed time when only a time budget
bounds the run), so it needs no state of its own and a resumed run follows it exactly. Evals and
checkpoints come every N steps, every S seconds of training, or both: a GPU runs thousands of
steps a minute, so a step count tuned on a CPU comes every few seconds there, while a cadence in
seconds means the same on any machine. Under torchrun the seconds are the clock all processes
agreed on, so every process takes the same decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charlm.config import Config


@dataclass
class Cadence:
    every_steps: int | None
    every_s: float | None
    last_s: float = 0.0  # the training clock at the last time this fired (or the run's start)

    def due(self, step: int, elapsed: float) -> bool:
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        by_time = self.every_s is not None and elapsed - self.last_s >= self.every_s
        return by_steps or by_time

    def fired(self, elapsed: float) -> None:
        self.last_s = elapsed


def lr_at(config: Config, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio over the run's budget.

    Progress is measured in steps when `max_steps` is set, else in seconds of `max_time`.
    """
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.max_steps is not None:
        span = max(1, t.max_steps - t.warmup_steps)
        progress = (step - t.warmup_steps) / span
    else:
        assert t.max_time is not None
        progress = elapsed / t.max_time
    progress = min(max(progress, 0.0), 1.0)
    floor = t.lr * t.min_lr_ratio
    return floor + (t.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
