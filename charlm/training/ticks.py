"""When the training loop reports `events.Progress`: at most once a second of wall time.

Metrics lines come every `train.log_interval` steps, which with slow steps can be minutes apart;
a display needs to move more often than that. The loop already reads the clock after every step,
so a report costs it one comparison of two floats per step, and building an event once a second.
"""

from __future__ import annotations

import math

from charlm import events as ev

PROGRESS_EVERY_S = 1.0


class ProgressTicks:
    """The next report's time, and the counts at the last one (for the speed in between)."""

    def __init__(
        self,
        chars_per_step: int,
        now: float,
        step: int,
        eval_s: float,
        enabled: bool = True,
        every_s: float = PROGRESS_EVERY_S,
    ) -> None:
        self.chars_per_step, self.every_s = chars_per_step, every_s
        self.next_at = now + every_s if enabled else math.inf  # the loop compares its clock
        self.last = (now, step, eval_s)

    def event(self, now: float, elapsed: float, step: int, eval_s: float) -> ev.Progress:
        """The report at `now` (the loop's clock), and the next one a second later.

        `eval_s` is the run's interval-eval seconds so far: those since the last report are not
        training time, so the speed leaves them out.
        """
        then, last_step, last_eval_s = self.last
        busy = (now - then) - (eval_s - last_eval_s)
        steps = step - last_step
        speed = steps * self.chars_per_step / busy if steps > 0 and busy > 0 else None
        self.last = (now, step, eval_s)
        self.next_at = now + self.every_s
        return ev.Progress(step=step, elapsed_s=round(elapsed, 3), chars_per_s=speed)
