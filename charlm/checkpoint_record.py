"""What a checkpoint's JSON record must hold before anything is built from it.

A checkpoint's record comes from a file, so every field is checked for its type and range, and
the recorded model (config and vocabulary) is checked against the shapes of the tensors the file
really holds before a model is built: a size in the record can never ask for more memory than the
file's own tensors take. Each failure is one `CharlmError` naming the file and the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from charlm.config import Config, config_from_dict
from charlm.errors import CharlmError
from charlm.vocab import Vocab

_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]{0,64}$")  # a device, precision or torch version
# Record fields and what each must be when present (`step` must always be there).
_COUNTS = ("step", "best_step", "interval_evals", "parameters")
_SECONDS = ("elapsed_s", "eval_s")
_MAPPINGS = ("config", "vocab", "corpus", "optimizer", "batcher", "rng", "window")
_OPTIONAL_MAPPINGS = ("last_val", "grad_scaler", "precision_probe")
_OPTIONAL_TEXTS = ("torch_version", "device", "precision")
_LAST_VAL_NUMBERS = ("loss", "bpc", "perplexity", "chars", "streams", "seconds")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_record(path: Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a record whose fields have the wrong type or range, or whose model does not match
    the file's tensors; a record without config and vocabulary is a bare container."""
    check_fields(path, record)
    if "config" in record or "vocab" in record:
        config, vocab = model_spec(path, record)
        for prefix in ("model", "trained"):
            group = {
                k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + "/")
            }
            if group or prefix == "model":
                check_shapes(path, prefix, group, config, len(vocab))


def check_fields(path: Path, record: dict[str, Any]) -> None:
    """Types and ranges of the record's top-level fields (the ones info, sample, eval and resume
    read directly)."""

    def bad(key: str, expected: str) -> CharlmError:
        shown = repr(record[key])
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return CharlmError(f"{path}: recorded {key} {shown}: expected {expected}")

    if "step" not in record:
        raise CharlmError(f"{path}: not a valid charlm checkpoint (no step recorded)")
    for key in _COUNTS:
        if key in record and not _is_count(record[key]):
            raise bad(key, "a whole number >= 0")
    for key in _SECONDS:
        value = record.get(key, 0.0)
        if not (_is_number(value) and math.isfinite(value) and value >= 0):
            raise bad(key, "a number of seconds >= 0")
    best = record.get("best_val_loss")
    if best is not None and not (_is_number(best) and math.isfinite(best)):
        raise bad("best_val_loss", "a number or null")
    for key in _MAPPINGS:
        if key in record and not isinstance(record[key], dict):
            raise bad(key, "a mapping")
    for key in _OPTIONAL_MAPPINGS:
        if record.get(key) is not None and not isinstance(record[key], dict):
            raise bad(key, "a mapping or null")
    for key in _OPTIONAL_TEXTS:
        value = record.get(key)
        if value is not None and not (isinstance(value, str) and _NAME.fullmatch(value)):
            raise bad(key, "a name (letters, digits and . : + - _) or null")
    last = record.get("last_val") or {}
    if not all(_is_number(last[k]) for k in _LAST_VAL_NUMBERS if k in last):
        raise bad("last_val", f"numbers for {', '.join(_LAST_VAL_NUMBERS)}")
    named = _STEP_FILE.match(path.name)
    if named and int(named.group(1)) != record["step"]:
        raise bad("step", f"{int(named.group(1))}, the step in the file's name")


def model_spec(path: Path, record: dict[str, Any]) -> tuple[Config, Vocab]:
    """The recorded config and vocabulary, each checked; an error names the file."""
    where = f"{path} (config record)"
    try:
        config = config_from_dict(record.get("config"), where=where)
    except CharlmError as e:  # a value's own error names the key, not the file
        raise CharlmError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    try:
        vocab = Vocab.from_dict(record.get("vocab"))
    except CharlmError as e:
        raise CharlmError(f"{path}: {e}") from None
    return config, vocab


def check_shapes(
    path: Path, prefix: str, group: dict[str, torch.Tensor], config: Config, vocab_size: int
) -> None:
    """The tensors under `prefix/` are exactly the recorded model's parameters, shape for shape.

    Each recorded size is first bounded by the numbers the file holds (every size is a dimension
    of some parameter), so the model built to list the expected shapes, on the meta device
    (no memory), stays small too.
    """
    from charlm.model import CharLM

    m = config.model
    described = (
        f"the recorded model ({m.cell}, embedding_dim {m.embedding_dim}, hidden_size "
        f"{m.hidden_size}, {m.num_layers} layer(s), vocabulary of {vocab_size})"
    )
    held = sum(t.numel() for t in group.values())
    for key, value in (
        ("model.embedding_dim", m.embedding_dim),
        ("model.hidden_size", m.hidden_size),
        ("model.num_layers", m.num_layers),
        ("vocabulary size", vocab_size),
    ):
        if value > held:
            raise CharlmError(
                f"{path}: recorded {key} {value} does not fit the file's {prefix}/ tensors "
                f"({held:,} numbers in all); the record does not belong to these weights"
            )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CharLM(m, vocab_size).state_dict().items()}
    for name in sorted(expected.keys() - group.keys()):
        raise CharlmError(f"{path}: {described} needs tensor {prefix}/{name}; the file has none")
    for name in sorted(group.keys() - expected.keys()):
        raise CharlmError(f"{path}: holds tensor {prefix}/{name}, which {described} does not have")
    for name, shape in expected.items():
        if tuple(group[name].shape) != shape:
            raise CharlmError(
                f"{path}: tensor {prefix}/{name} has shape {list(group[name].shape)}, but "
                f"{described} needs {list(shape)}"
            )
