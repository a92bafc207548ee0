"""OpenAI's completions request, read for a character model: fields checked, prompts encoded.

Every mistake is an `ApiError`: a 4xx status and an OpenAI-style error body naming the field, so
clients built for OpenAI's API show it as they would show OpenAI's own. Fields are checked by
hand rather than by a schema library so each message says what was expected in the terms of
this API. A request never names a file or a folder: the server serves the one model it loaded.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from charlm.serving.engine import StreamSpec
from charlm.vocab import Vocab

MAX_STOPS = 4
MAX_STOP_CHARS = 256
MAX_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 256

KNOWN = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n",
    "stream", "stream_options", "logprobs", "echo", "user", "beam", "best_of",
    "frequency_penalty", "presence_penalty",
}  # fmt: skip


class ApiError(Exception):
    """A request the server refuses: its HTTP status and OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind
        self.code = code

    def body(self) -> dict[str, Any]:
        error = {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}
        return {"error": error}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`charlm serve` options)."""

    max_tokens: int = 4096
    max_prompt: int = 4096
    max_body: int = 1 << 20
    max_streams: int = 64  # prompts x n in one request
    timeout_s: float = 120.0
    unknown: str = "error"


@dataclass(frozen=True)
class Completion:
    """A checked completions request: one spec per choice, prompt-major (choice p * n + j)."""

    prompts: tuple[str, ...]
    n: int
    specs: tuple[StreamSpec, ...]
    stream: bool = False
    echo: bool = False
    include_usage: bool = False
    beam: int | None = None


def _bad(param: str, expected: str, value: Any) -> ApiError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ApiError(400, f"{param}: expected {expected}, got {shown}", param)


def _int(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _bad(name, f"a whole number from {low} to {high}", value)
    return value


def _number(
    body: dict[str, Any], name: str, low: float, high: float, open_low: bool
) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        side = "(" if open_low else "["
        raise _bad(name, f"a number in {side}{low:g}, {high:g}]", value)
    return float(value)


def _bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(name, "true or false", value)
    return value


def _strings(body: dict[str, Any], name: str, most: int, longest: int) -> tuple[str, ...]:
    """A string or a list of strings (the `prompt` and `stop` fields)."""
    value = body.get(name)
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise _bad(name, "a string or a list of strings", value)
    if len(items) > most:
        raise ApiError(400, f"{name}: at most {most} strings, got {len(items)}", name)
    for v in items:
        if len(v) > longest:
            raise ApiError(400, f"{name}: at most {longest} characters each, got {len(v)}", name)
    return tuple(items)


def encode(vocab: Vocab, prompt: str, unknown: str) -> tuple[int, ...]:
    """Ids of a prompt under the server's `--unknown` policy; an empty prompt starts from a
    newline (as `charlm sample` does)."""
    if unknown == "error" and vocab.unknown(prompt):
        missing = vocab.unknown(prompt)
        shown = ", ".join(f"{c!r} x{k}" for c, k in missing.most_common(5))
        raise ApiError(
            400,
            f"prompt: {len(missing)} character(s) not in the model's vocabulary: {shown} "
            f"(the server was started with --unknown error)",
            "prompt",
        )
    ids = [int(i) for i in vocab.encode(prompt, "skip" if unknown == "error" else unknown)]
    return tuple(ids or [vocab.chars.index("\n") if "\n" in vocab else 0])


def parse_completion(body: Any, vocab: Vocab, limits: Limits) -> Completion:
    """The request body of `POST /v1/completions` as stream specs, or an `ApiError`."""
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {unknown[0]}", unknown[0])
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise ApiError(400, f"{name}: not supported by a character model; leave it 0", name)
    for name in ("model", "user"):  # read, then ignored: the server has one model
        if not isinstance(body.get(name, ""), str):
            raise _bad(name, "a string", body[name])
    prompts = _strings(body, "prompt", limits.max_streams, limits.max_prompt) or ("",)
    max_tokens = _int(body, "max_tokens", min(DEFAULT_MAX_TOKENS, limits.max_tokens), 1,
                      limits.max_tokens)  # fmt: skip
    n = _int(body, "n", 1, 1, limits.max_streams)
    assert max_tokens is not None and n is not None
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        raise ApiError(400, "best_of: not supported; leave it out (or equal to n)", "best_of")
    if len(prompts) * n > limits.max_streams:
        raise ApiError(
            400, f"n: {len(prompts)} prompt(s) x n={n} is more than {limits.max_streams} "
            "choices, the most one request may ask for", "n",
        )  # fmt: skip
    temperature = _number(body, "temperature", 0.0, 100.0, open_low=False)
    top_p = _number(body, "top_p", 0.0, 1.0, open_low=True)
    top_k = _int(body, "top_k", None, 1, len(vocab))
    beam = _int(body, "beam", None, 1, limits.max_streams)
    logprobs = _int(body, "logprobs", None, 0, min(MAX_LOGPROBS, len(vocab)))
    stops = _strings(body, "stop", MAX_STOPS, MAX_STOP_CHARS)
    if "" in stops:
        raise ApiError(400, "stop: expected non-empty strings", "stop")
    seed = _int(body, "seed", None, -(2**63), 2**64 - 1)
    base = secrets.randbits(63) if seed is None else seed
    stream, echo = _bool(body, "stream"), _bool(body, "echo")
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict) and options.keys() <= {"include_usage"}
    ):
        raise _bad("stream_options", '{"include_usage": true or false}', options)
    include = bool(options and options.get("include_usage"))
    if beam is not None:
        _check_beam(beam, n, temperature, top_p, top_k, logprobs)
    deadline = time.monotonic() + limits.timeout_s
    specs = [
        StreamSpec(
            prime_ids=encode(vocab, prompt, limits.unknown),
            max_chars=max_tokens,
            temperature=1.0 if temperature is None else temperature,
            top_k=top_k,
            top_p=top_p,
            seed=(base + j) % 2**64,
            stops=stops,
            logprobs=logprobs,
            deadline=deadline,
        )
        for prompt in prompts
        for j in range(n)
    ]
    return Completion(tuple(prompts), n, tuple(specs), stream, echo, include, beam)


def _check_beam(
    beam: int,
    n: int,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    logprobs: int | None,
) -> None:
    """Beam search finds the likeliest text and does not sample: sampling fields are refused."""
    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "logprobs": logprobs}
    for name, value in given.items():
        if value is not None:
            raise ApiError(400, f"{name}: beam search does not sample; leave {name} out", name)
    if n > beam:
        raise ApiError(400, f"n: a beam of {beam} keeps at most {beam} texts; got n={n}", "n")
