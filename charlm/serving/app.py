"""The ASGI app: OpenAI's completions and models routes, a health check and the playground page.

Starlette rather than a framework with its own validation: the request checks live in
`charlm.serving.protocol` so every error has OpenAI's shape. Each completion's streams go to the
`Engine`; a response is produced while the connection is watched, so a client that goes away
takes its streams out of the batch at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from charlm.serving.engine import Engine, Inbox, Piece, QueueFull, ShuttingDown, Stream
from charlm.serving.protocol import ApiError, Completion, Limits, parse_completion

PAGE = Path(__file__).with_name("playground.html")
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class ServeSettings:
    """What the app says about its model, and what it allows."""

    name: str
    info: dict[str, Any] = field(default_factory=dict)  # for /v1/models
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Watched:
    """An ASGI response made while the connection is watched: if the client disconnects, the
    production is cancelled at once and `on_close` runs (it always runs). Server-sent events
    when `stream`, else one JSON body sent when complete."""

    def __init__(
        self, chunks: AsyncIterator[bytes], on_close: Callable[[], None], stream: bool
    ) -> None:
        self.chunks = chunks
        self.on_close = on_close
        self.stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        producer = asyncio.ensure_future(self._produce(send))
        listener = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({producer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            producer.cancel()
            listener.cancel()
            self.on_close()
        if producer.done() and not producer.cancelled() and producer.exception():
            raise producer.exception()  # type: ignore[misc]

    async def _produce(self, send: Any) -> None:
        if not self.stream:
            body = b"".join([chunk async for chunk in self.chunks])
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


async def _disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def logprobs_block(
    entries: list[tuple[str, float, dict[str, float]]], offset: int
) -> dict[str, Any]:
    """OpenAI's completions `logprobs` object for these characters, the first at `offset`."""
    return {
        "tokens": [c for c, _, _ in entries],
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": [top for _, _, top in entries],
        "text_offset": list(range(offset, offset + len(entries))),
    }


class Api:
    """The routes, over one engine and its settings."""

    def __init__(self, engine: Engine, settings: ServeSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.created = int(time.time())
        self.beam_lock = asyncio.Lock()
        self.page = PAGE.read_text(encoding="utf-8")

    def check_key(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(
                401, "missing or wrong API key: send Authorization: Bearer <key>",
                kind="authentication_error", code="invalid_api_key",
            )  # fmt: skip

    async def health(self, request: Request) -> JSONResponse:
        status = "stopping" if self.engine.stopping else "ok"
        return JSONResponse({"status": status, "auth": self.settings.api_key is not None,
                             **self.engine.stats()})  # fmt: skip

    async def playground(self, request: Request) -> HTMLResponse:
        """The page itself holds nothing but markup; its requests carry the key it is given."""
        return HTMLResponse(self.page, headers={"content-security-policy": PAGE_POLICY})

    async def models(self, request: Request) -> JSONResponse:
        self.check_key(request)
        model = {"id": self.settings.name, "object": "model", "created": self.created,
                 "owned_by": "charlm", **self.settings.info}  # fmt: skip
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(self, request: Request) -> Any:
        self.check_key(request)
        body = await read_json(request, self.settings.limits.max_body)
        completion = parse_completion(body, self.engine.vocab, self.settings.limits)
        rid = "cmpl-" + secrets.token_hex(12)
        if completion.beam is not None:
            return Watched(self._beam(completion, rid), lambda: None, completion.stream)
        inbox = Inbox()
        try:
            streams = self.engine.submit(list(completion.specs), inbox)
        except QueueFull:
            raise ApiError(
                429, "the server is busy: every batch slot and queue place is taken; retry later",
                kind="rate_limit_error", code="queue_full",
            ) from None  # fmt: skip
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", kind="server_error") from None
        chunks = self._events if completion.stream else self._whole
        close = lambda: self.engine.withdraw(streams)  # noqa: E731
        return Watched(chunks(completion, streams, inbox, rid), close, completion.stream)

    def _head(self, rid: str) -> dict[str, Any]:
        return {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": self.settings.name}  # fmt: skip

    def _usage(self, completion: Completion, produced: int) -> dict[str, int]:
        prompt = sum(len(p) for p in completion.prompts) * completion.n
        return {"prompt_tokens": prompt, "completion_tokens": produced,
                "total_tokens": prompt + produced}  # fmt: skip

    async def _events(
        self, completion: Completion, streams: list[Stream], inbox: Inbox, rid: str
    ) -> AsyncIterator[bytes]:
        """Server-sent events: one chunk per stream with what it produced since the last."""
        offsets = [0] * len(streams)
        if completion.echo:
            for s in streams:
                prompt = completion.prompts[s.index // completion.n]
                offsets[s.index] = len(prompt)
                yield sse({**self._head(rid), "choices": [self._choice(s.index, prompt)]})
        wants = completion.specs[0].logprobs is not None
        sent: set[int] = set()
        produced = 0
        while len(sent) < len(streams):
            for s in await inbox.wait():
                piece = s.take()
                if s.index in sent or not (piece.text or s.done):
                    continue
                lps = piece.logprobs if wants else None
                choice = self._choice(s.index, piece.text, s.finish_reason, lps, offsets[s.index])
                offsets[s.index] += len(piece.text)
                produced += len(piece.text)
                yield sse({**self._head(rid), "choices": [choice]})
                if s.done:
                    sent.add(s.index)
        if completion.include_usage:
            usage = self._usage(completion, produced)
            yield sse({**self._head(rid), "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    async def _whole(
        self, completion: Completion, streams: list[Stream], inbox: Inbox, rid: str
    ) -> AsyncIterator[bytes]:
        """One JSON body once every stream has finished."""
        pieces = [Piece() for _ in streams]
        while not all(s.done for s in streams):
            for s in await inbox.wait():
                got = s.take()
                pieces[s.index].text += got.text
                pieces[s.index].logprobs += got.logprobs
        for s in streams:  # what came with the last notice
            got = s.take()
            pieces[s.index].text += got.text
            pieces[s.index].logprobs += got.logprobs
        choices = []
        for s, piece in zip(streams, pieces, strict=True):
            prompt = completion.prompts[s.index // completion.n] if completion.echo else ""
            piece.text = prompt + piece.text
            lps = piece.logprobs if completion.specs[0].logprobs is not None else None
            choices.append(self._choice(s.index, piece.text, s.finish_reason, lps, len(prompt)))
        produced = sum(len(p.text) for p in pieces)
        yield json.dumps({**self._head(rid), "choices": choices,
                          "usage": self._usage(completion, produced)}).encode()  # fmt: skip

    def _choice(
        self,
        index: int,
        text: str,
        finish: str | None = None,
        logprobs: list[tuple[str, float, dict[str, float]]] | None = None,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One choice; `logprobs` None when the request did not ask for them."""
        block = None if logprobs is None else logprobs_block(logprobs, offset)
        return {"text": text, "index": index, "logprobs": block, "finish_reason": finish}

    async def _beam(self, completion: Completion, rid: str) -> AsyncIterator[bytes]:
        """Beam search runs whole, one request at a time, off the event loop; its texts come as
        one body (or one event per choice)."""
        from charlm.sample import beam_search
        from charlm.sample_options import SampleOptions

        choices = []
        async with self.beam_lock:
            for p, prompt in enumerate(completion.prompts):
                spec = completion.specs[p * completion.n]
                options = SampleOptions(length=spec.max_chars, beam=completion.beam,
                                        num_samples=completion.n, stops=spec.stops,
                                        unknown=self.settings.limits.unknown)  # fmt: skip
                engine = self.engine
                found = await asyncio.to_thread(
                    beam_search, engine.model, engine.vocab, prompt, options
                )
                for j, one in enumerate(found):
                    text = one.text[: len(one.text) - len(one.stop)] if one.stop else one.text
                    text = (prompt if completion.echo else "") + text
                    finish = "stop" if one.stop else "length"
                    choices.append(self._choice(p * completion.n + j, text, finish))
        if completion.stream:
            for choice in choices:
                yield sse({**self._head(rid), "choices": [choice]})
            yield b"data: [DONE]\n\n"
            return
        produced = sum(len(c["text"]) for c in choices)
        yield json.dumps({**self._head(rid), "choices": choices,
                          "usage": self._usage(completion, produced)}).encode()  # fmt: skip


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON, refused with 413 past `limit` bytes (before reading it, when the
    client says its size)."""
    too_big = ApiError(413, f"the body is larger than {limit} bytes (--max-body)")
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None


def make_app(engine: Engine, settings: ServeSettings) -> Starlette:
    """The app; its lifespan runs the engine's loop."""
    api = Api(engine, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        try:
            yield
        finally:
            engine.stop()
            await task

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: "
                                       f"{exc.detail}", kind=kind))  # fmt: skip

    routes = [
        Route("/", api.playground, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
    ]
    handlers = {ApiError: api_error, HTTPException: http_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
