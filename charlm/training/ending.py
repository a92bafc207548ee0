"""How a run ends: the evals of its last step, and the summary.json that says how it ended.

`RunEnd` is a part of `charlm.training.loop.Trainer`, which holds the state named below. A run
whose budget is spent is concluded once: its last step's evals, metrics line and checkpoint (which
then records `final`), then its summary. A run stopped or killed before its summary is finished by
a resume, which starts here and runs only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from charlm import events as ev
from charlm.config import Config
from charlm.distributed import Dist
from charlm.model import CharLM
from charlm.precision import TrainPrecision
from charlm.rundir import MetricsLog, Summary
from charlm.training.outcome import (
    TrainingInterrupted,
    TrainResult,
    finished_summary,
    interrupted_summary,
    train_result,
)
from charlm.training.signals import StopRequested, StopSignals
from charlm.training.state import Counters

Row = dict[str, float | int]


class RunEnd:
    """The end of the training loop (a base of `Trainer`, which provides what is declared)."""

    config: Config
    run_dir: Path
    dist: Dist
    emit: ev.Callback
    model: CharLM
    precision: TrainPrecision
    counters: Counters
    stop: StopSignals
    agreed_signal: int | None
    last_checkpoint: Path | None

    @property
    def step(self) -> int:
        return self.counters.step

    def eval_row(self, done: bool, scheduled: bool) -> Row:
        raise NotImplementedError

    def save_step(self) -> Path:
        raise NotImplementedError

    def write_summary(self, summary: Summary) -> None:
        raise NotImplementedError

    def spent(self) -> bool:
        """Whether the budget is used up (a resumed run may start so: it only concludes)."""
        t, c = self.config.train, self.counters
        steps = t.max_steps is not None and c.step >= t.max_steps
        return steps or (t.max_time is not None and c.elapsed >= t.max_time)

    def signal(self) -> int | None:
        """The stop signal received so far (under torchrun: as the processes agreed on it)."""
        return self.agreed_signal if self.dist.enabled else self.stop.signum

    def row_head(self) -> Row:
        """The start of a metrics line without training numbers."""
        return {"step": self.step, "elapsed_s": round(self.counters.elapsed, 3)}

    def log(self, metrics: MetricsLog, row: Row, report: bool = True) -> None:
        """Append a metrics line (rank 0) and report it (unless it was reported before)."""
        if row and self.dist.is_main:
            metrics.write(row)
            if report:
                self.report(row)

    def report(self, row: Row) -> None:
        self.emit(ev.Logged(step=self.step, elapsed_s=float(row["elapsed_s"]), row=row))

    def conclude(self, metrics: MetricsLog, row: Row, scheduled: bool) -> None:
        """The last step's evals, its metrics line (`row`: its training numbers) and checkpoint;
        nothing when the checkpoint resumed from holds them already.

        The training numbers are reported before the evals, the scores after them (one line in
        metrics.jsonl). A stop signal during the evals ends them at once (under torchrun, where
        every process must take part, after them): the line and checkpoint are then written
        without them, and a resume runs them.
        """
        c = self.counters
        if c.final:
            return
        if row:
            self.report(row)
        before = dataclasses.replace(c)
        try:
            with self.stop.abortable() if not self.dist.enabled else contextlib.nullcontext():
                scores = self.eval_row(True, scheduled)
        except StopRequested as stop:
            for f in dataclasses.fields(c):
                setattr(c, f.name, getattr(before, f.name))
            if row:  # else a resume of the same checkpoint was stopped: it is the resume point
                self.log(metrics, row, report=False)
                self.save_step()
            self.interrupted(stop.signum)
        c.final = True
        self.log(metrics, {**(row or self.row_head()), **scores}, report=False)
        self.report({**self.row_head(), **scores})
        self.save_step()

    def interrupted(self, signum: int) -> None:
        """Record the stop in summary.json and raise it; the last checkpoint is the resume point."""
        assert self.last_checkpoint is not None
        stop = TrainingInterrupted(signum, self.step, self.last_checkpoint, self.run_dir)
        self.write_summary(interrupted_summary(stop))  # the others exit after rank 0 wrote
        self.emit(ev.Interrupted(signal=stop.signal_name, step=self.step))
        raise stop

    def finish(self) -> TrainResult:
        """summary.json of a finished run, unless a stop signal came after the last step."""
        signum = self.signal()
        if signum is not None:  # a resume finishes the run
            self.interrupted(signum)
        assert self.last_checkpoint is not None
        result = train_result(
            self.counters, self.config.train, self.run_dir, self.model.num_parameters(),
            self.last_checkpoint, self.precision.name,
        )  # fmt: skip
        summary = finished_summary(result, self.precision)
        self.write_summary(summary)
        self.emit(ev.Ended(summary))
        return result
