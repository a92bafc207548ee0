"""`train.init_from`: a new run that starts from a trained model's weights (fine-tuning).

The source checkpoint gives the weights, the vocabulary and the model keys; everything else (the
optimizer, the schedule, the step count, the data position) starts fresh, as in a new run. The new
corpus is read with the source's vocabulary: its ids are mapped onto the source's, characters the
source lacks go to its unknown symbol when it has one (a model trained with
`data.min_char_count` > 1), and are an error otherwise.

The run records its source as the absolute path in `train.init_from` of its config, so
config.yaml, every checkpoint's record and `charlm info` name it.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from charlm import checkpoint as ckpt
from charlm.batches import Splits
from charlm.config import Config, ModelConfig, config_from_dict
from charlm.errors import CharlmError
from charlm.model import CharLM
from charlm.training.data import Data
from charlm.training.data import prepare_data as prepare_corpus
from charlm.vocab import Vocab

SHAPE_KEYS = ("cell", "embedding_dim", "hidden_size", "num_layers", "gru_reset")
"""Model keys that change the weights' shapes or meaning; a fine-tune cannot change them."""


@functools.lru_cache(maxsize=1)
def _load(path: str, stamp: tuple[int, int]) -> ckpt.Checkpoint:
    return ckpt.load_checkpoint(path)


def source_checkpoint(spec: str) -> ckpt.Checkpoint:
    """The checkpoint `train.init_from` names, loaded once however often it is asked for."""
    try:
        path = ckpt.find_checkpoint(spec)
        stat = path.stat()
        return _load(str(path), (stat.st_mtime_ns, stat.st_size))
    except CharlmError as e:
        raise CharlmError(f"train.init_from: {e}") from None


def resolve_config(config: Config) -> Config:
    """The model keys from the source; `init_from` made the absolute checkpoint path.

    A model key the config leaves at its default takes the source's value; one it sets to a
    different value is an error for the shape keys (the weights would not fit) and kept for the
    others (dropout, impl).
    """
    spec = config.train.init_from
    if spec is None:
        return config
    source = source_checkpoint(spec)
    where = f"{source.path} (config record)"
    theirs = config_from_dict(source.record.get("config"), where=where).model
    defaults, mine = ModelConfig(), config.model
    model = {}
    for f in dataclasses.fields(ModelConfig):
        value, default = getattr(mine, f.name), getattr(defaults, f.name)
        kept = getattr(theirs, f.name)
        if value != default and value != kept and f.name in SHAPE_KEYS:
            raise CharlmError(
                f"model.{f.name}: {value!r}, but train.init_from {source.path} has {kept!r}; a "
                f"fine-tune keeps the model's shape (drop model.{f.name})"
            )
        model[f.name] = kept if value == default else value
    train = dataclasses.replace(config.train, init_from=str(source.path.absolute()))
    return dataclasses.replace(config, model=ModelConfig(**model), train=train)


def prepare_data(config: Config) -> Data:
    """The run's data; under `init_from`, its ids in the source's vocabulary."""
    found = prepare_corpus(config)
    if config.train.init_from is None:
        return found
    source = source_checkpoint(config.train.init_from)
    vocab = Vocab.from_dict(source.record.get("vocab"))
    table = id_map(found.vocab, vocab, found.splits, config.data.corpus or "the corpus", source)
    s = found.splits
    splits = Splits(train=table[s.train], val=table[s.val], test=table[s.test])
    return dataclasses.replace(found, vocab=vocab, splits=splits)


def id_map(
    ours: Vocab, theirs: Vocab, splits: Splits, corpus: str, source: ckpt.Checkpoint
) -> np.ndarray:
    """ours id -> theirs id; a one-line error naming the characters `theirs` cannot hold."""
    fill = theirs.chars.index(theirs.unknown_char) if theirs.unknown_char is not None else -1
    table = np.array([theirs.chars.index(c) if c in theirs else fill for c in ours.chars])
    missing = np.flatnonzero(table < 0)
    if len(missing):
        parts = (splits.train, splits.val, splits.test)
        counts = sum(np.bincount(p, minlength=len(ours)) for p in parts)
        ranked = sorted(missing, key=lambda i: -counts[i])
        shown = ", ".join(f"{ours.chars[i]!r} x{counts[i]:,}" for i in ranked[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CharlmError(
            f"{corpus}: {len(missing)} character(s) not in the vocabulary of train.init_from "
            f"{source.path}: {shown}{more}; remove them, or fine-tune a model trained with "
            f"data.min_char_count > 1 (its unknown symbol takes them)"
        )
    return table.astype(theirs.dtype)


def build_model(config: Config, vocab: Vocab) -> CharLM:
    """The run's model: fresh, or under `init_from` with the source's weights."""
    model = CharLM(config.model, len(vocab))
    if config.train.init_from is not None:
        source = source_checkpoint(config.train.init_from)
        try:
            model.load_state_dict(source.group("model"))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            where = f"train.init_from {source.path}"
            raise CharlmError(f"{where}: weights do not fit the model ({first})") from None
    return model
