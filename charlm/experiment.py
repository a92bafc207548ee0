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
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.config import SECTIONS, Config, apply_overrides, config_from_dict, read_yaml
from charlm.errors import CharlmError

TOP_LEVEL_KEYS = ("description", "base", "set", "grid", "runs")
BUDGET_KEYS = ("train.max_steps", "train.max_time")
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


def safe_name(text: str) -> str:
    """Keep names readable and valid on every common filesystem."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "x"


def run_name(config: Config, swept: Sequence[str]) -> str:
    """`cell=gru,hidden_size=128`: the swept keys' resolved values, short keys where unique."""
    leaves = [key.rsplit(".", 1)[-1] for key in swept]
    parts = []
    for key, leaf in zip(swept, leaves, strict=True):
        section, name = key.split(".", 1)
        label = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={safe_name(_format_value(getattr(getattr(config, section), name)))}")
    name = ",".join(parts) or "base"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{zlib.crc32(name.encode()):08x}"
    return name


def _check_top_level(path: Path, raw: Any) -> None:
    """The file must be a mapping of known keys; suggest the closest key for a typo."""
    if not isinstance(raw, Mapping):
        raise CharlmError(f"{path}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise CharlmError(
                f"{path}: unknown key {key!r}{hint}; expected {', '.join(TOP_LEVEL_KEYS)}"
            )


def _read_grid(
    path: Path, raw: Mapping[str, Any], with_shared: dict[str, Any]
) -> dict[str, list[Any]]:
    """The `grid:` lists, each value checked against the shared config."""
    grid: dict[str, list[Any]] = {}
    if "grid" not in raw:
        return grid
    for key, values in _mapping(raw["grid"], f"{path}: grid", "{model.cell: [lstm, gru]}").items():
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
    return grid


def _read_variants(
    path: Path, raw: Mapping[str, Any], with_shared: dict[str, Any]
) -> list[dict[str, Any]]:
    """The `runs:` entries, each checked against the shared config; one empty variant if absent."""
    if "runs" not in raw:
        return [{}]
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
    return variants


def _check_swept(
    path: Path,
    swept: Sequence[str],
    shared: Mapping[str, Any],
    grid: Mapping[str, list[Any]],
    variants: Sequence[Mapping[str, Any]],
    overrides: Sequence[str],
) -> None:
    """A key is swept in one place only, never the budget, never overridden from the CLI."""
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


def _plan_runs(
    path: Path,
    with_shared: dict[str, Any],
    grid: Mapping[str, list[Any]],
    variants: Sequence[Mapping[str, Any]],
    swept: Sequence[str],
    overrides: Sequence[str],
) -> list[PlannedRun]:
    """Every variant times every grid point, resolved and named; identical configs are refused."""
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
    return planned


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Read, validate and expand an experiment file into its planned runs."""
    path = Path(path)
    raw = read_yaml(path)
    _check_top_level(path, raw)
    description = raw.get("description") or ""
    base = _load_base(path, raw.get("base"))

    shared = (
        _mapping(raw["set"], f"{path}: set", "{train.max_time: 300}")
        if raw.get("set") is not None
        else {}
    )
    _resolve(base, shared, f"{path} set")
    with_shared = _nest(base, shared, f"{path} set")

    grid = _read_grid(path, raw, with_shared)
    variants = _read_variants(path, raw, with_shared)
    if not grid and "runs" not in raw:
        raise CharlmError(f"{path}: nothing to sweep; give a grid: and/or a runs: list")

    swept = list(dict.fromkeys([k for v in variants for k in v] + list(grid)))
    _check_swept(path, swept, shared, grid, variants, overrides)
    planned = _plan_runs(path, with_shared, grid, variants, swept, overrides)
    return Experiment(path=path, description=str(description), swept=swept, runs=planned)
