"""`charlm serve` as a process: it serves on 127.0.0.1 and SIGTERM ends its streams and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="charlm serve needs the serve extra")

from typer.testing import CliRunner

from charlm.cli import app
from charlm.serving.server import is_loopback

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_loopback_addresses_are_known() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.org"))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-batch", "0"], "--max-batch 0"),
        (["--timeout", "0"], "--timeout 0"),
        (["--port", "70000"], "--port 70000"),
        (["--unknown", "keep"], "--unknown 'keep'"),
        (["--device", "tpu"], "--device 'tpu'"),
    ],
)
def test_bad_options_are_one_line(trained_run: Path, args: list[str], named: str) -> None:
    result = CliRunner().invoke(app, ["serve", str(trained_run), *args])
    assert result.exit_code == 1
    assert named in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_sigterm_ends_the_streams_and_exits_0(trained_run: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "charlm", "serve", str(trained_run), "--port", str(port),
           "--max-tokens", "1000000"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.1)
        body = json.dumps({"prompt": "a", "max_tokens": 1_000_000, "stream": True}).encode()
        request = urllib.request.Request(base + "/v1/completions", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as stream:
            first = stream.readline()
            assert first.startswith(b"data: ")
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = stream.read()
        assert time.monotonic() - sent < 5
        events = [line for line in rest.split(b"\n\n") if line.strip()]
        assert events[-1].strip() == b"data: [DONE]"
        last = json.loads(events[-2].removeprefix(b"data: "))
        assert last["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
