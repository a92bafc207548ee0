"""Continue a run from a checkpoint: pick it, check the budgets leave work, restore the state.

The checkpoint's config is the run's config (only `RESUME_KEYS` may change) and its recorded
precision is the run's precision: a resumed `auto` run is never timed again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from charlm import checkpoint as ckpt
from charlm import distributed, loggers
from charlm import events as ev
from charlm.config import Config, apply_overrides, config_from_dict, dump_yaml
from charlm.distributed import Dist
from charlm.errors import CharlmError
from charlm.precision import TrainPrecision
from charlm.rundir import (
    CHECKPOINT_DIR,
    SUMMARY_NAME,
    check_resume_dir,
    rollback_metrics,
    write_config,
)
from charlm.runs import read_summary
from charlm.training.loop import Trainer
from charlm.training.outcome import TrainResult, resume_command
from charlm.training.run import auto_resolved, run_recorded

# Keys a resumed run may change: budgets (which extend or end the run) and the device (to resume a
# GPU run on a CPU machine). Everything else is the recorded config, so the run stays one run.
RESUME_KEYS = ("train.max_steps", "train.max_time", "train.device")


def resume_config(checkpoint: ckpt.Checkpoint, overrides: Sequence[str] = ()) -> Config:
    """The config recorded in a checkpoint, with only the `RESUME_KEYS` allowed to change."""
    where = f"{checkpoint.path} (config record)"
    raw = checkpoint.record.get("config")
    if not isinstance(raw, dict):
        raise CharlmError(f"{where}: missing; cannot resume from this checkpoint")
    merged = apply_overrides(raw, overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUME_KEYS:
            raise CharlmError(
                f"override {item!r}: a resumed run keeps the config recorded in its checkpoint; "
                f"only {', '.join(RESUME_KEYS)} may change (start a new run to change {key})"
            )
    return config_from_dict(merged, where=where)


def recorded_precision(checkpoint: ckpt.Checkpoint) -> TrainPrecision | None:
    """The precision the run trained in, as its checkpoint says; None for a checkpoint that does
    not say (the config's precision then applies, an `auto` resolved again)."""
    name = checkpoint.record.get("precision")
    if not isinstance(name, str) or name == "auto":
        return None
    probe = checkpoint.record.get("precision_probe")
    return TrainPrecision(name, probe if isinstance(probe, dict) else None)


def resume(
    run_dir: str | Path, overrides: Sequence[str] = (), on_event: ev.Callback | None = None
) -> TrainResult:
    """Continue a run from its newest intact step checkpoint, exactly as if it never stopped;
    a run whose training is complete is finished (final evals, summary.json, curves.png).

    Exact (bit for bit on the same device) for step-bounded runs with unchanged budgets; a run
    bounded only by `max_time` schedules its learning rate by elapsed time, which is not.
    """
    run_dir = Path(run_dir)
    with distributed.process_group() as info:
        return _resume(run_dir, overrides, on_event, info)


def _resume(
    run_dir: Path, overrides: Sequence[str], on_event: ev.Callback | None, info: Dist
) -> TrainResult:
    """`resume` inside the process group: rank 0 picks the checkpoint, every process loads it."""
    emit: ev.Callback = (on_event if info.is_main else None) or ev.ignore
    ckpt_dir = run_dir / CHECKPOINT_DIR
    found: list[ckpt.Checkpoint] = []

    def pick() -> int:
        if not info.is_main:
            return 0
        check_resume_dir(run_dir)
        checkpoint, skipped = ckpt.latest_intact(ckpt_dir)
        for path, problem in skipped:
            emit(ev.Warned(f"skipping {path.name}: {problem}"))
        if checkpoint is None:
            raise CharlmError(
                f"{run_dir}: no complete checkpoint to resume from (none was written, or all "
                f"are damaged); start again with a new --out folder"
            )
        found.append(checkpoint)
        return checkpoint.step

    step = distributed.broadcast_int(distributed.together(info, pick), info)

    def load() -> tuple[Trainer, ckpt.Checkpoint]:
        checkpoint = found[0] if found else ckpt.load_checkpoint(ckpt_dir / ckpt.step_name(step))
        return _restore(run_dir, checkpoint, overrides, on_event, info), checkpoint

    trainer, checkpoint = distributed.together(info, load)

    def tidy() -> None:
        if info.is_main:
            ckpt.remove_temp_files(ckpt_dir)
            ckpt.remove_temp_files(run_dir)  # summary.json or metrics.jsonl cut off mid-write
            rollback_metrics(run_dir, step)
            (run_dir / SUMMARY_NAME).unlink(missing_ok=True)
            write_config(run_dir, dump_yaml(trainer.config), auto_resolved(trainer))

    distributed.together(info, tidy)
    emit(ev.Resumed(path=str(checkpoint.path), step=step))
    return run_recorded(trainer)


def _restore(
    run_dir: Path,
    checkpoint: ckpt.Checkpoint,
    overrides: Sequence[str],
    on_event: ev.Callback | None,
    info: Dist,
) -> Trainer:
    """A trainer holding `checkpoint`'s state, after checking the budgets leave work to do.

    A spent budget leaves work in a run that is not finished (stopped or killed during its final
    evals, before its summary.json or its curves): the resumed run then only does what is
    missing. A finished run is refused.
    """
    config = resume_config(checkpoint, overrides)
    loggers.check_installed(config)  # a missing extra stops here, before any work or writes
    t, step = config.train, checkpoint.step
    if t.max_steps is not None and step > t.max_steps:
        raise CharlmError(
            f"{checkpoint.path}: already at step {step}, beyond train.max_steps={t.max_steps}; "
            f"pass train.max_steps={step} to finish the run there, or more to train further"
        )
    raised = finished_budgets(run_dir, checkpoint, config)
    if raised:
        raise CharlmError(
            f"{run_dir}: already finished at step {step}; pass a larger {' and '.join(raised)} "
            f"to train further, e.g. {further_command(run_dir, raised)}"
        )
    precision = recorded_precision(checkpoint)
    trainer = Trainer(config, run_dir, on_event, info, precision)
    trainer.load_state(checkpoint)
    adopt_newer_best(trainer, run_dir / CHECKPOINT_DIR / ckpt.BEST_NAME)
    return trainer


def finished_budgets(run_dir: Path, checkpoint: ckpt.Checkpoint, config: Config) -> dict[str, int]:
    """The budgets of `config` (the resume's) that a finished run's checkpoint has used up, each
    with twice what the run used of it: values that let the resume train further. Empty when it
    has work left (training, or the end of a run cut off before its summary said `finished`)."""
    summary = read_summary(run_dir)
    if summary is None or summary.status != "finished":
        return {}
    t = config.train
    used = {
        "train.max_steps": (t.max_steps, checkpoint.step),
        "train.max_time": (t.max_time, float(checkpoint.record.get("elapsed_s", 0.0))),
    }
    return {
        key: math.ceil(2 * max(budget, spent))
        for key, (budget, spent) in used.items()
        if budget is not None and spent >= budget
    }


def further_command(run_dir: Path, raised: dict[str, int]) -> str:
    """The command that resumes a finished run with its spent budgets raised."""
    return " ".join([resume_command(run_dir), *(f"{key}={value}" for key, value in raised.items())])


def resume_offer(run_dir: Path, checkpoint: ckpt.Checkpoint) -> tuple[str | None, str | None]:
    """(the command that resumes the run, or else the one that trains it further): what
    `charlm info` offers for a run whose newest intact step checkpoint is `checkpoint`."""
    raised = finished_budgets(run_dir, checkpoint, resume_config(checkpoint))
    if not raised:
        return resume_command(run_dir), None
    return None, further_command(run_dir, raised)


def adopt_newer_best(trainer: Trainer, best_path: Path) -> None:
    """Keep a best checkpoint written after the resume point as the score to beat.

    On an exact resume the redone evals reproduce it anyway; otherwise a better model already
    on disk must not be overwritten by a worse one.
    """
    if not best_path.is_file():
        return
    try:
        best = ckpt.load_checkpoint(best_path).record
    except CharlmError:
        return  # a damaged best is simply replaced by the next better eval
    loss = best.get("best_val_loss")
    c = trainer.counters
    if best.get("step", 0) > c.step and loss is not None and loss < c.best_val_loss:
        c.best_val_loss, c.best_step = float(loss), int(best["best_step"])
