"""The text a run trains on: the corpus's id cache, split into train, val and test."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charlm.batches import Splits, check_train_size, split_ids
from charlm.cache import prepare_corpus, split_sizes
from charlm.config import BUILTIN_CORPUS, Config
from charlm.errors import CharlmError
from charlm.machine import check_model_fits
from charlm.vocab import Vocab


@dataclass
class Data:
    vocab: Vocab
    splits: Splits
    corpus_record: dict[str, Any]


def prepare_data(config: Config) -> Data:
    """Encode the corpus into its id cache (or reuse it) and split the memory-mapped ids.

    The split sizes are checked after counting and before the cache is written, so a corpus too
    small to train on leaves nothing behind.
    """
    d, t = config.data, config.train

    def check(chars: int) -> None:
        n_train, n_val, _ = split_sizes(chars, d.val_fraction, d.test_fraction)
        if n_val < 2:
            raise CharlmError(
                f"{d.corpus or BUILTIN_CORPUS}: the val split has {n_val} characters "
                f"({chars:,} in all x data.val_fraction={d.val_fraction}); "
                f"need at least 2: use a larger corpus or a larger data.val_fraction"
            )
        check_train_size(n_train, t.batch_size, t.seq_len, t.batching, d.corpus or BUILTIN_CORPUS)
        check_model_fits(config, 1, on_gpu)  # a vocabulary of one: a model that cannot fit anyway

    import torch  # the trainer has it loaded already

    on_gpu = t.device == "cuda" or (t.device == "auto" and torch.cuda.is_available())
    corpus = prepare_corpus(d, check)
    check_model_fits(config, len(corpus.vocab), on_gpu)  # before the model is built
    splits = split_ids(corpus.ids, d.val_fraction, d.test_fraction)
    spec = corpus.source
    resolved = spec if spec == BUILTIN_CORPUS else str(Path(spec).absolute())
    record = {
        "source": spec,
        "resolved": resolved,
        "sha256": corpus.sha256,
        "chars": corpus.chars,
        "files": len(corpus.files),
    }
    return Data(vocab=corpus.vocab, splits=splits, corpus_record=record)
