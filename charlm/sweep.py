"""Run the planned runs of an experiment (`charlm.experiment`) one after another, in one folder.

Re-running the same sweep finds its runs by name: finished ones are skipped, interrupted ones
resumed from their last checkpoint, and a run whose planned config changed is moved aside.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charlm import events as ev
from charlm.config import Config, config_to_dict
from charlm.errors import CharlmError
from charlm.experiment import Experiment, PlannedRun, safe_name
from charlm.rundir import CHECKPOINT_DIR, is_running
from charlm.runs import RunInfo, is_run_dir, read_run, read_summary

if TYPE_CHECKING:
    from charlm.precision import TrainPrecision

COMPARE_PLOT = "compare.png"


@dataclass
class SweepResult:
    out: Path
    runs: list[RunInfo]
    plot: Path | None


def default_sweep_dir(experiment_path: str | Path, root: str | Path = "runs") -> Path:
    """`runs/<experiment name>`: the same folder every time, so a re-run finds its runs."""
    return Path(root) / Path(experiment_path).stem


def _status(run_dir: Path) -> str | None:
    summary = read_summary(run_dir)
    return summary.status if summary is not None else None


def _finished(run_dir: Path) -> bool:
    return _status(run_dir) == "finished"


def _config_changes(run_dir: Path, config: Config, ignore: Sequence[str] = ()) -> list[str]:
    """The dotted keys whose value in the run's config.yaml is not the one planned now."""
    stored = read_run(run_dir).config
    return [
        f"{section}.{key}"
        for section, body in config_to_dict(config).items()
        for key, value in body.items()
        if f"{section}.{key}" not in ignore and stored.get(section, {}).get(key) != value
    ]


def _check_same_config(run_dir: Path, config: Config) -> None:
    """A finished run only counts as done if it was trained with the config planned now."""
    changed = _config_changes(run_dir, config)
    if changed:
        raise CharlmError(
            f"{run_dir}: holds a finished run with a different config ({', '.join(changed)}); "
            f"choose another --out folder for this sweep"
        )


def move_aside(run_dir: Path) -> Path:
    """Rename a run folder to `<name>.<status>-<n>` (status: interrupted, failed, diverged)."""
    status = safe_name(_status(run_dir) or "interrupted")
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.{status}-{n}")).exists():
        n += 1
    try:
        os.rename(run_dir, target)
    except OSError as e:
        raise CharlmError(f"{run_dir}: cannot move the old run aside ({e.strerror})") from None
    return target


def _resumable(planned: PlannedRun, run_dir: Path) -> bool:
    """Interrupted (not failed), trained with the planned config, and with a checkpoint."""
    from charlm import checkpoint as ckpt
    from charlm.training import RESUME_KEYS

    if _status(run_dir) not in (None, "interrupted"):
        return False
    if not is_run_dir(run_dir) or _config_changes(run_dir, planned.config, RESUME_KEYS):
        return False
    checkpoint, _ = ckpt.latest_intact(run_dir / CHECKPOINT_DIR)
    return checkpoint is not None


def continue_unfinished(
    planned: PlannedRun, run_dir: Path, emit: ev.Callback, precision: SharedPrecision
) -> None:
    """Carry on with a run folder that holds no finished run.

    An interrupted run with a checkpoint is resumed from it, with the planned budget. Anything
    else (a failed or diverged run, one cut before its first checkpoint, or one trained with
    another config) is kept, moved aside, and the run is trained again from the start.
    """
    from charlm.training import RESUME_KEYS, resume

    if _resumable(planned, run_dir):
        resolved = config_to_dict(planned.config)
        budget = []
        for key in RESUME_KEYS:
            section, name = key.split(".", 1)
            value = resolved[section][name]
            budget.append(f"{key}={'null' if value is None else value}")
        resume(run_dir, budget, on_event=emit)
        return
    moved = move_aside(run_dir)
    emit(ev.SweepMoved(name=planned.name, moved_to=str(moved)))
    _train(planned, run_dir, emit, precision)


class SharedPrecision:
    """`train.precision: auto` resolved once for the whole sweep, at the first run that trains
    from the start, so every run of the sweep trains in the same precision (a timing per run
    could pick differently for runs a comparison means to tell apart by their config alone).
    A resumed run keeps the precision its checkpoint records."""

    def __init__(self, emit: ev.Callback) -> None:
        self.emit = emit
        self.resolved: TrainPrecision | None = None

    def for_run(self, config: Config) -> TrainPrecision | None:
        """The resolution to pass to `train` for this run: None unless it asks for auto."""
        if config.train.precision != "auto":
            return None
        if self.resolved is None:
            self.resolved = resolve_sweep_precision(config)
            self.emit(ev.SweepPrecision(self.resolved.name, self.resolved.probe))
        return self.resolved


def resolve_sweep_precision(config: Config) -> TrainPrecision:
    """`auto` for the sweep, on the device and at the batch shape of `config`'s run."""
    from charlm import precision as prec
    from charlm.model import resolve_device
    from charlm.training import prepare_data

    device = resolve_device(config.train.device)
    vocab = len(prepare_data(config).vocab)
    t = config.train
    return prec.resolve_train_precision(
        "auto", config.model, vocab, t.batch_size, t.seq_len, device
    )


def _train(
    planned: PlannedRun, run_dir: Path, emit: ev.Callback, precision: SharedPrecision
) -> None:
    from charlm.training import train

    train(planned.config, run_dir, on_event=emit, precision=precision.for_run(planned.config))


def run_sweep(
    experiment: Experiment, out: str | Path, on_event: ev.Callback | None = None
) -> SweepResult:
    """Train every planned run not finished yet into `out/<name>`, then plot them side by side."""
    out = Path(out)
    emit: ev.Callback = on_event or ev.ignore
    precision = SharedPrecision(emit)
    if out.exists() and not out.is_dir():
        raise CharlmError(f"{out}: exists and is not a folder; expected the sweep's --out folder")
    if is_run_dir(out):
        raise CharlmError(f"{out}: is a run folder; a sweep needs a folder of its own to hold runs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharlmError(f"{out}: cannot create the sweep folder ({e.strerror})") from None
    for planned in experiment.runs:  # refuse before training anything, not halfway through
        run_dir = out / planned.name
        if _finished(run_dir):
            _check_same_config(run_dir, planned.config)
        elif is_running(run_dir):
            raise CharlmError(f"{run_dir}: another process is training this run; wait for it")
    total = len(experiment.runs)
    for index, planned in enumerate(experiment.runs, 1):
        run_dir = out / planned.name
        if _finished(run_dir):
            emit(ev.SweepRun(index, total, planned.name, "skip"))
        elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            emit(ev.SweepRun(index, total, planned.name, "continue"))
            continue_unfinished(planned, run_dir, emit, precision)
        else:
            emit(ev.SweepRun(index, total, planned.name, "start"))
            _train(planned, run_dir, emit, precision)
    runs = [read_run(out / planned.name, name=planned.name) for planned in experiment.runs]
    plot: Path | None = None
    try:
        from charlm.plots import plot_comparison

        plot = plot_comparison(runs, out / COMPARE_PLOT)
    except Exception as e:  # the runs are what matters; a missing picture is only a warning
        emit(ev.Warned(f"could not draw {out / COMPARE_PLOT}: {e}"))
    return SweepResult(out=out, runs=runs, plot=plot)
