"""Run the app on uvicorn: in the foreground for `charlm serve`, or in a thread for tests.

Ctrl-C or SIGTERM stops taking connections and ends every active stream at its next step (each
gets its last chunk and `data: [DONE]`), and the process exits 0: uvicorn's own handling would
wait for open streams and then re-raise the signal. Streams that still hang are cut after
`GRACE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from charlm.serving.engine import Engine

GRACE_S = 1


class Server(uvicorn.Server):
    """uvicorn's server with the engine told first on a stop signal, and no signal re-raised."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self.engine = engine
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop_engine()
        super().handle_exit(sig, frame)

    def stop_engine(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.engine.stop)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        before = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def config(app: Any, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=GRACE_S,
        lifespan="on",
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(app: Any, engine: Engine, host: str, port: int, log_level: str = "info") -> None:
    """Serve until Ctrl-C or SIGTERM."""
    Server(config(app, host, port, log_level), engine).run()


@contextlib.contextmanager
def serve_in_thread(app: Any, engine: Engine) -> Iterator[str]:
    """Serve on a free 127.0.0.1 port in a background thread; yields the base URL, and stops
    the server (streams ended, then the thread joined) when the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = Server(config(app, "127.0.0.1", port), engine)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):  # up to 5 s for the lifespan to start
        if server.started:
            break
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop_engine()
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
