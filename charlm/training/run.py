"""`train(config, run_dir)`: the whole job of a new run, reported through a callback so the CLI
(or a notebook, or a test) decides how to show it; and the extras around any run's loop."""

from __future__ import annotations

import contextlib
from pathlib import Path

from charlm import distributed, loggers
from charlm import events as ev
from charlm.config import Config, dump_yaml
from charlm.errors import CharlmError
from charlm.precision import TrainPrecision
from charlm.rundir import (
    SUMMARY_NAME,
    check_run_dir,
    failure_summary,
    prepare_run_dir,
    running_lock,
    write_config,
    write_summary,
)
from charlm.training import init_from
from charlm.training.loop import Trainer
from charlm.training.outcome import TrainingInterrupted, TrainResult, interrupted_summary


def train(
    config: Config,
    run_dir: str | Path,
    on_event: ev.Callback | None = None,
    precision: TrainPrecision | None = None,
) -> TrainResult:
    """Train a model as `config` says, writing everything into the new folder `run_dir`.

    `train.precision: auto` is resolved once, before config.yaml is written (which records the
    result); `precision` passes a resolution made already (a sweep resolves it once for all its
    runs). Under torchrun every process calls it with the same arguments: rank 0 alone checks
    and prepares the folder, and an error on any process stops them all
    (see `distributed.together`).
    """
    run_dir = Path(run_dir)
    config = init_from.resolve_config(config)  # a fine-tune: model keys from its source
    loggers.check_installed(config)  # a missing extra stops here, before any work or writes
    with distributed.process_group() as info:
        main = info.is_main
        # The folder is checked before the (slow) data load, and before anything is written.
        distributed.together(info, lambda: check_run_dir(run_dir) if main else None)
        trainer = distributed.together(
            info, lambda: Trainer(config, run_dir, on_event, info, precision)
        )

        def prepare() -> None:
            if main:
                prepare_run_dir(run_dir)
                write_config(run_dir, dump_yaml(config), auto_resolved(trainer))

        distributed.together(info, prepare)
        return run_recorded(trainer)


def auto_resolved(trainer: Trainer) -> str | None:
    """The precision `auto` resolved to for this run, or None when the config named one."""
    return trainer.precision.name if trainer.config.train.precision == "auto" else None


def run_recorded(trainer: Trainer) -> TrainResult:
    """Run the trainer (new or resumed) with the extras around it: the experiment trackers
    asked for, a `failed` summary.json when an error stops it (unless the trainer wrote its own, as
    for interrupted or diverged runs), curves.png when it finishes, and RUN/.lock locked
    meanwhile so `charlm runs` can tell a run in progress from an interrupted one.

    A stop signal is heeded until the end: one that comes while summary.json is written or the
    curves are drawn stops the run as one during training does (a resume then only writes them
    again).
    """
    if not trainer.dist.is_main:  # under torchrun, rank 0 alone writes files
        return trainer.run()
    with trainer.stop.routed():
        result = _recorded(trainer)
        _draw_curves(trainer)
    signum = trainer.stop.signum
    if signum is not None:  # summary.json then says so, and a resume finishes the run
        stop = TrainingInterrupted(signum, trainer.step, result.last_checkpoint, trainer.run_dir)
        write_summary(trainer.run_dir, interrupted_summary(stop))  # rank 0 alone is here
        trainer.emit(ev.Interrupted(signal=stop.signal_name, step=trainer.step))
        raise stop
    return result


def _recorded(trainer: Trainer) -> TrainResult:
    with running_lock(trainer.run_dir):  # trackers start only for the process that trains
        run = loggers.RunContext(trainer.run_dir, trainer.config, trainer.step)
        trackers = loggers.Loggers(run, trainer.emit)
        trainer.emit = trackers.emit
        try:
            return trainer.run()
        except Exception as e:
            if not (trainer.run_dir / SUMMARY_NAME).exists():
                summary = failure_summary(e, trainer.step, trainer.counters.elapsed)
                # The error being raised is the one to report; a disk too full for summary.json
                # as well must not add a second.
                with contextlib.suppress(CharlmError):
                    write_summary(trainer.run_dir, summary)
            raise
        finally:
            trackers.close()


def _draw_curves(trainer: Trainer) -> None:
    try:
        from charlm.plots import plot_curves

        plot_curves(trainer.run_dir)
    except Exception as e:  # a plot is a convenience: never lose a finished run to it
        reason = " ".join(str(e).split()) or type(e).__name__
        trainer.emit(ev.Warned(f"could not draw curves.png: {reason}"))
