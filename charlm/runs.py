"""Reading runs back: a run folder's config, summary and metrics (`charlm runs`, `compare`, sweeps).

The folder's layout and every write to it belong to charlm.rundir.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.coerce import parse_yaml
from charlm.errors import CharlmError
from charlm.rundir import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    Summary,
    is_running,
)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """RUN/metrics.jsonl's rows; a line that is not a JSON object with a whole-number step (cut
    short by a crash, damaged, not UTF-8) is left out, and so is a value that is not a number
    (every column is one)."""
    path = run / METRICS_NAME
    try:
        raw = path.read_bytes() if path.is_file() else b""
    except OSError:
        return []
    rows = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict) and _is_int(row.get("step")):
            rows.append({k: v for k, v in row.items() if _is_number(v)})  # all are numbers
    return rows


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class RunInfo:
    """What a run folder says about itself, read without torch: config, summary and metrics."""

    path: Path
    name: str
    status: str
    config: dict[str, dict[str, Any]]
    summary: Summary | None  # None while the run has no summary.json
    metrics: list[dict[str, Any]]
    parameters: int | None

    @property
    def steps(self) -> int | None:
        if self.summary is not None and self.summary.steps is not None:
            return int(self.summary.steps)
        return int(self.metrics[-1]["step"]) if self.metrics else None

    @property
    def elapsed_s(self) -> float | None:
        if self.summary is not None and self.summary.elapsed_s is not None:
            return float(self.summary.elapsed_s)
        times = [row["elapsed_s"] for row in self.metrics if "elapsed_s" in row]
        return float(times[-1]) if times else None

    @property
    def val_points(self) -> list[dict[str, Any]]:
        return [row for row in self.metrics if "val_bpc" in row]

    @property
    def best_val_bpc(self) -> float | None:
        if self.summary is not None and self.summary.best_val_bpc is not None:
            return float(self.summary.best_val_bpc)
        points = [row["val_bpc"] for row in self.val_points]
        return min(points) if points else None

    @property
    def final_val_bpc(self) -> float | None:
        if self.final_whole_bpc is not None:
            return self.final_whole_bpc
        points = self.val_points
        return points[-1]["val_bpc"] if points else None

    @property
    def final_whole_bpc(self) -> float | None:
        """The final eval's bpc, on the whole val split (summary.json); None before the run ends.

        Unlike `final_val_bpc`, never an interval eval's score standing in for it.
        """
        final = self.summary.final_val if self.summary is not None else None
        return float(final["bpc"]) if isinstance(final, dict) and "bpc" in final else None

    @property
    def interval_eval_chars(self) -> int | None:
        """How many val chars each interval eval scored when that was part of the val split
        (train.eval_chars), None when it was all of it.

        A run whose evals scored a part logs its separate whole-split final eval as
        final_val_bpc; a finished run without one scored the whole split every time.
        """
        train = self.config.get("train")
        chars = train.get("eval_chars") if isinstance(train, dict) else None
        if not _is_int(chars):
            return None
        if any("final_val_bpc" in row for row in self.metrics):
            return int(chars)
        return None if self.final_whole_bpc is not None else int(chars)

    @property
    def chars_per_s(self) -> float | None:
        if self.summary is not None and self.summary.chars_per_s is not None:
            return float(self.summary.chars_per_s)
        speeds = [row["chars_per_s"] for row in self.metrics if "chars_per_s" in row]
        return sum(speeds) / len(speeds) if speeds else None

    @property
    def cell(self) -> str | None:
        model = self.config.get("model")
        cell = model.get("cell") if isinstance(model, dict) else None
        return None if cell is None else str(cell)

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
            "error": self.summary.error if self.summary is not None else None,
        }


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file()


def read_summary(run: Path) -> Summary | None:
    """RUN/summary.json, or None while the run has none (not finished, or cut off mid-write)."""
    try:
        data = json.loads((run / SUMMARY_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Summary.from_dict(data)


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


def run_status(run: Path, summary: Summary | None) -> str:
    """As summary.json says (finished, failed), else running while locked, else interrupted."""
    if summary is not None:
        return summary.status
    return "running" if is_running(run) else "interrupted"


def read_run(path: str | Path, name: str | None = None) -> RunInfo:
    """Read a run folder; a folder without config.yaml is an error naming it."""
    path = Path(path)
    if not is_run_dir(path):
        raise CharlmError(f"{path}: not a run folder (no {CONFIG_NAME} in it)")
    where = path / CONFIG_NAME
    try:
        text = where.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CharlmError(f"{where}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise CharlmError(f"{where}: cannot read the run's config ({e.strerror or e})") from None
    config = parse_yaml(text, str(where))
    if not isinstance(config, dict):
        raise CharlmError(f"{path / CONFIG_NAME}: expected a mapping of config sections")
    summary = read_summary(path)
    parameters = summary.parameters if summary is not None else None
    return RunInfo(
        path=path,
        name=name or path.name,
        status=run_status(path, summary),
        config=_normalized(config),
        summary=summary,
        metrics=read_metrics(path),
        parameters=int(parameters) if parameters is not None else _checkpoint_parameters(path),
    )


Warn = Callable[[str], None]


def _read_or_skip(path: Path, name: str | None, warn: Warn | None) -> list[RunInfo]:
    """[the run], or [] after `warn(why)` when it cannot be read and `warn` is given."""
    try:
        return [read_run(path, name=name)]
    except CharlmError as e:
        if warn is None:
            raise
        warn(f"skipped a run: {e}")
        return []


def find_runs(root: str | Path, warn: Warn | None = None) -> list[RunInfo]:
    """Every run folder at or under `root`, named by its path relative to `root`, sorted.

    With `warn`, a run whose config cannot be read is skipped and named to `warn`; without it,
    that run's error stops the search.
    """
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
        found += _read_or_skip(run, run.relative_to(root).as_posix(), warn)
    return found


def collect_runs(paths: list[Path], warn: Warn | None = None) -> list[RunInfo]:
    """Runs named on the command line: run folders, or folders of runs (a sweep's folder).

    Runs are named by folder name, or by the path as given where two folder names clash. With
    `warn`, unreadable runs are skipped as in `find_runs`.
    """
    found: list[RunInfo] = []
    for path in paths:
        if is_run_dir(path):
            found += _read_or_skip(path, None, warn)
        elif path.is_dir():
            inner = find_runs(path, warn)
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
