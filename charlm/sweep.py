"""Experiments: one YAML file that expands into several runs, trained one after another.

An experiment file has these top-level keys (only `grid` or `runs` is required):

    description: free text, shown by `charlm sweep`
    base: ../default.yaml        # a charlm config; relative to the experiment file
    set:  {train.max_time: 300}  # dotted overrides shared by every run (the budget goes here)
    grid: {model.cell: [lstm, gru], model.hidden_size: [128, 256]}  # every combination
    runs: [{model.num_layers: 1}, {model.num_layers: 3}]             # explicit variants

`runs` and `grid` multiply: each entry of `runs` is combined with each point of the grid. Command
line overrides apply to every run last. Every run is named by the values of the swept keys
(`cell=gru,hidden_size=128`), so re-running the same sweep finds its runs: finished ones are
skipped, interrupted ones resumed from their last checkpoint.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlm import events as ev
from charlm.config import (
    SECTIONS,
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    read_yaml,
)
from charlm.errors import CharlmError
from charlm.rundir import CHECKPOINT_DIR, is_running
from charlm.runs import RunInfo, is_run_dir, read_run, read_summary

if TYPE_CHECKING:
    from charlm.precision import TrainPrecision

TOP_LEVEL_KEYS = ("description", "base", "set", "grid", "runs")
BUDGET_KEYS = ("train.max_steps", "train.max_time")
COMPARE_PLOT = "compare.png"
MAX_NAME = 120  # characters; longer names are cut and given a short hash to stay unique


@dataclass(frozen=True)
class PlannedRun:
    name: str
    assignments: dict[str, Any]  # the swept keys' values as written in the experiment file
    config: Config


@dataclass(frozen=True)
class Experiment:
    path: Path
    description: str
    swept: list[str]
    runs: list[PlannedRun]


@dataclass
class SweepResult:
    out: Path
    runs: list[RunInfo]
    plot: Path | None


def default_sweep_dir(experiment_path: str | Path, root: str | Path = "runs") -> Path:
    """`runs/<experiment name>`: the same folder every time, so a re-run finds its runs."""
    return Path(root) / Path(experiment_path).stem


# -- reading and expanding the experiment file ---------------------------------------------------
def _mapping(value: Any, where: str, example: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise CharlmError(f"{where}: expected a non-empty mapping of dotted keys, e.g. {example}")
    return {str(k): v for k, v in value.items()}


def _nest(raw: dict[str, Any], assignments: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Put `section.key: value` pairs into a nested config mapping (a copy)."""
    merged = copy.deepcopy(raw)
    for key, value in assignments.items():
        section, _, name = key.partition(".")
        if section in SECTIONS and not name:
            raise CharlmError(
                f"{where}: {key!r} is a section; expected a dotted key like model.cell"
            )
        body = merged.setdefault(section, {})
        if not isinstance(body, dict):
            body = merged[section] = {}
        body[name or key] = value
    return merged


def _resolve(raw: dict[str, Any], assignments: Mapping[str, Any], where: str) -> Config:
    """Build a config, naming the place in the experiment file in any error the loader raises."""
    try:
        return config_from_dict(_nest(raw, assignments, where), where=where)
    except CharlmError as e:
        message = str(e)
        raise CharlmError(message if message.startswith(where) else f"{where}: {message}") from None


def _load_base(path: Path, base: Any) -> dict[str, Any]:
    if base is None:
        return {}
    if not isinstance(base, str) or not base.strip():
        raise CharlmError(f"{path}: base: expected a config file path, got {base!r}")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise CharlmError(
            f"{path}: base: {base_path} not found (base is relative to the experiment file)"
        )
    raw = read_yaml(base_path)
    if not isinstance(raw, Mapping):
        raise CharlmError(f"{base_path}: expected a mapping with sections data, model, train")
    sections: dict[str, Any] = {}
    for section, body in raw.items():
        if body is not None and not isinstance(body, Mapping):
            raise CharlmError(
                f"{base_path}: section {section!r} must be a mapping of keys to values"
            )
        sections[str(section)] = dict(body or {})
    return sections


def _format_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _safe(text: str) -> str:
    """Keep names readable and valid on every common filesystem."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def run_name(config: Config, swept: Sequence[str]) -> str:
    """`cell=gru,hidden_size=128`: the swept keys' resolved values, short keys where unique."""
    leaves = [key.rsplit(".", 1)[-1] for key in swept]
    parts = []
    for key, leaf in zip(swept, leaves, strict=True):
        section, name = key.split(".", 1)
        label = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={_safe(_format_value(getattr(getattr(config, section), name)))}")
    name = ",".join(parts) or "base"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{zlib.crc32(name.encode()):08x}"
    return name


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read, validate and expand an experiment file into its planned runs."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise CharlmError(f"{path}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CharlmError(
                f"{path}: unknown key {key!r}{hint}; expected {', '.join(TOP_LEVEL_KEYS)}"
            )
    description = raw.get("description") or ""
    base = _load_base(path, raw.get("base"))

    shared = (
        _mapping(raw["set"], f"{path}: set", "{train.max_time: 300}")
        if raw.get("set") is not None
        else {}
    )
    _resolve(base, shared, f"{path} set")
    with_shared = _nest(base, shared, f"{path} set")

    grid: dict[str, list[Any]] = {}
    if "grid" in raw:
        for key, values in _mapping(
            raw["grid"], f"{path}: grid", "{model.cell: [lstm, gru]}"
        ).items():
            where = f"{path} grid {key}"
            if not isinstance(values, list):
                raise CharlmError(
                    f"{where}: expected a list of values, e.g. [lstm, gru]; "
                    f"a single value belongs under set:"
                )
            if not values:
                raise CharlmError(f"{where}: the list is empty; give at least one value")
            for value in values:
                _resolve(with_shared, {key: value}, where)
            grid[key] = values

    variants: list[dict[str, Any]] = [{}]
    if "runs" in raw:
        entries = raw["runs"]
        if not isinstance(entries, list) or not entries:
            raise CharlmError(
                f"{path}: runs: expected a non-empty list of mappings, e.g. [{{model.cell: gru}}]"
            )
        variants = []
        for i, entry in enumerate(entries):
            where = f"{path} runs[{i}]"
            if not isinstance(entry, Mapping):
                raise CharlmError(f"{where}: expected a mapping of dotted keys to values")
            entry = {str(k): v for k, v in entry.items()}
            _resolve(with_shared, entry, where)
            variants.append(entry)
    if not grid and "runs" not in raw:
        raise CharlmError(f"{path}: nothing to sweep; give a grid: and/or a runs: list")

    swept = list(dict.fromkeys([k for v in variants for k in v] + list(grid)))
    for key in swept:
        if key in BUDGET_KEYS:
            raise CharlmError(
                f"{path}: {key} is the budget every run shares; set it under set:, not per run"
            )
        if key in shared:
            raise CharlmError(f"{path}: {key} is both under set: and swept; keep one")
        if key in grid and any(key in v for v in variants):
            raise CharlmError(f"{path}: {key} is both in grid: and in runs:; keep one")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in swept:
            raise CharlmError(
                f"override {item!r}: {key} is what {path} sweeps; overriding it would make "
                f"every run the same"
            )

    planned: list[PlannedRun] = []
    seen: dict[Config, str] = {}
    names: set[str] = set()
    for variant in variants:
        for values in itertools.product(*grid.values()):
            assignments = {**variant, **dict(zip(grid, values, strict=True))}
            where = f"{path} run {', '.join(f'{k}={v}' for k, v in assignments.items())}"
            layered = _nest(with_shared, assignments, where)
            config = _resolve(apply_overrides(layered, overrides), {}, where)
            name = run_name(config, swept)
            if config in seen:
                raise CharlmError(f"{path}: runs {seen[config]} and {name} have the same config")
            seen[config] = name
            unique, n = name, 1
            while unique in names:  # two values that differ only in unsafe characters
                n += 1
                unique = f"{name}-{n}"
            names.add(unique)
            planned.append(PlannedRun(name=unique, assignments=assignments, config=config))
    return Experiment(path=path, description=str(description), swept=swept, runs=planned)


# -- running it ----------------------------------------------------------------------------------
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
    status = _safe(_status(run_dir) or "interrupted")
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
