"""Corpus reading, vocabulary, splits and batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.batches import StreamBatcher, eval_segments, split_ids
from charlm.config import DataConfig
from charlm.corpus import CorpusWarning, load_corpus, stdlib_files
from charlm.errors import CharlmError
from charlm.vocab import Vocab


def test_vocab_round_trip_and_sorted() -> None:
    text = "hello, wörld ☃\n𝄞 tab\t"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == text
    assert Vocab.from_dict(vocab.to_dict()) == vocab


def test_vocab_rejects_unknown_characters_with_counts() -> None:
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharlmError, match=r"'z' x2"):
        vocab.encode("abzz")


def test_vocab_dtype_grows_with_size() -> None:
    assert Vocab.from_text("".join(chr(0x100 + i) for i in range(300))).dtype == np.uint16


def test_corpus_folder_is_sorted_and_skips_binary(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third\n")
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\0\0\0")
    (tmp_path / ".hidden").write_text("secret\n")
    with pytest.warns(CorpusWarning, match="image.bin"):
        corpus = load_corpus(DataConfig(corpus=str(tmp_path)))
    assert corpus.text == "first\nsecond\nthird\n"
    assert len(corpus.files) == 3


def test_corpus_glob(tmp_path: Path) -> None:
    (tmp_path / "x1.txt").write_text("one ")
    (tmp_path / "x2.txt").write_text("two")
    (tmp_path / "y.log").write_text("no")
    assert load_corpus(DataConfig(corpus=str(tmp_path / "x*.txt"))).text == "one two"
    with pytest.raises(CharlmError, match="matches no files"):
        load_corpus(DataConfig(corpus=str(tmp_path / "*.csv")))


def test_invalid_utf8_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello \xff world")
    with pytest.raises(CharlmError) as info:
        load_corpus(DataConfig(corpus=str(path)))
    assert str(path) in str(info.value) and "byte offset 6" in str(info.value)
    assert load_corpus(DataConfig(corpus=str(path), errors="replace")).text == "hello \ufffd world"
    assert load_corpus(DataConfig(corpus=str(path), encoding="latin-1")).text == "hello ÿ world"


def test_missing_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(CharlmError, match="corpus not found"):
        load_corpus(DataConfig(corpus=str(tmp_path / "nope.txt")))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CharlmError, match="empty"):
        load_corpus(DataConfig(corpus=str(empty)))


def test_bom_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffabc".encode())
    assert load_corpus(DataConfig(corpus=str(path))).text == "abc"


def test_builtin_corpus_is_the_stdlib() -> None:
    files = stdlib_files()
    assert files and all(p.suffix == ".py" for p in files)
    corpus = load_corpus(DataConfig())
    assert "def " in corpus.text and len(corpus.text) > 1_000_000
    assert corpus.sha256 == load_corpus(DataConfig()).sha256  # deterministic


def test_split_is_contiguous_with_test_at_the_end() -> None:
    ids = np.arange(1000)
    splits = split_ids(ids, val_fraction=0.1, test_fraction=0.05)
    assert len(splits.train) == 850 and len(splits.val) == 100 and len(splits.test) == 50
    joined = np.concatenate([splits.train, splits.val, splits.test])
    assert (joined == ids).all()
    assert len(split_ids(ids, 0.1).test) == 0


def test_stream_batches_continue_where_the_last_one_ended() -> None:
    ids = np.arange(10_000) % 251
    batcher = StreamBatcher(ids.astype(np.uint8), batch_size=4, seq_len=8, seed=0)
    x1, y1, fresh1 = batcher.next()
    x2, _, fresh2 = batcher.next()
    assert x1.shape == (4, 8) and x1.dtype == torch.int64
    assert fresh1 and not fresh2
    assert torch.equal(y1[:, :-1], x1[:, 1:])  # targets are the next characters
    assert torch.equal(x2[:, 0], y1[:, -1])  # each stream continues
    # The streams are far apart: row r starts r * stream_len into the split.
    assert int(x1[1, 0]) == batcher.stream_len % 251


def test_stream_position_restores_exactly() -> None:
    ids = (np.arange(5_000) % 97).astype(np.uint8)
    a = StreamBatcher(ids, batch_size=3, seq_len=16, seed=5)
    for _ in range(150):  # past an epoch boundary
        a.next()
    b = StreamBatcher(ids, batch_size=3, seq_len=16, seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(50):
        xa, ya, fa = a.next()
        xb, yb, fb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and fa == fb
    assert a.position.epoch >= 1


def test_stream_batcher_too_small_says_what_is_needed() -> None:
    with pytest.raises(CharlmError, match=r"need at least"):
        StreamBatcher(np.zeros(100, dtype=np.uint8), batch_size=8, seq_len=32)


def test_eval_segments_score_every_character_once() -> None:
    ids = np.arange(23)
    x, y, count = eval_segments(ids, streams=4)
    assert count == 22
    targets = y[y >= 0]
    assert sorted(targets.tolist()) == list(range(1, 23))
    assert torch.equal(x[y >= 0] + 1, targets)  # each target's input is its predecessor
