"""What differs by platform: the user cache folder, the run lock, Apple GPUs (mps) as a device,
and `charlm data fetch` (which leaves nothing behind when a download fails)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_overrides
from filelock import FileLock
from rich.console import Console
from typer.testing import CliRunner

import charlm
from charlm.cache import cache_path, user_cache_dir
from charlm.cli import app
from charlm.config import DataConfig, ModelConfig, load_config
from charlm.corpus import corpus_source
from charlm.errors import CharlmError
from charlm.fetch import KNOWN, KnownCorpus, fetch
from charlm.model import CharLM, accelerator, resolve_device
from charlm.precision import (
    check_train_precision,
    empty_cache,
    hardware_bf16,
    resolve_train_precision,
    synchronize,
)
from charlm.rundir import LOCK_NAME, SUMMARY_NAME, is_running, running_lock
from charlm.runs import read_run
from charlm.sample_options import SampleOptions


# -- the user cache folder ----------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_the_user_cache_folder_follows_xdg_on_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "charlm"
    data = DataConfig()  # the built-in corpus: its cache goes to the user cache folder
    assert cache_path(data, corpus_source(data)).parent == tmp_path / "xdg" / "charlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "charlm"


# -- the run lock -------------------------------------------------------------------------------
HOLD = """
import sys
from filelock import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock file `path` until the block ends (or it is killed)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_a_lock_file_no_one_holds_is_not_a_running_run(tmp_path: Path) -> None:
    """What a killed run leaves behind (Unix keeps the file) must not look like a run."""
    (tmp_path / LOCK_NAME).write_text("left by a killed run")
    assert not is_running(tmp_path)
    with running_lock(tmp_path):  # and a new training takes it
        assert is_running(tmp_path)  # a second instance in this process sees it held
    assert not is_running(tmp_path)
    assert not is_running(tmp_path / "no-such-run")


def test_a_lock_held_by_a_thread_counts_as_running(tmp_path: Path) -> None:
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with FileLock(tmp_path / LOCK_NAME):
            taken.set()
            done.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert taken.wait(10)
        assert is_running(tmp_path)
        refused = pytest.raises(CharlmError, match="another process is training this run")
        with refused, running_lock(tmp_path):
            pass
    finally:
        done.set()
        thread.join()
    assert not is_running(tmp_path)


def test_a_run_another_process_trains_is_running_and_refuses_a_second_training(
    trained_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / SUMMARY_NAME).unlink()  # no summary: the lock alone tells running from interrupted
    before = files_of(run)
    with held_elsewhere(run / LOCK_NAME) as holder:
        assert read_run(run).status == "running"
        result = CliRunner().invoke(app, ["train", "--resume", str(run)])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "another process is training this run" in lines[0], lines
        assert files_of(run) == before  # refused before touching the run
        holder.kill()  # killed, however hard: the OS drops its lock
        holder.wait()
        assert read_run(run).status == "interrupted"


# -- devices: CUDA, Apple GPUs (mps), the CPU ---------------------------------------------------
@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool, bool], None]:
    """Make torch report CUDA and mps present or not (no tensor is ever put on them here)."""

    def set_gpus(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return set_gpus


@pytest.mark.parametrize(
    ("cuda", "mps", "auto"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_the_cpu(
    gpus: Callable[[bool, bool], None], cuda: bool, mps: bool, auto: str
) -> None:
    gpus(cuda, mps)
    assert resolve_device("auto") == torch.device(auto)
    assert accelerator() == (None if auto == "cpu" else auto)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_that_is_not_here_is_one_line_naming_what_is(
    gpus: Callable[[bool, bool], None],
) -> None:
    gpus(False, True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(CharlmError, match=r"'cuda' .*no CUDA GPU .*; use cpu, mps or auto$"):
        resolve_device("cuda")
    gpus(True, False)
    message = r"'mps' \(train.device or --device\) .*no Apple GPU .*; use cpu, cuda or auto$"
    with pytest.raises(CharlmError, match=message):
        resolve_device("mps")
    with pytest.raises(CharlmError, match=r"'metal': expected auto, cpu, cuda or mps"):
        resolve_device("metal")


def test_train_device_mps_is_a_config_value_and_refused_cleanly_without_one(
    gpus: Callable[[bool, bool], None], tmp_path: Path, corpus_file: Path
) -> None:
    assert load_config(None, ["train.device=mps"]).train.device == "mps"
    with pytest.raises(CharlmError, match=r"train\.device: 'metal' .*auto, cpu, cuda, mps"):
        load_config(None, ["train.device=metal"])
    gpus(False, False)
    args = ["train", *tiny_overrides(corpus_file, **{"train.device": "mps"})]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.device" in lines[0] and "use cpu or auto" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_loading_for_mps_where_there_is_none_is_one_clear_error(
    gpus: Callable[[bool, bool], None], trained_run: Path
) -> None:
    gpus(False, False)
    with pytest.raises(CharlmError, match=r"'mps' .*no Apple GPU"):
        charlm.load(trained_run, device="mps")
    with pytest.raises(CharlmError, match=r"--device 'gpu': expected auto, cpu, cuda or mps"):
        charlm.load(trained_run, device="gpu")


def test_precisions_on_mps_are_conservative() -> None:
    """No tensor goes to the device: these answers come before any would."""
    mps = torch.device("mps")
    assert not hardware_bf16(mps)  # so `auto` never times bf16 there
    assert resolve_train_precision("auto", ModelConfig(), 10, 2, 8, mps).name == "fp32"
    with pytest.raises(CharlmError, match=r"'fp16' needs a CUDA GPU .*; on mps use fp32$"):
        check_train_precision("fp16", ModelConfig(), mps)


def test_synchronize_and_empty_cache_wait_on_the_device_they_are_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps sync"))
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: calls.append("mps free"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(f"{device} sync"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("cuda free"))
    for name in ("cpu", "mps", "cuda"):
        synchronize(torch.device(name))
        empty_cache(torch.device(name))
    assert calls == ["mps sync", "mps free", "cuda sync", "cuda free"]


def test_sampling_auto_times_the_cpu_against_the_gpu_auto_would_train_on(
    gpus: Callable[[bool, bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With only an Apple GPU, `--device auto` times the CPU against mps (not CUDA); the timing
    itself is stood in for, since no tensor may go to a device this machine lacks."""
    import charlm.sample_setup as setup

    gpus(False, True)
    moved: list[str] = []
    monkeypatch.setattr(setup.copy, "deepcopy", lambda model: model)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, device: moved.append(device) or self)
    timed: list[list[str]] = []

    def time_steps(builders: dict[str, Any], batch: int) -> dict[str, float]:
        timed.append(sorted(builders))
        return {"cpu": 1.0, "mps": 2.0}

    monkeypatch.setattr(setup, "time_steps", time_steps)
    monkeypatch.setattr(setup, "empty_cache", lambda device: moved.append(f"freed {device}"))
    model = CharLM(ModelConfig(embedding_dim=8, hidden_size=8, num_layers=1), 5)
    chosen, timings = setup.choose_device(model, SampleOptions(num_samples=2))
    assert timed == [["cpu", "mps"]] and moved == ["mps", "freed mps"]
    assert chosen is model and timings == {"cpu": 1.0, "mps": 2.0}
    gpus(False, False)
    assert setup.choose_device(model, SampleOptions()) == (model, {})


# -- charlm data fetch: nothing left behind, progress reported ----------------------------------
BODY = bytes(range(256)) * 1200  # 307,200 bytes: several of fetch's 64 KiB blocks


class _Server:
    """A local HTTP server: /good (with its length), /unsized (no Content-Length), /half (says
    the whole length, sends half, hangs up), /bad (the right length, one byte changed); else 404."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                bad = bytearray(BODY)
                bad[100] ^= 1
                body = {"/good": BODY, "/unsized": BODY, "/half": BODY, "/bad": bytes(bad)}
                if self.path not in body:
                    self.send_error(404)
                    return
                self.send_response(200)
                if self.path != "/unsized":  # HTTP/1.0: the body ends when the connection does
                    self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                sent = (
                    body[self.path][: len(BODY) // 2] if self.path == "/half" else body[self.path]
                )
                self.wfile.write(sent)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    """The server, and a corpus `tiny` that `fetch` knows, at its /good address."""
    s = _Server()
    digest = hashlib.sha256(BODY).hexdigest()
    tiny = KnownCorpus("tiny", f"{s.url}/good", "tiny.txt", len(BODY), digest)
    monkeypatch.setitem(KNOWN, "tiny", tiny)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.mark.parametrize(("path", "total"), [("/good", len(BODY)), ("/unsized", None)])
def test_fetch_reports_progress_up_to_the_whole_file(
    server: _Server, tmp_path: Path, path: str, total: int | None
) -> None:
    seen: list[tuple[int, int | None]] = []
    dest = tmp_path / "new" / "data"
    saved, downloaded = fetch("tiny", dest, server.url + path, progress=lambda *a: seen.append(a))
    assert downloaded and saved == dest / "tiny.txt" and saved.read_bytes() == BODY
    done = [d for d, _ in seen]
    assert done[0] == 0 and done[-1] == len(BODY) and len(done) > 3
    assert all(a < b for a, b in itertools.pairwise(done))  # increasing, block by block
    assert {t for _, t in seen} == {total}  # the server's Content-Length, when it sends one
    assert sorted(p.name for p in dest.iterdir()) == ["tiny.txt"]  # no temporary file left


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/half", "the connection closed after 153,600 of 307,200 bytes; nothing was saved"),
        ("/bad", "does not match tiny (got 307,200 bytes, SHA-256"),
        ("/missing", "download failed (HTTP 404"),
    ],
)
def test_a_failed_fetch_creates_no_folder_and_keeps_those_there_before(
    server: _Server, tmp_path: Path, path: str, words: str
) -> None:
    new = tmp_path / "new" / "deeper"
    with pytest.raises(CharlmError, match=re.escape(words)) as failed:
        fetch("tiny", new, server.url + path)
    assert "\n" not in str(failed.value)
    assert not (tmp_path / "new").exists()
    there = tmp_path / "there"
    there.mkdir()
    with pytest.raises(CharlmError):
        fetch("tiny", there, server.url + path)
    assert there.is_dir() and list(there.iterdir()) == []  # kept as it was: empty


def test_a_fetch_into_a_file_is_refused_before_downloading(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "afile").write_text("mine")
    asked: list[str] = []
    monkeypatch.setattr("urllib.request.urlopen", lambda url, **kw: asked.append(url))
    for dest in (tmp_path / "afile", tmp_path / "afile" / "deeper"):
        with pytest.raises(CharlmError) as refused:
            fetch("tiny", dest, server.url + "/good")
        assert str(refused.value) == (
            f"{dest}: {tmp_path / 'afile'} is a file; expected a folder to save in (--dest)"
        )
    assert asked == [] and (tmp_path / "afile").read_text() == "mine"


def test_cli_fetch_draws_a_bar_on_a_terminal_and_one_line_after(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.cli.data as data_cli

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, force_interactive=True, highlight=False)
    monkeypatch.setattr(data_cli, "err", terminal)
    dest = tmp_path / "d"
    result = CliRunner().invoke(app, ["data", "fetch", "tiny", "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    assert "tiny" in screen.getvalue() and "307.2/307.2 kB" in screen.getvalue()
    assert screen.getvalue().rstrip().endswith(f"{dest / 'tiny.txt'}: downloaded and verified")
    assert (dest / "tiny.txt").read_bytes() == BODY
    failed = CliRunner().invoke(
        app, ["data", "fetch", "tiny", "--url", f"{server.url}/half", "--dest", str(tmp_path / "e")]
    )
    assert failed.exit_code == 1 and not (tmp_path / "e").exists()
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "connection closed after" in lines[0], lines
