"""Input options that let a user go on: encodings, BOMs, newlines, rare and unseen characters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_text, tiny_config
from typer.testing import CliRunner

from charlm.cli import app
from charlm.config import DataConfig, load_config
from charlm.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.sample import encode_prime
from charlm.training import prepare_data
from charlm.vocab import UNKNOWN_CHAR, Vocab

runner = CliRunner()


def corpus_of(path: Path, **kw: object) -> str:
    return load_corpus(DataConfig(corpus=str(path), **kw)).text  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- corpora
def test_latin1_corpus_reads_when_named(tmp_path: Path) -> None:
    path = tmp_path / "fr.txt"
    path.write_bytes("café crème\n".encode("latin-1"))
    assert corpus_of(path, encoding="latin-1") == "café crème\n"
    with pytest.raises(CharlmError, match=r"invalid utf-8 at byte offset 3; set data.encoding"):
        corpus_of(path)
    assert corpus_of(path, errors="replace") == "caf\ufffd cr\ufffdme\n"


def test_utf16_corpus_with_nul_bytes_is_text(tmp_path: Path) -> None:
    """UTF-16 text is full of NUL bytes: they only mean binary in byte-oriented encodings."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_bytes("hello wörld\n".encode("utf-16"))  # with a BOM
    (folder / "b.txt").write_bytes("\ufeffzwei\n".encode("utf-16-le"))  # BOM written by hand
    assert corpus_of(folder / "a.txt", encoding="utf-16") == "hello wörld\n"
    assert corpus_of(folder, encoding="utf-16-le").endswith("zwei\n")
    assert "\ufeff" not in corpus_of(folder / "b.txt", encoding="utf-16-le")
    with pytest.raises(CharlmError, match=r"binary.*set data\.encoding if it is UTF-16"):
        corpus_of(folder / "a.txt")
    with pytest.raises(CharlmError, match="no text files"):
        corpus_of(folder)


def test_utf8_bom_is_dropped_from_every_file(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "1.txt").write_bytes(b"\xef\xbb\xbfone\n")
    (folder / "2.txt").write_bytes(b"\xef\xbb\xbftwo\n")
    assert corpus_of(folder) == "one\ntwo\n"


def test_newline_lf_is_the_default_and_keep_keeps(tmp_path: Path) -> None:
    path = tmp_path / "dos.txt"
    path.write_bytes(b"a\r\nb\rc\nd\r\n")
    assert DataConfig().newline == "lf"
    assert corpus_of(path) == "a\nb\nc\nd\n"
    assert corpus_of(path, newline="keep") == "a\r\nb\rc\nd\r\n"


def test_newlines_are_normalised_per_file(tmp_path: Path) -> None:
    """A file ending in a lone \\r and the next starting with \\n are two line ends, not one."""
    (tmp_path / "1.txt").write_bytes(b"x\r")
    (tmp_path / "2.txt").write_bytes(b"\ny")
    assert corpus_of(tmp_path) == "x\n\ny"


def test_literal_path_with_glob_characters(tmp_path: Path) -> None:
    path = tmp_path / "notes[1].txt"
    path.write_text("bracketed\n", encoding="utf-8")
    assert corpus_of(path) == "bracketed\n"


def test_undecodable_in_a_codec_without_offsets(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"a.b")  # not valid Punycode; the codec says so without an offset
    with pytest.raises(CharlmError, match="cannot decode as punycode"):
        corpus_of(path, encoding="punycode")


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("data.encoding=utf\0", "not a known text encoding"),
        ("data.corpus=a\0b", "NUL character"),
        ("data.min_char_count=-1", "data.min_char_count"),
        ("data.newline=CRLF", "expected one of lf, keep"),
    ],
)
def test_bad_data_values(override: str, words: str) -> None:
    with pytest.raises(CharlmError, match=words):
        load_config(None, [override])


def test_new_data_keys_load(tmp_path: Path) -> None:
    config = load_config(None, ["data.newline=KEEP", "data.min_char_count=3"])
    assert (config.data.newline, config.data.min_char_count) == ("keep", 3)


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 2000, encoding="utf-8")
    with pytest.raises(CharlmError, match=r"deep\.yaml.*nested too deeply"):
        load_config(path)


def test_python_tags_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "hacked"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(CharlmError, match=r"line 1, column 8: .*tags such as !!python/object"):
        load_config(path)
    assert not marker.exists()


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="needs a machine without a GPU",
)
def test_auto_device_falls_back_to_cpu() -> None:
    from charlm.model import resolve_device

    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CharlmError, match="no CUDA GPU"):
        resolve_device("cuda")


# ----------------------------------------------------------------------- rare/unseen chars
def test_min_char_count_maps_rare_characters(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(4000) + "ж§ж", encoding="utf-8")
    data = prepare_data(tiny_config(path, **{"data.min_char_count": 3}))
    assert data.vocab.unknown_char == UNKNOWN_CHAR
    assert "ж" not in data.vocab and "§" not in data.vocab and "a" in data.vocab
    all_ids = [*data.splits.train, *data.splits.val]
    assert data.vocab.decode(all_ids).endswith(UNKNOWN_CHAR * 3)
    plain = prepare_data(tiny_config(path))
    assert plain.vocab.unknown_char is None and "ж" in plain.vocab


def test_vocab_records_old_and_new() -> None:
    old = Vocab.from_dict({"chars": "abc"})  # a record from before the unknown symbol
    assert old.unknown_char is None and old.to_dict() == {"chars": "abc", "unknown": None}
    new = Vocab.from_text("aab", 2)
    assert new.to_dict() == {"chars": "a" + UNKNOWN_CHAR, "unknown": UNKNOWN_CHAR}
    assert Vocab.from_dict(new.to_dict()) == new
    for bad in ({"chars": "abc", "unknown": "z"}, {"chars": "abc", "unknown": 5}):
        with pytest.raises(CharlmError, match="vocabulary"):
            Vocab.from_dict(bad)


def test_encode_prime_policies() -> None:
    vocab = Vocab.from_text("ab\n")
    assert encode_prime(vocab, "aéb", "skip") == [1, 2]
    assert encode_prime(vocab, "éé", "skip") == [0]  # nothing left: start from the newline
    with pytest.raises(CharlmError, match=r"^--prime: .*'é' x2"):
        encode_prime(vocab, "éé")
    rare = Vocab.from_text("aab", 2)
    assert rare.decode(encode_prime(rare, "abé", "replace")) == "a" + UNKNOWN_CHAR * 2


def test_sample_and_eval_go_on_with_skip(trained_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["sample", str(trained_run), "--prime", "The ☃ cat", "--unknown", "skip", "-n", "20"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("The ☃ cat") and len(result.stdout) == len("The ☃ cat") + 20
    text = tmp_path / "e.txt"
    text.write_text("The cat ☃ sees a dog.\n" * 5, encoding="utf-8")
    result = runner.invoke(
        app, ["eval", str(trained_run), "--corpus", str(text), "--unknown", "skip", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chars"] == len("The cat  sees a dog.\n") * 5 - 1


def test_run_trained_with_min_char_count(tmp_path: Path) -> None:
    """A model with an unknown symbol: its own split scores, and `replace` works at sample/eval."""
    from charlm.training import train

    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(6000) + "ж", encoding="utf-8")
    steps = {"train.max_steps": 4, "train.eval_interval": 4, "train.checkpoint_interval": 4}
    run = tmp_path / "run"
    train(tiny_config(corpus, **steps, **{"data.min_char_count": 2}), run)
    result = runner.invoke(app, ["eval", str(run), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["sample", str(run), "-p", "жA", "--unknown", "replace", "-n", "5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("жA")
    other = tmp_path / "other.txt"
    other.write_text("A cat sees ж.\n", encoding="utf-8")
    result = runner.invoke(app, ["eval", str(run), "--corpus", str(other)])
    assert result.exit_code == 1
    assert "'ж' x1" in result.stderr and "--unknown replace" in result.stderr
    result = runner.invoke(app, ["eval", str(run), "--corpus", str(other), "--unknown", "replace"])
    assert result.exit_code == 0, result.output
