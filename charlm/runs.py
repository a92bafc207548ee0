"""The run folder: where a training run keeps its resolved config, metrics and checkpoints.

RUN/config.yaml        the fully resolved config (defaults + file + overrides)
RUN/metrics.jsonl      one JSON object per logged step
RUN/checkpoints/       step-XXXXXXXX.safetensors (the newest few) and best.safetensors
RUN/summary.json       written when the run ends: status (finished, interrupted, diverged,
                       failed), budgets used, final scores (or the error)
RUN/curves.png         train and val bpc against step, drawn when the run finishes
RUN/tensorboard/       event files, only with train.tensorboard: true
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from charlm.errors import CharlmError

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
SUMMARY_NAME = "summary.json"
CHECKPOINT_DIR = "checkpoints"

# What training and sweeps report as they go (progress, logs, checkpoints), for the CLI to show.
Event = dict[str, Any]
Callback = Callable[[Event], None]


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


# -- reading runs back (for `charlm runs`, `compare` and sweeps) ---------------------------------
LOCK_NAME = ".running"


@contextlib.contextmanager
def running_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on RUN/.running while training.

    The OS drops the lock when the process ends, however it ends, so a reader can tell a run in
    progress from one that was killed. Without fcntl (Windows) runs are never shown as running.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = run_dir / LOCK_NAME
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CharlmError(f"{run_dir}: another process is training this run") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def is_running(run_dir: Path) -> bool:
    """Whether some process holds the run's lock right now."""
    path = run_dir / LOCK_NAME
    try:
        import fcntl

        f = path.open()
    except (ImportError, OSError):
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@dataclass
class RunInfo:
    """What a run folder says about itself, read without torch: config, summary and metrics."""

    path: Path
    name: str
    status: str
    config: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    parameters: int | None

    @property
    def steps(self) -> int | None:
        if "steps" in self.summary:
            return int(self.summary["steps"])
        return int(self.metrics[-1]["step"]) if self.metrics else None

    @property
    def elapsed_s(self) -> float | None:
        if "elapsed_s" in self.summary:
            return float(self.summary["elapsed_s"])
        return float(self.metrics[-1]["elapsed_s"]) if self.metrics else None

    @property
    def val_points(self) -> list[dict[str, Any]]:
        return [row for row in self.metrics if "val_bpc" in row]

    @property
    def best_val_bpc(self) -> float | None:
        if self.summary.get("best_val_bpc") is not None:
            return float(self.summary["best_val_bpc"])
        points = [row["val_bpc"] for row in self.val_points]
        return min(points) if points else None

    @property
    def final_val_bpc(self) -> float | None:
        final = self.summary.get("final_val")
        if isinstance(final, dict) and "bpc" in final:
            return float(final["bpc"])
        points = self.val_points
        return points[-1]["val_bpc"] if points else None

    @property
    def chars_per_s(self) -> float | None:
        if "chars_per_s" in self.summary:
            return float(self.summary["chars_per_s"])
        speeds = [row["chars_per_s"] for row in self.metrics if "chars_per_s" in row]
        return sum(speeds) / len(speeds) if speeds else None

    @property
    def cell(self) -> str | None:
        return self.config.get("model", {}).get("cell")

    def flat_config(self) -> dict[str, Any]:
        """The config as `section.key -> value`, the form overrides and `compare` use."""
        return {
            f"{section}.{key}": value
            for section, body in self.config.items()
            if isinstance(body, dict)
            for key, value in body.items()
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "cell": self.cell,
            "parameters": self.parameters,
            "steps": self.steps,
            "elapsed_s": self.elapsed_s,
            "chars_per_s": self.chars_per_s,
            "best_val_bpc": self.best_val_bpc,
            "final_val_bpc": self.final_val_bpc,
            "error": self.summary.get("error"),
        }


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


def read_summary(run: Path) -> dict[str, Any]:
    """RUN/summary.json, or {} while the run has none (not finished, or cut off mid-write)."""
    try:
        data = json.loads((run / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _normalized(config: dict[str, Any]) -> dict[str, Any]:
    """The stored config with today's defaults filled in, so runs of different ages compare."""
    from charlm.config import config_from_dict, config_to_dict

    try:
        return config_to_dict(config_from_dict(config))
    except CharlmError:
        return config  # a run from an incompatible version: show what it says, as it says it


def _checkpoint_parameters(run: Path) -> int | None:
    """Parameter count from a checkpoint's safetensors header (8-byte length, then JSON)."""
    folder = run / CHECKPOINT_DIR
    candidates = sorted(folder.glob("*.safetensors"), reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            with path.open("rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if not 0 < size < 100_000_000:
                    continue
                header = json.loads(f.read(size))
            return int(json.loads(header["__metadata__"]["charlm"])["parameters"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def run_status(run: Path, summary: dict[str, Any]) -> str:
    """As summary.json says (finished, failed), else running while locked, else interrupted."""
    if summary.get("status"):
        return str(summary["status"])
    return "running" if is_running(run) else "interrupted"


def read_run(path: str | Path, name: str | None = None) -> RunInfo:
    """Read a run folder; a folder without config.yaml is an error naming it."""
    path = Path(path)
    if not is_run_dir(path):
        raise CharlmError(f"{path}: not a run folder (no {CONFIG_NAME} in it)")
    try:
        config = yaml.safe_load((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise CharlmError(f"{path / CONFIG_NAME}: cannot read the run's config ({e})") from None
    if not isinstance(config, dict):
        raise CharlmError(f"{path / CONFIG_NAME}: expected a mapping of config sections")
    summary = read_summary(path)
    parameters = summary.get("parameters")
    return RunInfo(
        path=path,
        name=name or path.name,
        status=run_status(path, summary),
        config=_normalized(config),
        summary=summary,
        metrics=read_metrics(path),
        parameters=int(parameters) if parameters is not None else _checkpoint_parameters(path),
    )


def find_runs(root: str | Path) -> list[RunInfo]:
    """Every run folder at or under `root`, named by its path relative to `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CharlmError(f"{root}: no such folder; expected a folder of runs")
    if is_run_dir(root):
        return [read_run(root)]
    found = []
    for config in sorted(root.rglob(CONFIG_NAME)):
        run = config.parent
        if CHECKPOINT_DIR in run.relative_to(root).parts:
            continue
        found.append(read_run(run, name=run.relative_to(root).as_posix()))
    return found


def write_failure(run_dir: Path, error: BaseException, steps: int, elapsed_s: float) -> None:
    """Record why a run stopped early, so `charlm runs` can say `failed` and show the error."""
    write_json(
        run_dir / SUMMARY_NAME,
        {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "steps": steps,
            "elapsed_s": round(elapsed_s, 3),
        },
    )


def collect_runs(paths: list[Path]) -> list[RunInfo]:
    """Runs named on the command line: run folders, or folders of runs (a sweep's folder).

    Runs are named by folder name, or by the path as given where two folder names clash.
    """
    found: list[RunInfo] = []
    for path in paths:
        if is_run_dir(path):
            found.append(read_run(path))
        elif path.is_dir():
            inner = find_runs(path)
            if not inner:
                raise CharlmError(f"{path}: no run folders in it (none holds {CONFIG_NAME})")
            found.extend(inner)
        else:
            raise CharlmError(f"{path}: no such run folder")
    names = [run.name for run in found]
    for run in found:
        if names.count(run.name) > 1:
            run.name = str(run.path)
    return found


@dataclass
class Comparison:
    runs: list[RunInfo]
    differing: list[str]  # dotted config keys whose values are not the same in every run

    def to_dict(self) -> dict[str, Any]:
        return {
            "differing_keys": self.differing,
            "runs": [
                {**run.to_dict(), "config": {k: run.flat_config().get(k) for k in self.differing}}
                for run in self.runs
            ],
        }


def compare_runs(runs: list[RunInfo]) -> Comparison:
    """Find the config keys that differ between runs, in config order."""
    if not runs:
        raise CharlmError("nothing to compare; name at least one run folder")
    flats = [run.flat_config() for run in runs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    differing = [key for key in keys if len({repr(flat.get(key)) for flat in flats}) > 1]
    return Comparison(runs=runs, differing=differing)
