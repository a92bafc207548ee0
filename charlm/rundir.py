"""The run folder: where a training run keeps its resolved config, metrics and checkpoints.

RUN/config.yaml        the fully resolved config (defaults + file + overrides)
RUN/metrics.jsonl      one JSON object per logged step
RUN/checkpoints/       step-XXXXXXXX.safetensors (the newest few) and best.safetensors
RUN/summary.json       written when the run ends (`Summary`): status (finished, interrupted,
                       diverged, failed), budgets used, final scores (or the error)
RUN/curves.png         train and val bpc against step, drawn when the run finishes
RUN/tensorboard/       event files, only with tensorboard in train.loggers
RUN/wandb/             W&B's offline run files, only with wandb in train.loggers
RUN/loggers.json       the trackers' run ids, so a resume continues the same tracker runs
RUN/.lock              locked while a process trains the run (see `running_lock`)

This module writes the folder; charlm.runs reads runs back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from charlm.errors import CharlmError
from charlm.files import atomic_write_text, write_failed

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_NAME = ".lock"
# A reader's probe (`is_running`) holds the lock for microseconds: a starting run waits that out
# rather than mistake it for another training; a probe gives a held lock a moment too.
START_WAIT_S = 1.0
PROBE_WAIT_S = 0.2


def default_run_dir(config_path: str | Path | None, root: str | Path = "runs") -> Path:
    """`runs/<config name>-<YYYYmmdd-HHMMSS>`, with a counter if that exists already."""
    name = Path(config_path).stem if config_path else "default"
    base = Path(root) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_run_dir(path: Path) -> None:
    """Refuse a run folder that exists with files in it, or that cannot be created."""
    if path.exists() and not path.is_dir():
        raise CharlmError(f"{path}: exists and is not a folder; expected a run folder (--out)")
    if path.is_dir() and any(path.iterdir()):
        raise CharlmError(
            f"{path}: already holds files; choose a new --out folder (runs are never overwritten)"
        )
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise CharlmError(f"{path}: cannot create the run folder ({parent} is not writable)")


def prepare_run_dir(path: Path) -> Path:
    """Create a new run folder (after `check_run_dir`), with its checkpoints folder."""
    check_run_dir(path)
    try:
        (path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharlmError(f"{path}: cannot create the run folder ({e.strerror})") from None
    return path


def check_resume_dir(path: Path) -> None:
    """Refuse a resume target that is not an existing, writable run folder (before any loading)."""
    if not path.exists():
        raise CharlmError(f"{path}: no such run folder to resume (--resume)")
    if not path.is_dir():
        raise CharlmError(f"{path}: is a file; --resume expects a run folder")
    ckpt_dir = path / CHECKPOINT_DIR
    if not ckpt_dir.is_dir():
        raise CharlmError(f"{path}: not a charlm run folder (no {CHECKPOINT_DIR}/ inside)")
    for folder in (path, ckpt_dir):
        if not os.access(folder, os.W_OK):
            raise CharlmError(f"{folder}: is not writable; cannot resume training here")
    if is_running(path):  # refused before the resume rolls back the metrics of a live run
        raise CharlmError(f"{path}: another process is training this run; wait for it to end")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file whole or not at all; a failure is one CharlmError naming the file."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", path.name)


def write_config(run_dir: Path, config_yaml: str, precision: str | None = None) -> None:
    """RUN/config.yaml: written when a run starts, and on resume only when the resume changed a
    key (a budget or the device); otherwise the file already says what the checkpoint says.

    `precision` is what `train.precision: auto` resolved to: the config keeps the `auto` the
    user asked for (so a sweep still recognises its run), and a comment on top records the
    precision the run trains in, which every checkpoint and summary.json also hold.
    """
    head = f"# train.precision: auto resolved to {precision} for this run\n" if precision else ""
    path = run_dir / CONFIG_NAME
    text = head + config_yaml
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    atomic_write_text(path, text, CONFIG_NAME)


class MetricsLog:
    """Append-only JSON lines, flushed per line so a crash loses at most the line in flight."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, row: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise CharlmError(
                f"{self.path}: could not append metrics ({e.strerror or e})"
            ) from None


def rollback_metrics(run: Path, step: int) -> int:
    """Drop metrics lines logged after `step` (and any line cut short by a crash).

    A resumed run restarts from its checkpoint's step, so the lines after it belong to work that
    is being redone; without them the file reads as one clean run. Returns the lines dropped.
    """
    path = run / METRICS_NAME
    if not path.is_file():
        return 0
    lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    kept = []
    for line in lines:  # a damaged line (bad bytes, no JSON, no whole step) is dropped too
        try:
            row = json.loads(line)
        except ValueError:
            continue
        at = row.get("step") if isinstance(row, dict) else None
        if isinstance(at, int) and not isinstance(at, bool) and at <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept), METRICS_NAME)
    return dropped


@contextlib.contextmanager
def running_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on RUN/.lock while training (flock on Unix, a locked byte range on
    Windows, through filelock).

    The OS drops the lock when the process ends, however it ends, so a reader can tell a run in
    progress from one that was killed. The file itself says nothing: Unix keeps it after the
    run, Windows removes it, and a killed run leaves it behind, held by no one.
    """
    path = run_dir / LOCK_NAME
    lock = FileLock(path)
    try:
        lock.acquire(timeout=START_WAIT_S)
    except Timeout:
        raise CharlmError(f"{run_dir}: another process is training this run") from None
    except OSError as e:
        raise write_failed(path, e, "the lock of a running run") from None
    try:
        yield
    finally:
        lock.release()


def is_running(run_dir: Path) -> bool:
    """Whether some process holds the run's lock right now (a lock file no one holds is what a
    killed run leaves behind: not running). A lock file this process cannot open (another
    user's read-only run) cannot tell, and counts as not running."""
    path = run_dir / LOCK_NAME
    if not path.is_file():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=PROBE_WAIT_S)
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False


Status = Literal["finished", "interrupted", "diverged", "failed"]


@dataclass
class Summary:
    """RUN/summary.json: how a run ended, one shape for every ending (fields that do not apply
    to it are left out of the file). Written by `write_summary` alone; read back by
    `Summary.from_dict`, which takes a summary of any age (missing fields are None)."""

    status: Status
    steps: int | None = None
    elapsed_s: float | None = None
    chars_per_s: float | None = None
    eval_s: float | None = None  # of elapsed_s, the interval evals' seconds
    step_chars_per_s: float | None = None
    final_eval_s: float | None = None  # the whole-split eval after the clock stopped
    interval_evals: int | None = None  # how many interval evals ran (best_* come from them)
    precision: str | None = None
    precision_probe: dict[str, float] | None = None
    parameters: int | None = None
    final_val: dict[str, Any] | None = None
    best_val_loss: float | None = None
    best_val_bpc: float | None = None
    best_step: int | None = None
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    step: int | None = None  # diverged: the step whose loss or gradient was not finite
    signal: str | None = None  # interrupted: SIGINT or SIGTERM
    resume: str | None = None  # interrupted: the command that continues the run
    error: str | None = None  # failed: what stopped it

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary | None:
        """The summary a file holds, or None for something that is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_summary(run_dir: Path, summary: Summary) -> None:
    """The one writer of RUN/summary.json."""
    write_json(run_dir / SUMMARY_NAME, summary.to_dict())


def failure_summary(error: BaseException, steps: int, elapsed_s: float) -> Summary:
    """Why a run stopped early, so `charlm runs` can say `failed` and show the error."""
    return Summary(
        status="failed",
        error=f"{type(error).__name__}: {error}",
        steps=steps,
        elapsed_s=round(elapsed_s, 3),
    )
