"""Typed, validated experiment configuration: YAML file + dotted `key=value` overrides.

A config is three frozen dataclasses (`data`, `model`, `train`; declared with their defaults in
charlm.config_schema and imported from here). Values are converted by the declared type, never
by YAML's guess (PyYAML reads `3e-4` as a string; `charlm.coerce`), and every mistake names the
dotted key, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from charlm.coerce import coerce, parse_yaml
from charlm.config_schema import (
    BUILTIN_CORPUS,
    MAX_SEED,
    SECTIONS,
    Config,
    DataConfig,
    LoggerName,
    ModelConfig,
    TrainConfig,
)
from charlm.errors import CharlmError

__all__ = [  # the schema's names, so that charlm.config is the one place to import a config from
    "BUILTIN_CORPUS",
    "MAX_SEED",
    "SECTIONS",
    "Config",
    "DataConfig",
    "LoggerName",
    "ModelConfig",
    "TrainConfig",
    "all_keys",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_yaml",
    "load_config",
    "read_yaml",
    "unescape_separator",
    "validate",
]


def all_keys() -> list[str]:
    """Every valid dotted key, in declaration order."""
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _suggest(key: str) -> str:
    keys = all_keys()
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not match:
        tail = key.rsplit(".", 1)[-1]
        match = [k for k in keys if k.rsplit(".", 1)[-1] == tail] or difflib.get_close_matches(
            tail, keys, n=1, cutoff=0.6
        )
    return f" (did you mean {match[0]}?)" if match else ""


def unescape_separator(separator: str) -> str:
    """`data.separator` with escapes such as `\n` and `\t` turned into the characters."""
    try:
        # backslashreplace first, so characters beyond Latin-1 survive unicode_escape.
        return separator.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise CharlmError(
            f"data.separator: {separator!r} has a bad escape ({e.reason}); expected text "
            f"with escapes such as \\n or \\t"
        ) from None


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise CharlmError(f"{key}: {value!r} is out of range; expected {expected}")


def validate(config: Config) -> Config:
    """Reject values that would fail later or train nonsense; return the config unchanged."""
    _check_data(config.data)
    _check_model(config.model)
    _check_train(config.train)
    return config


def _check_data(d: DataConfig) -> None:
    _check(0 < d.val_fraction < 1, "data.val_fraction", d.val_fraction, "a number in (0, 1)")
    _check(0 <= d.test_fraction < 1, "data.test_fraction", d.test_fraction, "a number in [0, 1)")
    _check(
        d.val_fraction + d.test_fraction < 1,
        "data.test_fraction",
        d.test_fraction,
        "val_fraction + test_fraction < 1",
    )
    if d.corpus is not None and "\0" in d.corpus:
        raise CharlmError(f"data.corpus: {d.corpus!r} has a NUL character; expected a path or glob")
    try:
        "".encode(d.encoding)
    except (LookupError, ValueError):
        raise CharlmError(
            f"data.encoding: {d.encoding!r} is not a known text encoding (e.g. utf-8, latin-1)"
        ) from None
    _check(d.min_char_count >= 1, "data.min_char_count", d.min_char_count, ">= 1 (1: off)")
    if d.cache_dir is not None and "\0" in d.cache_dir:
        raise CharlmError(f"data.cache_dir: {d.cache_dir!r} has a NUL character; expected a folder")
    unescape_separator(d.separator)


def _check_model(m: ModelConfig) -> None:
    for name in ("embedding_dim", "hidden_size", "num_layers"):
        value = getattr(m, name)
        _check(value >= 1, f"model.{name}", value, "a positive whole number")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
    if m.cell == "gru" and m.gru_reset == "before" and m.impl == "fused":
        raise CharlmError(
            "model.impl: 'fused' (nn.GRU, cuDNN) only has the reset-after GRU, but "
            "model.gru_reset is 'before'; use model.impl=reference, or model.gru_reset=after"
        )


def _check_train(t: TrainConfig) -> None:
    for name in ("batch_size", "seq_len", "eval_streams", "log_interval"):
        value = getattr(t, name)
        _check(value >= 1, f"train.{name}", value, "a positive whole number")
    for steps, seconds in (
        ("eval_interval", "eval_every_s"),
        ("checkpoint_interval", "checkpoint_every_s"),
    ):
        value = getattr(t, steps)
        if value is not None:
            _check(value >= 1, f"train.{steps}", value, "a positive whole number or empty")
        elif getattr(t, seconds) is None:
            raise CharlmError(f"train.{steps} and train.{seconds} are both empty; set at least one")
    _check(t.keep_last >= 1, "train.keep_last", t.keep_last, "a positive whole number")
    _check(t.lr > 0, "train.lr", t.lr, "a number > 0")
    _check(0 <= t.min_lr_ratio <= 1, "train.min_lr_ratio", t.min_lr_ratio, "a number in [0, 1]")
    _check(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, ">= 0")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
    _check(0 <= t.beta1 < 1, "train.beta1", t.beta1, "a number in [0, 1)")
    _check(0 <= t.beta2 < 1, "train.beta2", t.beta2, "a number in [0, 1)")
    _check(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, ">= 0 (0 turns clipping off)")
    if t.ema_decay is not None:
        _check(0 < t.ema_decay < 1, "train.ema_decay", t.ema_decay, "a number in (0, 1) or empty")
    _check(0 <= t.seed <= MAX_SEED, "train.seed", t.seed, f"a whole number in [0, {MAX_SEED}]")
    if t.max_steps is not None:
        _check(t.max_steps >= 1, "train.max_steps", t.max_steps, "a positive whole number")
    if t.max_time is not None:
        _check(t.max_time > 0, "train.max_time", t.max_time, "a number of seconds > 0")
    for name in ("eval_every_s", "checkpoint_every_s"):
        value = getattr(t, name)
        if value is not None:
            _check(value > 0, f"train.{name}", value, "a number of seconds > 0 or empty")
    if t.eval_chars is not None:
        _check(t.eval_chars >= 2, "train.eval_chars", t.eval_chars, ">= 2 or empty")
    if t.init_from is not None and (not t.init_from.strip() or "\0" in t.init_from):
        raise CharlmError(
            f"train.init_from: {t.init_from!r}; expected a run folder or checkpoint file"
        )
    repeated = [name for name in dict.fromkeys(t.loggers) if t.loggers.count(name) > 1]
    if repeated:
        raise CharlmError(f"train.loggers: {repeated[0]} is listed twice; give each logger once")
    if t.max_steps is None and t.max_time is None:
        raise CharlmError("train.max_steps and train.max_time are both empty; set at least one")


def _section_from_mapping(section: str, raw: Mapping[str, Any], where: str) -> Any:
    cls = SECTIONS[section]
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for name, value in raw.items():
        key = f"{section}.{name}"
        if name not in names:
            raise CharlmError(f"{where}: unknown config key {key}{_suggest(key)}")
        values[name] = coerce(key, value, hints[name])
    return cls(**values)


def config_from_dict(raw: Any, where: str = "config") -> Config:
    """Build and validate a Config from a nested mapping (a YAML file or a checkpoint's record)."""
    if not isinstance(raw, Mapping):
        raise CharlmError(
            f"{where}: expected a mapping with sections data, model, train; "
            f"got {type(raw).__name__}"
        )
    sections = {}
    for section, body in raw.items():
        if section not in SECTIONS:
            raise CharlmError(
                f"{where}: unknown config section {section!r}{_suggest(str(section))}; "
                f"expected {', '.join(SECTIONS)}"
            )
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise CharlmError(f"{where}: section {section!r} must be a mapping of keys to values")
        sections[section] = _section_from_mapping(section, body, where)
    return validate(Config(**sections))


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(config)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely (no Python tags), with line and column in syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharlmError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise CharlmError(f"{path}: is a folder; expected a YAML config file") from None
    except UnicodeDecodeError as e:
        raise CharlmError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        reason = getattr(e, "strerror", None) or e
        raise CharlmError(f"{path}: cannot read config ({reason})") from None
    return parse_yaml(text, str(path))


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings on top of a nested mapping (later ones win)."""
    merged: dict[str, Any] = {
        s: dict(body or {}) if isinstance(body, Mapping) or body is None else body
        for s, body in raw.items()
    }
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CharlmError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        section, dot, name = key.partition(".")
        if not dot or key not in all_keys():
            raise CharlmError(f"override {item!r}: unknown config key {key}{_suggest(key)}")
        merged.setdefault(section, {})
        if not isinstance(merged[section], dict):
            raise CharlmError(f"override {item!r}: section {section!r} is not a mapping")
        merged[section][name] = value
    return merged


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The config a run uses: defaults, then the YAML file (if any), then the overrides."""
    raw: Any = {}
    where = "config"
    if path is not None:
        raw = read_yaml(Path(path))
        where = str(path)
        if not isinstance(raw, Mapping):
            raise CharlmError(
                f"{path}: expected a mapping with sections data, model, train at the top level; "
                f"got {type(raw).__name__}"
            )
        raw = dict(raw)
        for section, body in raw.items():
            if section in SECTIONS and body is not None and not isinstance(body, Mapping):
                raise CharlmError(
                    f"{path}: section {section!r} must be a mapping of keys to values"
                )
    return config_from_dict(apply_overrides(raw, overrides), where=where)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
