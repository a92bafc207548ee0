"""Corpora of any size: streaming decode, the id cache, random batching, `charlm data`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHAKESPEARE, make_text, tiny_config
from typer.testing import CliRunner

from charlm import cache
from charlm import events as ev
from charlm.batches import RandomBatcher
from charlm.cli import app
from charlm.config import DataConfig, load_config
from charlm.corpus import corpus_source, iter_file, load_corpus, normalise_newlines
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_run
from charlm.fetch import KNOWN
from charlm.runs import read_metrics
from charlm.training import TrainingInterrupted, prepare_data, resume, train
from charlm.vocab import Vocab

runner = CliRunner()
MIXED = "\ufeffcafé ☃ 𝄞 naïve\r\nline two\rthree\n" * 40 + "end ☃\r"


def joined(path: Path, chunk: int, **kw: str) -> str:
    pieces = iter_file(path, chunk_bytes=chunk, **kw)
    return "".join(p.decode("ascii") if isinstance(p, bytes) else p for p in pieces)


# -- streaming decode ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1"])
def test_chunked_decode_equals_whole_file_decode(tmp_path: Path, chunk: int, encoding: str) -> None:
    text = (
        MIXED
        if encoding != "latin-1"
        else MIXED.replace("☃", "x").replace("𝄞", "y").replace("\ufeff", "")
    )
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode(encoding))
    whole = path.read_bytes().decode(encoding).removeprefix("\ufeff")
    assert joined(path, chunk, encoding=encoding) == whole
    assert joined(path, chunk, encoding=encoding, newline="lf") == normalise_newlines(whole)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 9, 1000])
def test_invalid_utf8_offset_is_exact_across_chunks(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes("é☃".encode() * 50 + b"\xff rest")  # 5 bytes per repeat
    with pytest.raises(CharlmError, match=r"bad.txt: invalid utf-8 at byte offset 250;"):
        joined(path, chunk)
    path.write_bytes(b"abc\xe2\x98")  # a character cut off at the end of the file
    with pytest.raises(CharlmError, match=r"invalid utf-8 at byte offset 3;"):
        joined(path, chunk)


@pytest.mark.parametrize("chunk", [1, 2, 4, 1000])
def test_bom_is_dropped_only_at_file_start(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffa\ufeffb".encode())
    assert joined(path, chunk) == "a\ufeffb"


def test_folder_corpus_with_an_escaped_separator(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "b.txt").write_text("second\r\n", encoding="utf-8")
    data = DataConfig(corpus=str(tmp_path), separator=r"\n--\t\n")
    assert load_corpus(data).text == "first\n--\t\nsecond\n"
    assert load_corpus(DataConfig(corpus=str(tmp_path))).text == "firstsecond\n"  # default
    with pytest.raises(CharlmError, match=r"data.separator: .*bad escape"):
        load_config(None, ["data.separator=\\x"])


# -- the id cache -------------------------------------------------------------------------------
def in_memory(data: DataConfig) -> tuple[Vocab, np.ndarray, str]:
    corpus = load_corpus(data)
    vocab = Vocab.from_text(corpus.text, data.min_char_count)
    ids = vocab.encode(corpus.text, "replace" if vocab.unknown_char else "error")
    return vocab, ids, corpus.sha256


@pytest.mark.parametrize("min_count", [1, 3])
@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_cache_equals_the_in_memory_encoding(tmp_path: Path, min_count: int, chunk: int) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(5000) + MIXED + "rare: ✓ ¤\n", encoding="utf-8", newline="")
    data = DataConfig(corpus=str(path), min_char_count=min_count)
    prepared = cache.prepare_corpus(data, chunk_bytes=chunk)
    vocab, ids, sha = in_memory(data)
    assert prepared.vocab == vocab and prepared.sha256 == sha
    assert prepared.ids.dtype == np.uint8 and isinstance(prepared.ids, np.memmap)
    assert np.array_equal(prepared.ids, ids)
    assert sum(prepared.counts) == len(ids)
    assert prepared.cache_path.parent == tmp_path / ".charlm-cache"


def test_large_vocabulary_uses_uint16(tmp_path: Path) -> None:
    path = tmp_path / "wide.txt"
    path.write_text("".join(chr(0x4E00 + i) for i in range(400)) * 3, encoding="utf-8")
    prepared = cache.prepare_corpus(DataConfig(corpus=str(path)), chunk_bytes=10)
    _, ids, _ = in_memory(DataConfig(corpus=str(path)))
    assert prepared.ids.dtype == np.uint16 and np.array_equal(prepared.ids, ids)


def test_cache_is_reused_then_rebuilt_when_the_corpus_changes(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000), encoding="utf-8")
    data = DataConfig(corpus=str(path))
    assert cache.prepare_corpus(data).status == "built"
    again = cache.prepare_corpus(data)
    assert again.status == "reused"
    path.write_text(make_text(3000, seed=1) + "Z", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    changed = cache.prepare_corpus(data)
    assert changed.status == "rebuilt: the corpus changed"
    assert np.array_equal(changed.ids, in_memory(data)[1]) and "Z" in changed.vocab
    assert len(list((tmp_path / ".charlm-cache").iterdir())) == 1  # replaced, not piled up


def _truncate_one(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-1])


def _cut_ids(p: Path) -> None:
    p.write_bytes(p.read_bytes()[100:])


def _flip_header(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[-100] ^= 0x01
    p.write_bytes(bytes(raw))


def _zero_ids(p: Path) -> None:
    raw = bytearray(p.read_bytes())
    raw[:50] = bytes(50)
    p.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (_truncate_one, "truncated"),
        (_cut_ids, "wrong size"),
        (_flip_header, "checksum"),
        (_zero_ids, "ids checksum"),
        (lambda p: p.write_bytes(b""), "truncated"),
    ],
)
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage: object, why: str) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000), encoding="utf-8")
    data = DataConfig(corpus=str(path))
    built = cache.prepare_corpus(data)
    damage(built.cache_path)  # type: ignore[operator]
    again = cache.prepare_corpus(data)
    assert again.status.startswith("rebuilt: ") and why in again.status
    assert np.array_equal(again.ids, in_memory(data)[1])
    assert cache.prepare_corpus(data).status == "reused"


def test_a_crash_before_the_rename_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000), encoding="utf-8")

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", crash)
    with pytest.raises(CharlmError, match=r"cannot write the corpus id cache .*data.cache_dir"):
        cache.prepare_corpus(DataConfig(corpus=str(path)))
    assert list((tmp_path / ".charlm-cache").iterdir()) == []


def test_cache_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    source = corpus_source(DataConfig())
    assert cache.cache_path(DataConfig(), source).parent == tmp_path / "xdg" / "charlm"
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n", encoding="utf-8")
    data = DataConfig(corpus=str(folder))
    assert cache.cache_path(data, corpus_source(data)).parent == folder / ".charlm-cache"
    glob = DataConfig(corpus=str(folder / "*.txt"))
    assert cache.cache_path(glob, corpus_source(glob)).parent == tmp_path / "xdg" / "charlm"
    mine = DataConfig(corpus=str(folder), cache_dir=str(tmp_path / "mine"))
    assert cache.cache_path(mine, corpus_source(mine)).parent == tmp_path / "mine"


def test_too_small_corpus_writes_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "small.txt"
    path.write_text(make_text(300), encoding="utf-8")
    with pytest.raises(CharlmError, match="need at least"):
        prepare_data(tiny_config(path))
    assert not (tmp_path / ".charlm-cache").exists()


# -- training and eval on the cache -------------------------------------------------------------
def test_training_reads_a_memory_map_and_eval_checks_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(), encoding="utf-8")
    data = prepare_data(tiny_config(path))
    assert isinstance(data.splits.train, np.memmap) and isinstance(data.splits.val, np.memmap)
    assert data.corpus_record["sha256"] == load_corpus(DataConfig(corpus=str(path))).sha256
    run = tmp_path / "run"
    train(tiny_config(path, **{"train.max_steps": 20}), run)
    assert evaluate_run(run).chars == len(data.splits.val) - 1
    path.write_text(make_text(seed=3), encoding="utf-8")
    with pytest.raises(CharlmError, match="the corpus changed since training"):
        evaluate_run(run)


def test_random_batcher_is_seeded_in_bounds_and_restorable() -> None:
    ids = (np.arange(3000) % 251).astype(np.uint8)
    a, b = RandomBatcher(ids, 4, 16, seed=7), RandomBatcher(ids, 4, 16, seed=7)
    batches = [a.next() for _ in range(60)]  # several "epochs"
    assert a.position.epoch >= 1 and all(fresh for _, _, fresh in batches)
    x, y, _ = batches[0]
    assert x.shape == (4, 16) and torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal((x[:, 1:] - x[:, :-1]) % 251, torch.ones(4, 15, dtype=torch.int64))
    assert not torch.equal(batches[0][0], batches[1][0])
    b.load_state_dict({"epoch": 0, "index": 30})
    assert torch.equal(b.next()[0], batches[30][0])
    with pytest.raises(CharlmError, match="random windows"):
        RandomBatcher(ids[:10], 4, 16)


RANDOM = {
    "train.batching": "random",
    "model.dropout": 0.2,
    "model.num_layers": 2,
    "train.max_steps": 30,
    "train.log_interval": 1,
    "train.eval_interval": 10,
    "train.checkpoint_interval": 10,
}


def test_random_batching_resumes_exactly(tmp_path: Path) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    baseline, run = tmp_path / "baseline", tmp_path / "run"
    train(tiny_config(corpus, **RANDOM), baseline)

    def stop_at_13(event: ev.Event) -> None:
        if isinstance(event, ev.Logged) and event.step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(tiny_config(corpus, **RANDOM), run, on_event=stop_at_13)
    resume(run)

    def losses(r: Path) -> list[tuple[int, float]]:
        return [(m["step"], m["train_loss"]) for m in read_metrics(r) if "train_loss" in m]

    assert len(losses(run)) == 30 and losses(run) == losses(baseline)
    from charlm.checkpoint import load_checkpoint

    ours = load_checkpoint(run / "checkpoints" / "step-00000030.safetensors")
    theirs = load_checkpoint(baseline / "checkpoints" / "step-00000030.safetensors")
    assert ours.record["batcher"] == theirs.record["batcher"] == {"epoch": 0, "index": 30}
    for name, tensor in theirs.group("model").items():
        assert torch.equal(ours.group("model")[name], tensor), name


# -- charlm data prepare / fetch ----------------------------------------------------------------
def test_data_prepare_prints_statistics(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("aaaab\n" * 100, encoding="utf-8")
    result = runner.invoke(app, ["data", "prepare", str(path), "data.val_fraction=0.2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["chars"], report["vocab_size"], report["dtype"]) == (600, 3, "uint8")
    assert report["most_frequent"][0] == ["a", 400] and report["least_frequent"][0] == ["b", 100]
    assert report["splits"] == {"train": 480, "val": 120, "test": 0}
    assert report["cache_status"] == "built" and Path(report["cache"]).is_file()
    again = runner.invoke(app, ["data", "prepare", str(path), "data.val_fraction=0.2"])
    assert again.exit_code == 0 and "reused" in again.stdout and "600" in again.stdout


def test_corpus_statistics_rank_symbols_and_cut_splits(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("".join(chr(ord("a") + i) * (i + 1) for i in range(12)), encoding="utf-8")
    data = DataConfig(corpus=str(path), val_fraction=0.1, test_fraction=0.05)
    prepared = cache.prepare_corpus(data)
    report = cache.corpus_statistics(prepared, data)
    assert report["chars"] == 78 and report["vocab_size"] == 12 and report["files"] == 1
    assert report["most_frequent"] == [[chr(ord("a") + i), i + 1] for i in range(11, 1, -1)]
    assert report["least_frequent"] == [[chr(ord("a") + i), i + 1] for i in range(10)]
    assert report["splits"] == {"train": 66, "val": 8, "test": 4}
    assert report["sha256"] == prepared.sha256 and report["cache_status"] == "built"
    assert json.loads(json.dumps(report)) == report  # JSON-ready as it stands


def test_data_prepare_mistake_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "prepare", str(tmp_path / "missing.txt")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.txt" in lines[0] and "not found" in lines[0]


class _Server:
    """A local HTTP server on an ephemeral port serving fixed bytes by path."""

    def __init__(self, files: dict[str, bytes]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    if not SHAKESPEARE.is_file():
        pytest.skip("the shared Tiny Shakespeare copy is absent")
    good = SHAKESPEARE.read_bytes()
    bad = bytearray(good)
    bad[1000] ^= 0x20
    s = _Server({"/good.txt": good, "/bad.txt": bytes(bad), "/short.txt": good[:-1]})
    yield s
    s.close()


def test_data_fetch_downloads_and_verifies(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    args = ["data", "fetch", "tinyshakespeare", "--url", f"{server.url}/good.txt"]
    result = runner.invoke(app, [*args, "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    saved = dest / "tinyshakespeare.txt"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == KNOWN["tinyshakespeare"].sha256
    assert sorted(p.name for p in dest.iterdir()) == ["tinyshakespeare.txt"]
    again = runner.invoke(app, [*args, "--dest", str(dest)])
    assert again.exit_code == 0 and "already present" in again.stderr


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/bad.txt", ["does not match", "1,115,394 bytes, SHA-256", "nothing was saved"]),
        ("/short.txt", ["does not match", "1,115,393 bytes"]),
        ("/missing.txt", ["HTTP 404"]),
    ],
)
def test_data_fetch_refuses_a_mismatch(
    server: _Server, tmp_path: Path, path: str, words: list[str]
) -> None:
    dest = tmp_path / "data"
    args = ["data", "fetch", "tinyshakespeare", "--url", server.url + path, "--dest", str(dest)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not dest.exists()  # not even the folder: a failed fetch leaves nothing


def test_data_fetch_offline_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/input.txt"
    args = ["data", "fetch", "tinyshakespeare", "--url", url, "--dest", str(tmp_path / "d")]
    result = runner.invoke(app, [*args, "--timeout", "5"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot download tinyshakespeare" in lines[0], lines
    assert "--url" in lines[0] and "Traceback" not in result.output
    unknown = runner.invoke(app, ["data", "fetch", "enwik8"])
    assert unknown.exit_code == 1 and "expected one of tinyshakespeare" in unknown.stderr


def test_a_read_only_corpus_folder_is_left_alone_even_for_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No write bit on the corpus's folder: the cache goes to the user cache folder instead."""
    from charlm.cache import cache_dir
    from charlm.config import DataConfig
    from charlm.corpus import corpus_source

    folder = tmp_path / "shared"
    folder.mkdir()
    corpus = folder / "text.txt"
    corpus.write_text("hello world\n" * 50)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = DataConfig(corpus=str(corpus))
    assert cache_dir(data, corpus_source(data)) == folder / ".charlm-cache"
    folder.chmod(0o555)
    try:
        assert cache_dir(data, corpus_source(data)) == tmp_path / "xdg" / "charlm"
    finally:
        folder.chmod(0o755)
