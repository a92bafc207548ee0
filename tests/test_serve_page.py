"""The playground page in a real headless Chromium, driven over the DevTools protocol.

Chromium's `--remote-debugging-pipe` speaks the protocol as NUL-separated JSON on file
descriptors 3 (commands) and 4 (replies), so no websocket client or browser driver package is
needed. Skipped where Debian's `chromium` is not installed (`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="charlm serve needs the serve extra")

from charlm.checkpoint import load_model
from charlm.sample import generate
from charlm.sample_options import SampleOptions
from charlm.serving.app import ServeSettings, make_app
from charlm.serving.engine import Engine
from charlm.serving.server import serve_in_thread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)"
)


class Browser:
    """A headless Chromium and one page of it, over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
        # bash, not sh: dash cannot redirect from a descriptor numbered above 9.
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', str(CHROMIUM), *args],
            pass_fds=(cmd_r, out_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(out_w)
        self.buffer = b""
        self.next_id = 0
        self.session: str | None = None

    def send(self, method: str, timeout: float = 20.0, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        os.write(self.cmd_w, json.dumps(message).encode() + b"\0")
        end = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.out_r], [], [], left)[0]:
                raise TimeoutError(f"{method}: no reply from chromium")
            chunk = os.read(self.out_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]

    def js(self, expression: str) -> Any:
        found = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return found["result"].get("value")

    def wait(self, expression: str, seconds: float = 30.0) -> Any:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"waited {seconds} s for {expression}")

    def click(self, element_id: str) -> None:
        """A real mouse press and release on the middle of the element."""
        box = self.js(
            f"(() => {{ const r = document.getElementById('{element_id}')"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)  # fmt: skip

    def close(self) -> None:
        os.close(self.cmd_w)
        os.close(self.out_r)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def test_the_page_streams_the_text_after_the_typed_prime(
    browser: Browser, trained_run: Path
) -> None:
    loaded = load_model(trained_run, "cpu")
    engine = Engine(loaded.model, loaded.vocab, max_batch=4)
    settings = ServeSettings(name="tiny", info={"vocab_size": len(loaded.vocab)})
    with serve_in_thread(make_app(engine, settings), engine) as url:
        browser.open(url + "/")
        browser.wait("document.readyState === 'complete' && "
                     "document.getElementById('model').textContent.includes('tiny')")  # fmt: skip
        browser.js("document.getElementById('prime').focus()")
        browser.send("Input.insertText", text="The ")
        browser.js("document.getElementById('length').value = '120'")
        browser.js("document.getElementById('seed').value = '5'")
        browser.click("generate")
        assert browser.wait("document.getElementById('status').textContent === 'done'")
        shown = browser.js("document.getElementById('output').textContent")
    options = SampleOptions(length=120, temperature=0.8, top_p=1.0, seed=5)
    want = "".join(generate(loaded.model, loaded.vocab, "The ", options))
    assert shown.startswith("The ")
    assert shown == "The " + want
