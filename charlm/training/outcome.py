"""How a run ends: its result, or the two ways it stops early that are not errors of the code."""

from __future__ import annotations

import math
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import CharlmError
from charlm.evaluate import EvalResult


def resume_command(run_dir: Path) -> str:
    return f"charlm train --resume {shlex.quote(str(run_dir))}"


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint; not a failure.

    The CLI maps it to exit code 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path, run_dir: Path) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        self.exit_code = 128 + signum
        self.resume_command = resume_command(run_dir)
        super().__init__(
            f"stopped by {self.signal_name} after step {step}; checkpoint saved to {checkpoint}"
        )


class TrainingDiverged(CharlmError):
    """A non-finite loss or gradient norm: the step was not applied and nothing was saved."""

    def __init__(self, message: str, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    elapsed_s: float
    chars_per_s: float
    eval_s: float
    parameters: int
    final_val: EvalResult
    best_val_loss: float
    best_step: int
    last_checkpoint: Path
    best_checkpoint: Path
    final_eval_s: float = 0.0  # the evals after the clock stopped (final_val's among them)
    interval_evals: int = 0  # evals on the train.eval_interval schedule; best_* needs one
    precision: str = "fp32"

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / math.log(2)

    @property
    def step_chars_per_s(self) -> float:
        """Training chars/s outside the interval evals: the loop's own speed, which `eval_s`
        (their share of `elapsed_s`) does not dilute."""
        steps_s = self.elapsed_s - self.eval_s
        return self.chars_per_s * self.elapsed_s / steps_s if steps_s > 0 else 0.0
