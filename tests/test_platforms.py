"""What differs by platform: the user cache folder, the run lock, Apple GPUs (mps) as a device,
and `charlm data fetch` (which leaves nothing behind when a download fails)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from typer.testing import CliRunner

from charlm.cache import cache_path, user_cache_dir
from charlm.cli import app
from charlm.config import DataConfig
from charlm.corpus import corpus_source
from charlm.errors import CharlmError
from charlm.rundir import LOCK_NAME, SUMMARY_NAME, is_running, running_lock
from charlm.runs import read_run


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
