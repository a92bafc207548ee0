"""The run folder: where a training run keeps its resolved config, metrics and checkpoints.

RUN/config.yaml        the fully resolved config (defaults + file + overrides)
RUN/metrics.jsonl      one JSON object per logged step
RUN/checkpoints/       step-XXXXXXXX.safetensors (the newest few) and best.safetensors
RUN/summary.json       written when the run ends: status, budgets used, final scores
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_DIR = "checkpoints"


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


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / METRICS_NAME
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return rows


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def rollback_metrics(run: Path, step: int) -> int:
    """Drop metrics lines logged after `step` (and any line cut short by a crash).

    A resumed run restarts from its checkpoint's step, so the lines after it belong to work that
    is being redone; without them the file reads as one clean run. Returns the lines dropped.
    """
    path = run / METRICS_NAME
    if not path.is_file():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
    return dropped
