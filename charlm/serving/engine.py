"""Continuous batching: every active stream advances in one batched recurrent step.

A recurrent model's whole context is its state, a few KB per stream, so concurrent requests can
share one step at almost no cost: the step of 32 streams is a [32, hidden] product where one
stream's is a [1, hidden] one. The engine keeps the active streams' states side by side; a new
stream runs its prompt (`Stepper.start`) and joins at the next step (`Stepper.join`), and a
finished or cancelled one leaves (`Stepper.reorder`). Streams past `max_batch` wait in a queue
of `max_queue`; past that, `submit` refuses with `QueueFull`.

Each stream draws its own seeded Gumbel noise on its own schedule (`charlm.sample.gumbel_noise`),
and temperature, top-k and top-p apply row by row, so a stream's text is the text `charlm sample`
gives for its seed alone, whatever else shares its steps.

The engine runs as one task on the server's event loop, a time slice of steps at a time; the
characters of a slice reach each stream's consumer in one piece, so with many streams the cost of
sending them is paid per slice rather than per character.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from charlm.sample import NOISE_CHUNK, filter_logits, gumbel_noise
from charlm.stepper import Stepper, make_stepper
from charlm.vocab import Vocab

Tensor = torch.Tensor


class QueueFull(Exception):
    """More streams than the batch and the queue hold together."""


class ShuttingDown(Exception):
    """The engine has stopped taking streams."""


@dataclass(frozen=True)
class StreamSpec:
    """What to decode for one stream: a checked request, ids already encoded."""

    prime_ids: tuple[int, ...]
    max_chars: int
    temperature: float = 1.0  # 0 is greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stops: tuple[str, ...] = ()
    logprobs: int | None = None  # this many alternatives per character; None: no logprobs
    deadline: float = math.inf  # time.monotonic() past which the stream is cut


@dataclass
class Piece:
    """Characters a stream produced since its consumer last looked, with their logprobs."""

    text: str = ""
    logprobs: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)


class Inbox:
    """Where the streams of one request say they have something; its consumer waits here."""

    def __init__(self) -> None:
        self.ready: dict[int, Stream] = {}
        self.waiter: asyncio.Future[None] | None = None

    def notify(self, stream: Stream) -> None:
        if id(stream) in self.ready:
            return
        self.ready[id(stream)] = stream
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> list[Stream]:
        """The streams with new characters or a finish, once there is at least one."""
        while not self.ready:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        ready, self.ready = list(self.ready.values()), {}
        return ready


class Stream:
    """One sample being decoded: its options, where it is, and what its consumer has not taken."""

    def __init__(self, spec: StreamSpec, inbox: Inbox, index: int = 0) -> None:
        self.spec = spec
        self.inbox = inbox
        self.index = index  # the choice index in the response
        self.generator = torch.Generator().manual_seed(spec.seed % 2**64)
        self.noise: list[Tensor] = []
        self.t = 0  # characters produced
        self.tail = ""  # the last characters, as long as the longest stop string
        self.held = Piece()  # characters that may start a stop string, not yet released
        self.out = Piece()
        self.finish_reason: str | None = None
        self.cancelled = False
        self.longest = max((len(s) for s in spec.stops), default=0)

    def take(self) -> Piece:
        """The characters produced since the last call."""
        out, self.out = self.out, Piece()
        return out

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        """Leave at the next step (a client went away)."""
        self.cancelled = True

    def noise_row(self, vocab_size: int) -> Tensor:
        k = self.t % NOISE_CHUNK
        if k == 0:
            self.noise = gumbel_noise(self.generator, vocab_size)
        return self.noise[k]

    def accept(self, char: str, logprob: tuple[str, float, dict[str, float]] | None) -> None:
        """Take one character; a stop string ends the stream and is not part of the text."""
        if not self.longest and logprob is None:  # the common case, kept short
            self.t += 1
            self.out.text += char
            self.inbox.notify(self)
            if self.t >= self.spec.max_chars:
                self.finish("length")
            return
        self.t += 1
        held = self.held
        held.text += char
        if logprob is not None:
            held.logprobs.append(logprob)
        if self.longest:
            self.tail = (self.tail + char)[-self.longest :]
            hit = next((s for s in self.spec.stops if self.tail.endswith(s)), None)
            if hit is not None:
                keep = len(held.text) - len(hit)
                self._release(Piece(held.text[:keep], held.logprobs[:keep]))
                self.held = Piece()
                self.finish("stop")
                return
            keep = len(held.text) - _stop_prefix(self.tail, self.spec.stops)
        else:
            keep = len(held.text)
        if keep:
            self._release(Piece(held.text[:keep], held.logprobs[:keep]))
            self.held = Piece(held.text[keep:], held.logprobs[keep:])
        if self.t >= self.spec.max_chars:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if self.done:
            return
        if self.held.text:  # held back for a stop string that never came
            self._release(self.held)
            self.held = Piece()
        self.finish_reason = reason
        self.inbox.notify(self)

    def _release(self, piece: Piece) -> None:
        self.out.text += piece.text
        self.out.logprobs += piece.logprobs
        self.inbox.notify(self)


def _stop_prefix(tail: str, stops: tuple[str, ...]) -> int:
    """The length of the longest end of `tail` that begins some stop string."""
    for n in range(min(len(tail), max(len(s) for s in stops) - 1), 0, -1):
        end = tail[-n:]
        if any(s.startswith(end) for s in stops):
            return n
    return 0


class _Batch:
    """What a step needs to know about the active streams, worked out when they change."""

    def __init__(self, streams: list[Stream], device: torch.device | None = None) -> None:
        specs = [s.spec for s in streams]
        self.sampled = [spec.temperature > 0 for spec in specs]
        inv = [1.0 / spec.temperature if spec.temperature > 0 else 1.0 for spec in specs]
        self.inv = None if all(v == 1.0 for v in inv) else torch.tensor(inv, device=device)[:, None]
        groups: dict[tuple[int | None, float | None], list[int]] = {}
        for i, spec in enumerate(specs):
            if spec.temperature > 0 and (spec.top_k is not None or spec.top_p is not None):
                groups.setdefault((spec.top_k, spec.top_p), []).append(i)
        self.filters = [
            (top_k, top_p, torch.tensor(rows, device=device))
            for (top_k, top_p), rows in groups.items()
        ]
        self.scored = [i for i, spec in enumerate(specs) if spec.logprobs is not None]


class Engine:
    """The batch of active streams, the queue behind it, and the loop that steps them."""

    def __init__(
        self,
        model: Any,
        vocab: Vocab,
        max_batch: int = 64,
        max_queue: int = 256,
        precision: str = "fp32",
        slice_s: float = 0.005,
        slice_per_stream_s: float = 0.001,
    ) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.chars = vocab.chars
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.slice_s = slice_s
        self.slice_per_stream_s = slice_per_stream_s
        self.batch = _Batch([])  # what each step needs to know about the active streams
        self.device = next(model.parameters()).device
        self.stepper: Stepper = make_stepper(model, precision=precision, batch=max_batch)
        self.active: list[Stream] = []
        self.waiting: deque[Stream] = deque()
        self.state: Any = None
        self.logits: Tensor | None = None
        self.steps = 0  # batched steps run
        self.chars_out = 0  # characters produced, all streams
        self.largest_batch = 0
        self.stopping = False
        self._wake: asyncio.Event | None = None

    def stats(self) -> dict[str, int]:
        return {
            "active": len(self.active),
            "waiting": len(self.waiting),
            "steps": self.steps,
            "characters": self.chars_out,
            "largest_batch": self.largest_batch,
        }

    def submit(self, specs: list[StreamSpec], inbox: Inbox) -> list[Stream]:
        """Queue the streams of one request (all or none); they join at the next step."""
        if self.stopping:
            raise ShuttingDown
        held = len(self.active) + len(self.waiting)
        if held + len(specs) > self.max_batch + self.max_queue:
            raise QueueFull
        streams = [Stream(spec, inbox, i) for i, spec in enumerate(specs)]
        self.waiting.extend(streams)
        if self._wake is not None:
            self._wake.set()
        return streams

    def withdraw(self, streams: list[Stream]) -> None:
        """Cancel streams; those still queued leave the queue now, active ones at the next step."""
        for s in streams:
            s.cancel()
        self.waiting = deque(s for s in self.waiting if not s.cancelled)

    def stop(self) -> None:
        """Take no more streams and end every one at the next step (signal-safe with
        `loop.call_soon_threadsafe`)."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Step while there are streams; wait for one otherwise. Ends after `stop`."""
        self._wake = asyncio.Event()
        while True:
            if self.stopping:
                for s in [*self.active, *self.waiting]:
                    s.finish("length")
                self.active, self.waiting, self.state, self.logits = [], deque(), None, None
                return
            if not self.active and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            # A slice grows with the batch: each stream's characters are sent once a slice, so
            # the sending stays a small share of the time however many streams there are.
            span = max(self.slice_s, self.slice_per_stream_s * len(self.active))
            end = time.perf_counter() + span
            with torch.inference_mode():
                while (self.active or self.waiting) and not self.stopping:
                    self.step()
                    if time.perf_counter() >= end:
                        break
            await asyncio.sleep(0)  # let the consumers send what this slice produced

    def step(self) -> None:
        """Admit waiting streams, pick one character for every active stream, step the rest."""
        self._admit()
        if not self.active:
            return
        assert self.logits is not None
        ids = self._pick(self.logits.float())
        self.steps += 1
        self.chars_out += len(self.active)
        self.largest_batch = max(self.largest_batch, len(self.active))
        keep = [i for i, s in enumerate(self.active) if not s.done]
        if len(keep) < len(self.active):
            self._keep(keep)
            ids = ids[keep] if keep else ids[:0]
        if self.active:
            self.logits, self.state = self.stepper.step(ids.to(self.device), self.state)

    def _admit(self) -> None:
        """Drop cancelled or late streams; move queued ones into free slots, prompts run."""
        now = time.monotonic()
        for s in self.active:
            if s.cancelled or now > s.spec.deadline:
                s.finish("length")
        keep = [i for i, s in enumerate(self.active) if not s.done]
        if len(keep) < len(self.active):
            self._keep(keep)
        joining: list[Stream] = []
        while self.waiting and len(self.active) + len(joining) < self.max_batch:
            s = self.waiting.popleft()
            if s.cancelled or now > s.spec.deadline:
                s.finish("length")
            else:
                joining.append(s)
        if not joining:
            return
        groups: dict[tuple[int, ...], list[Stream]] = {}
        for s in joining:  # streams with one prompt (n > 1) run it once, as one batch
            groups.setdefault(s.spec.prime_ids, []).append(s)
        logits = [] if self.logits is None else [self.logits]
        states = [] if self.state is None else [self.state]
        for prime, streams in groups.items():
            ids = torch.tensor([prime], device=self.device).expand(len(streams), -1)
            first, state = self.stepper.start(ids)
            logits.append(first)
            states.append(state)
            self.active += streams
        self.logits = torch.cat(logits) if len(logits) > 1 else logits[0]
        self.state = self.stepper.join(states) if len(states) > 1 else states[0]
        self.batch = _Batch(self.active, self.device)

    def _keep(self, keep: list[int]) -> None:
        self.active = [self.active[i] for i in keep]
        self.batch = _Batch(self.active, self.device)
        if not keep:
            self.state, self.logits = None, None
            return
        index = torch.tensor(keep, device=self.device)
        self.state = self.stepper.reorder(self.state, index)
        assert self.logits is not None
        self.logits = self.logits.index_select(0, index)

    def _pick(self, x: Tensor) -> Tensor:
        """The next id of every active stream, as `charlm.sample.Decoding` picks it alone:
        argmax(filter(logits / T) + Gumbel noise), or argmax(logits) at T = 0."""
        streams, batch = self.active, self.batch
        vocab = x.shape[-1]
        zero = x.new_zeros(1, vocab)
        rows = [s.noise_row(vocab) if sampled else zero
                for s, sampled in zip(streams, batch.sampled, strict=True)]  # fmt: skip
        noise = (torch.cat(rows) if len(rows) > 1 else rows[0]).to(x.device)
        z = x if batch.inv is None else x * batch.inv
        for top_k, top_p, index in batch.filters:
            z = z.index_copy(0, index, filter_logits(z.index_select(0, index), top_k, top_p))
        ids = torch.add(z, noise).argmax(-1)
        picked = ids.tolist()
        chars = self.chars
        if batch.scored:
            lps = self._logprobs(x, picked)
            for i, (s, c) in enumerate(zip(streams, picked, strict=True)):
                s.accept(chars[c], lps.get(i))
        else:
            for s, c in zip(streams, picked, strict=True):
                s.accept(chars[c], None)
        return ids

    def _logprobs(
        self, x: Tensor, picked: list[int]
    ) -> dict[int, tuple[str, float, dict[str, float]]]:
        """For the streams that asked: the picked character's log-probability under the model's
        own distribution, and the `logprobs` likeliest characters with theirs."""
        rows = self.batch.scored
        index = torch.tensor(rows, device=x.device)
        lp = torch.log_softmax(x.index_select(0, index), -1)
        most = max(self.active[i].spec.logprobs or 0 for i in rows)
        top_v, top_i = lp.topk(min(max(most, 1), lp.shape[-1]), -1)
        chosen = lp.gather(1, torch.tensor([[picked[i]] for i in rows], device=x.device))
        found = {}
        for i, vs, ids, c in zip(
            rows, top_v.tolist(), top_i.tolist(), chosen.view(-1).tolist(), strict=True
        ):
            n = self.active[i].spec.logprobs or 0
            top = {self.chars[j]: v for j, v in zip(ids[:n], vs[:n], strict=True)}
            found[i] = (self.chars[picked[i]], c, top)
        return found
