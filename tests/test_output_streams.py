"""`charlm sample` with its standard streams closed, full or cut: one error line or silence.

These need a real process: a closed file descriptor, /dev/full and a pipe whose reader is gone
cannot be faked in process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEV_FULL = Path("/dev/full")


def _closed_pipe() -> int:
    """The write end of a pipe whose read end is already closed: writing gets EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


# (id, extra sample options, stdin, stdout, expected exit code, words in the one stderr line)
CASES: list[tuple[str, list[str], Any, Any, int, list[str]]] = [
    ("stdout-closed", [], subprocess.DEVNULL, "closed", 1, ["standard output is closed"]),
    ("stdout-full", [], subprocess.DEVNULL, "full", 1, ["no space left on device"]),
    ("stdout-full-batch", ["--num-samples", "3"], subprocess.DEVNULL, "full", 1, ["no space"]),
    ("stdout-full-json", ["--json"], subprocess.DEVNULL, "full", 1, ["standard output"]),
    ("broken-pipe", ["-n", "20000"], subprocess.DEVNULL, "epipe", 141, []),
    ("broken-pipe-batch", ["--num-samples", "2"], subprocess.DEVNULL, "epipe", 141, []),
    ("interactive-stdin-closed", ["-i"], "closed", subprocess.DEVNULL, 1, ["input is closed"]),
    ("interactive-stdout-full", ["-i"], "hello", "full", 1, ["no space left"]),
    ("interactive-stdout-closed", ["-i"], "hello", "closed", 1, ["output is closed"]),
]


def _run(run: Path, options: list[str], stdin: Any, stdout: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    # On the CPU: with a GPU, --device auto would add its timing line to stderr.
    cmd = [sys.executable, "-m", "charlm", "sample", str(run), "--device", "cpu", "-n", "50"]
    cmd += ["-s", "1", *options]
    fds: list[int] = []
    kwargs: dict[str, Any] = {}
    if stdout == "full":
        kwargs["stdout"] = DEV_FULL.open("wb")
    elif stdout == "epipe":
        fds.append(_closed_pipe())
        kwargs["stdout"] = fds[-1]
    elif stdout == "closed":
        # Close descriptor 1 in the child (its `>&-`), keeping stderr.
        cmd = ["sh", "-c", 'exec "$@" >&-', "sh", *cmd]
    else:
        kwargs["stdout"] = stdout
    if stdin == "closed":
        cmd = ["sh", "-c", 'exec "$@" <&-', "sh", *cmd]
        kwargs["stdin"] = subprocess.DEVNULL
    elif stdin == "hello":
        kwargs["input"] = b"hello\n"
    else:
        kwargs["stdin"] = stdin
    try:
        return subprocess.run(cmd, stderr=subprocess.PIPE, env=env, timeout=120, **kwargs)
    finally:
        for fd in fds:
            os.close(fd)
        if hasattr(kwargs.get("stdout"), "close"):
            kwargs["stdout"].close()


@pytest.mark.slow
@pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full and sh")
@pytest.mark.parametrize(
    ("options", "stdin", "stdout", "code", "words"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_sample_stream_trouble(
    trained_run: Path,
    options: list[str],
    stdin: Any,
    stdout: Any,
    code: int,
    words: list[str],
) -> None:
    proc = _run(trained_run, options, stdin, stdout)
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert proc.returncode == code, stderr
    if not words:
        assert stderr == ""  # a reader that went away: silence
        return
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
