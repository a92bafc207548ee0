"""Typed, validated experiment configuration: YAML file + dotted `key=value` overrides.

A config is three frozen dataclasses (`data`, `model`, `train`) with their defaults beside them.
Values are converted by the declared type, never by YAML's guess (PyYAML reads `3e-4` as a
string; `charlm.coerce`), and every mistake names the dotted key, the value and what is accepted.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from charlm.coerce import coerce, parse_yaml
from charlm.errors import CharlmError

BUILTIN_CORPUS = "builtin:stdlib"
# torch seeds are 64-bit; signed leaves room for the seed + rank + step offsets of dropout.
MAX_SEED = 2**63 - 1
# Experiment trackers a run can feed (charlm.loggers runs them).
LoggerName = Literal["tensorboard", "mlflow", "wandb"]


def _help(text: str) -> Any:
    return {"help": text}


@dataclass(frozen=True)
class DataConfig:
    corpus: str | None = field(
        default=None,
        metadata=_help(
            "Text file, folder (all text files under it, sorted) or glob. Empty means the "
            f"built-in corpus `{BUILTIN_CORPUS}` (this Python's standard-library sources)."
        ),
    )
    val_fraction: float = field(default=0.1, metadata=_help("Last fraction of the text for val."))
    test_fraction: float = field(
        default=0.0, metadata=_help("Fraction at the very end for test (0: no test split).")
    )
    encoding: str = field(default="utf-8", metadata=_help("Text encoding of the corpus files."))
    errors: Literal["strict", "replace"] = field(
        default="strict",
        metadata=_help("Undecodable bytes: `strict` stops with an error, `replace` uses U+FFFD."),
    )
    newline: Literal["lf", "keep"] = field(
        default="lf",
        metadata=_help(
            "Line endings: `lf` turns \\r\\n and lone \\r into \\n (one newline symbol whatever "
            "system wrote the file), `keep` leaves them as they are."
        ),
    )
    min_char_count: int = field(
        default=1,
        metadata=_help(
            "Characters seen fewer times than this become one unknown symbol (U+FFFD), so stray "
            "characters do not swamp the vocabulary (1: off)."
        ),
    )
    separator: str = field(
        default="",
        metadata=_help(
            "Text put between the files of a folder or glob corpus; escapes such as \\n and "
            "\\t are understood (empty: the files are joined as they are)."
        ),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder for the cached id file of the encoded corpus. Empty: a `.charlm-cache` folder "
            "beside the corpus file (inside a folder corpus); the user cache folder (on Linux "
            "$XDG_CACHE_HOME/charlm, else ~/.cache/charlm; on macOS ~/Library/Caches/charlm; on "
            "Windows %LOCALAPPDATA%\\charlm\\Cache) for the built-in corpus, a glob, or a place "
            "that cannot be written."
        ),
    )


@dataclass(frozen=True)
class ModelConfig:
    cell: Literal["lstm", "gru"] = field(default="lstm", metadata=_help("Recurrent cell."))
    embedding_dim: int = field(default=64, metadata=_help("Size of the character embedding."))
    hidden_size: int = field(default=256, metadata=_help("Hidden units per recurrent layer."))
    num_layers: int = field(default=2, metadata=_help("Stacked recurrent layers."))
    dropout: float = field(
        default=0.0, metadata=_help("Dropout between layers and before the output head.")
    )
    impl: Literal["fused", "reference"] = field(
        default="fused",
        metadata=_help(
            "`fused`: nn.LSTM / nn.GRU (cuDNN on GPU, oneDNN's LSTM on CPU; a GRU trains on the "
            "CPU through charlm/cpu/gru.py); `reference`: the cells written out from their "
            "equations in charlm/cells.py (same weights, same numbers)."
        ),
    )
    gru_reset: Literal["after", "before"] = field(
        default="after",
        metadata=_help(
            "GRU candidate: the reset gate applied `after` the hidden product (nn.GRU and cuDNN) "
            "or `before` it (the classic GRU; model.impl=reference only). A different model, "
            "not a different kernel."
        ),
    )


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = field(default=32, metadata=_help("Parallel streams per step."))
    seq_len: int = field(default=128, metadata=_help("Characters per stream per step (BPTT)."))
    lr: float = field(default=3e-3, metadata=_help("Peak learning rate (AdamW)."))
    min_lr_ratio: float = field(
        default=0.05, metadata=_help("Cosine decay ends at lr * min_lr_ratio.")
    )
    warmup_steps: int = field(default=50, metadata=_help("Linear warm-up steps."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    beta1: float = field(default=0.9, metadata=_help("AdamW's first-moment decay."))
    beta2: float = field(default=0.99, metadata=_help("AdamW's second-moment decay."))
    max_steps: int | None = field(
        default=2000, metadata=_help("Step budget (empty: none). The first budget hit stops.")
    )
    max_time: float | None = field(
        default=None, metadata=_help("Training-time budget in seconds (empty: none).")
    )
    eval_interval: int | None = field(
        default=200, metadata=_help("Steps between val evaluations (empty: by time only).")
    )
    eval_every_s: float | None = field(
        default=None,
        metadata=_help(
            "Also evaluate once this many seconds of training have passed since the last eval "
            "(empty: by steps only); a GPU runs thousands of steps a minute."
        ),
    )
    eval_chars: int | None = field(
        default=None,
        metadata=_help(
            "Score evals, and pick the best checkpoint, on the first N val characters (empty: "
            "all); the run's final score is always the whole val split."
        ),
    )
    eval_streams: int = field(
        default=20, metadata=_help("Val is scored as this many contiguous segments side by side.")
    )
    log_interval: int = field(default=10, metadata=_help("Steps between metrics.jsonl lines."))
    checkpoint_interval: int | None = field(
        default=500, metadata=_help("Steps between checkpoints (empty: by time only).")
    )
    checkpoint_every_s: float | None = field(
        default=None,
        metadata=_help(
            "Also checkpoint once this many seconds have passed since the last checkpoint "
            "(empty: by steps only)."
        ),
    )
    keep_last: int = field(default=3, metadata=_help("Step checkpoints kept (plus the best)."))
    grad_clip: float = field(
        default=1.0, metadata=_help("Clip the global gradient norm to this (0: off).")
    )
    ema_decay: float | None = field(
        default=None,
        metadata=_help(
            "Keep an exponential moving average of the weights, updated every step with this "
            "decay (0.995 weighs roughly the last 200 steps; early on less, min(decay, "
            "(1 + step) / (10 + step))), and evaluate, checkpoint and sample that instead of "
            "the latest weights (empty: off)."
        ),
    )
    seed: int = field(default=1337, metadata=_help("Seed for weights, dropout and sampling."))
    device: Literal["auto", "cpu", "cuda", "mps"] = field(
        default="auto",
        metadata=_help(
            "`cuda` (an NVIDIA GPU), `mps` (an Apple GPU) or `cpu`; `auto` takes CUDA, else mps, "
            "else the CPU."
        ),
    )
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = field(
        default="fp32",
        metadata=_help(
            "Matrix products in `fp32` (strict, also on a GPU), `tf32` (a CUDA GPU's TF32 "
            "products; fp32 elsewhere), or autocast to `bf16` or `fp16` (fp16 on CUDA only, with "
            "a gradient scaler); `auto`: times a training step at start and takes bf16 where the "
            "hardware has it and the step runs at least 1.1x faster in it, else fp32 on a CPU "
            "and tf32 on a CUDA GPU (on mps: fp32); decided once per run. Weights and optimizer "
            "state stay fp32."
        ),
    )
    tensorboard: bool = field(
        default=False,
        metadata=_help(
            "Also log metrics to RUN/tensorboard/; the same as tensorboard in train.loggers."
        ),
    )
    loggers: tuple[LoggerName, ...] = field(
        default=(),
        metadata=_help(
            "Experiment trackers to feed the run's config and metrics, e.g. [mlflow, wandb]: "
            "any of tensorboard, mlflow, wandb, each an extra (`pip install -e '.[mlflow]'`)."
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_help(
            "Fine-tune: start from this run's (best, else newest) checkpoint or checkpoint file. "
            "Weights, vocabulary and model keys come from it; optimizer, schedule, step and "
            "data position start fresh (empty: a new model)."
        ),
    )
    batching: Literal["stream", "random"] = field(
        default="stream",
        metadata=_help(
            "`stream`: contiguous streams with the hidden state carried from batch to batch; "
            "`random`: windows at seeded random places, each from a fresh state."
        ),
    )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


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
    d, m, t = config.data, config.model, config.train
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
    for name in ("embedding_dim", "hidden_size", "num_layers"):
        value = getattr(m, name)
        _check(value >= 1, f"model.{name}", value, "a positive whole number")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)")
    if m.cell == "gru" and m.gru_reset == "before" and m.impl == "fused":
        raise CharlmError(
            "model.impl: 'fused' (nn.GRU, cuDNN) only has the reset-after GRU, but "
            "model.gru_reset is 'before'; use model.impl=reference, or model.gru_reset=after"
        )
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
    return config


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
