"""How a run ends: its result, or the two ways it stops early that are not errors of the code."""

from __future__ import annotations

import math
import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charlm.checkpoint import BEST_NAME
from charlm.errors import CharlmError
from charlm.evaluate import EvalResult
from charlm.precision import TrainPrecision
from charlm.rundir import CHECKPOINT_DIR, Summary

if TYPE_CHECKING:
    from charlm.config import TrainConfig
    from charlm.training.state import Counters


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


def diverged_message(
    step: int, loss: float, norm: float, noticed: int | None, last: Path | None
) -> str:
    """The error of a run whose step `step` was not finite; `noticed`: the step at which a
    deferred check found it (None: found before the update, which was not applied)."""
    where = (
        f"last good checkpoint {last} (left untouched)"
        if last is not None
        else "no checkpoint had been saved yet"
    )
    outcome = (
        f"noticed at step {noticed}, before anything was saved"
        if noticed is not None
        else "the step was not applied"
    )
    return (
        f"training diverged at step {step}: loss {loss:.4g}, gradient norm {norm:.4g} "
        f"(not finite); {outcome}; {where}. Try a lower train.lr or a "
        f"train.grad_clip > 0 in a new run"
    )


def train_result(
    c: Counters, t: TrainConfig, run_dir: Path, parameters: int, last: Path, precision: str
) -> TrainResult:
    """The result of a run that has spent its budget, from where it stands (`c`)."""
    assert c.last_val is not None
    train_chars = c.step * t.batch_size * t.seq_len
    return TrainResult(
        run_dir=run_dir,
        steps=c.step,
        elapsed_s=c.elapsed,
        chars_per_s=train_chars / max(c.elapsed, 1e-9),
        eval_s=c.eval_s,
        parameters=parameters,
        final_val=c.last_val,
        best_val_loss=c.best_val_loss,
        best_step=c.best_step,
        last_checkpoint=last,
        best_checkpoint=run_dir / CHECKPOINT_DIR / BEST_NAME,
        final_eval_s=c.final_eval_s,
        interval_evals=c.interval_evals,
        precision=precision,
    )


def interrupted_summary(stop: TrainingInterrupted) -> Summary:
    return Summary(
        status="interrupted",
        signal=stop.signal_name,
        steps=stop.step,
        last_checkpoint=str(stop.checkpoint),
        resume=stop.resume_command,
    )


def finished_summary(result: TrainResult, precision: TrainPrecision) -> Summary:
    """What summary.json says about a finished run (paths relative to the run folder)."""
    return Summary(
        status="finished",
        steps=result.steps,
        elapsed_s=round(result.elapsed_s, 3),
        chars_per_s=round(result.chars_per_s, 1),
        eval_s=round(result.eval_s, 3),
        step_chars_per_s=round(result.step_chars_per_s, 1),
        final_eval_s=round(result.final_eval_s, 3),
        interval_evals=result.interval_evals,
        precision=precision.name,
        precision_probe=precision.probe,
        parameters=result.parameters,
        final_val=result.final_val.to_dict(),
        best_val_loss=result.best_val_loss,
        best_val_bpc=result.best_val_bpc,
        best_step=result.best_step,
        last_checkpoint=str(result.last_checkpoint.relative_to(result.run_dir)),
        best_checkpoint=str(result.best_checkpoint.relative_to(result.run_dir)),
    )
