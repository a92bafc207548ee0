"""Generate text one character at a time with the hidden state carried.

Each new character costs one recurrent step, whatever the length so far: the prefix is never
re-run, and the steps go through the fast steppers in `charlm.stepper`. Temperature 0 means greedy
(argmax).

Sampling draws with the Gumbel-max trick: the next id is argmax(logits / T + g) with
g = -log(-log U), U ~ Uniform(0, 1), which picks id i with probability softmax(logits / T)_i
exactly, without a softmax or `torch.multinomial` per step. The noise comes from seeded CPU
generators in chunks of `NOISE_CHUNK` steps, one generator per sample seeded `seed + i`, so
sample i of a batch is the sample `seed + i` would give alone, and the noise does not depend on
the device.

`beam_search` finds the likeliest continuation instead of a random one (see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.model import CharLM
from charlm.precision import wide_float
from charlm.sample_options import SampleOptions
from charlm.stepper import make_stepper
from charlm.vocab import Vocab


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest top-p nucleus."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each entry
        drop_sorted = before >= top_p  # the first entry always has 0 before it: never dropped
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def encode_prime(vocab: Vocab, prime: str, unknown: str = "error") -> list[int]:
    """Ids of the prime (unseen characters follow the `unknown` policy of `Vocab.encode`).

    An empty prime, or one whose every character was skipped, starts from a newline (or the
    first symbol).
    """
    try:
        ids = [int(i) for i in vocab.encode(prime, unknown)]
    except CharlmError as e:
        raise CharlmError(f"--prime: {e}") from None
    return ids or [vocab.chars.index("\n") if "\n" in vocab else 0]


@dataclass(frozen=True)
class Sample:
    """One finished continuation (the prime is not part of `text`).

    `logprob` is the natural-log likelihood of `text` after the prime under the model's own,
    unmodified distribution (temperature 1, no top-k/top-p), whatever options produced it.
    """

    prime: str
    text: str
    logprob: float
    stop: str | None = None

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def logprob_per_char(self) -> float:
        return self.logprob / len(self.text) if self.text else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "prime": self.prime,
            "text": self.text,
            "chars": self.chars,
            "logprob": self.logprob,
            "logprob_per_char": self.logprob_per_char,
            "stop": self.stop,
        }


NOISE_CHUNK = 32  # steps of Gumbel noise drawn per generator call; fixed, so seeds reproduce


class Decoding:
    """Iterate to get one tuple of new characters (one per sample) per step.

    A sample that produced a stop string gives "" from then on; iteration ends when every sample
    has stopped or after `length` steps. With `score`, `samples()` afterwards has the finished
    texts with their log-likelihoods (a log-softmax per step; without `score` nor stop strings no
    texts are kept, so plain streaming does no bookkeeping).
    """

    def __init__(
        self,
        model: nn.Module,
        vocab: Vocab,
        prime: str,
        options: SampleOptions,
        score: bool = False,
    ) -> None:
        if options.beam is not None:
            raise ValueError("options.beam is set: beam_search decodes those options")
        self.options = options
        self.prime = prime
        self.prime_ids = encode_prime(vocab, prime, options.unknown)
        self.model = model
        self.vocab = vocab
        base = options.seed if options.seed is not None else int(torch.seed() % (2**63))
        self.seeds = [(base + i) % 2**64 for i in range(options.num_samples)]
        self.stop = options.stops
        self.score = score
        self.texts: list[list[str]] = [[] for _ in range(options.num_samples)]
        self.logprobs = [0.0] * options.num_samples
        self.stopped: list[str | None] = [None] * options.num_samples

    def samples(self) -> list[Sample]:
        return [
            Sample(self.prime, "".join(t), lp, s)
            for t, lp, s in zip(self.texts, self.logprobs, self.stopped, strict=True)
        ]

    @torch.inference_mode()
    def __iter__(self) -> Iterator[tuple[str, ...]]:
        model, options = self.model, self.options
        model.eval()
        device = next(model.parameters()).device
        stepper = make_stepper(model, precision=options.precision, batch=len(self.seeds))
        n = len(self.seeds)
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        temperature = 1.0 if options.temperature is None else options.temperature
        inv_t = 1.0 / temperature if temperature > 0 else 0.0
        filtered = options.top_k is not None or options.top_p is not None
        # On a GPU every .tolist() waits for the device, so ids are fetched in chunks there.
        fetch_every = 1 if device.type == "cpu" else 16
        prime = torch.tensor(self.prime_ids, device=device).expand(n, -1)
        logits, state = stepper.start(prime)
        noise: list[torch.Tensor] = []
        pending: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        # Plain streaming (no stops, no scores, on the CPU) needs none of the bookkeeping.
        lean = fetch_every == 1 and not self.stop and not self.score
        chars = self.vocab.chars
        last = options.length - 1
        for t in range(options.length):
            x = logits.float()
            if inv_t == 0.0:
                ids = x.argmax(-1)
            else:
                k = t % NOISE_CHUNK
                if k == 0:
                    noise = _gumbel(gens, x.shape[-1], device)
                z = x if inv_t == 1.0 else x * inv_t
                if filtered:
                    z = filter_logits(z, options.top_k, options.top_p)
                ids = torch.add(z, noise[k]).argmax(-1)
            if lean:
                yield tuple([chars[i] for i in ids.tolist()])
            else:
                lp = torch.log_softmax(x, -1).gather(1, ids.unsqueeze(1)) if self.score else None
                pending.append((ids, lp))
                if len(pending) == fetch_every or t == last:
                    for row in self._accept(pending):
                        yield row
                        if None not in self.stopped:
                            return
                    pending = []
            if t < last:
                logits, state = stepper.step(ids, state)

    def _accept(
        self, pending: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> list[tuple[str, ...]]:
        """Turn fetched ids into characters, keeping texts, log-likelihoods and stops."""
        chars = self.vocab.chars
        if len(pending) == 1:
            rows = [pending[0][0].tolist()]
            lps = [pending[0][1].view(-1).tolist()] if self.score else None
        else:
            rows = torch.stack([ids for ids, _ in pending]).tolist()
            lps = torch.stack([lp.view(-1) for _, lp in pending]).tolist() if self.score else None
        longest = max((len(s) for s in self.stop), default=0)
        accepted = []
        for r, row in enumerate(rows):
            out = []
            for b, i in enumerate(row):
                if self.stopped[b] is not None:
                    out.append("")
                    continue
                char = chars[i]
                out.append(char)
                text = self.texts[b]
                text.append(char)
                if lps is not None:
                    self.logprobs[b] += lps[r][b]
                if longest:
                    tail = "".join(text[-longest:])
                    self.stopped[b] = next((s for s in self.stop if tail.endswith(s)), None)
            accepted.append(tuple(out))
            if None not in self.stopped:
                break
        return accepted


def _gumbel(
    gens: list[torch.Generator], vocab_size: int, device: torch.device
) -> list[torch.Tensor]:
    """NOISE_CHUNK steps of Gumbel noise [samples, vocab], one seeded generator per sample.

    Uniform draws and two logs over the whole chunk, rather than `exponential_` per generator:
    at batch 32 that took a chunk from 1.9 to 0.5 ms, about 45 us off every step."""
    draws = [torch.rand(NOISE_CHUNK, vocab_size, generator=g) for g in gens]
    # U can be exactly 0; clamping keeps the noise finite (-log(-log U) lies in about [-4.5,
    # 16.6]), so a -inf logit stays -inf and a kept one can never be outranked by it.
    u = torch.stack(draws, 1).clamp_min_(torch.finfo(torch.float32).tiny)
    return list(u.log_().neg_().log_().neg_().to(device).unbind(0))


def gumbel_noise(generator: torch.Generator, vocab_size: int) -> list[torch.Tensor]:
    """One sample's next NOISE_CHUNK steps of noise, each [1, vocab], drawn as `Decoding` draws
    them for a sample alone, so a decoder that steps each sample on its own schedule (the
    server's continuous batching) gives the seed's text."""
    return _gumbel([generator], vocab_size, torch.device("cpu"))


def generate_batch(
    model: CharLM, vocab: Vocab, prime: str = "", options: SampleOptions = SampleOptions()
) -> Iterator[tuple[str, ...]]:
    """Yield one new character per sample per step, at most `options.length` times.

    The prime is encoded here, before the first character is asked for, so a caller can report a
    bad prime before printing anything. A sample stops after producing any string in
    `options.stops` (the stop string is part of its text) and gives "" afterwards.
    """
    return iter(Decoding(model, vocab, prime, options))


def sample_batch(
    model: CharLM, vocab: Vocab, prime: str = "", options: SampleOptions = SampleOptions()
) -> list[Sample]:
    """The same samples `generate_batch` gives, finished, with their log-likelihoods."""
    decoding = Decoding(model, vocab, prime, options, score=True)
    for _ in decoding:
        pass
    return decoding.samples()


def generate(
    model: CharLM, vocab: Vocab, prime: str = "", options: SampleOptions = SampleOptions()
) -> Iterator[str]:
    """Yield the characters of one sample as they are produced (the prime is not repeated)."""
    if options.num_samples != 1:
        raise ValueError("generate draws one sample; generate_batch draws options.num_samples")
    for (char,) in generate_batch(model, vocab, prime, options):
        yield char


@torch.inference_mode()
def beam_search(model: CharLM, vocab: Vocab, prime: str, options: SampleOptions) -> list[Sample]:
    """The `options.num_samples` likeliest continuations found by a beam of width
    `options.beam`, best first.

    Each step extends every live hypothesis by every character and keeps the `beam` highest by
    total log-likelihood (natural log, the model's unmodified distribution). A hypothesis that ends
    in a stop string is finished and leaves the beam (which narrows); the search ends after
    `length` characters or when no hypothesis is live. Finished hypotheses can be shorter than
    the rest, so all are ranked by log-likelihood per character (the length-normalised score);
    without stop strings every hypothesis has `length` characters and this is the same ranking
    as the total. With `beam=1` this is greedy decoding. Deterministic: no randomness is used.
    """
    if options.beam is None:
        raise ValueError("beam_search needs options.beam, the beam width")
    beam, stops = options.beam, options.stops
    prime_ids = encode_prime(vocab, prime, options.unknown)
    longest = max((len(s) for s in stops), default=0)
    model.eval()
    device = next(model.parameters()).device
    stepper = make_stepper(model, precision=options.precision, batch=beam)
    logits, state = stepper.start(torch.tensor([prime_ids], device=device))
    scores = torch.zeros(1, dtype=wide_float(device), device=device)
    if not stops:  # nothing to check per step: the beam stays on the device, no wait a step
        return _beam_to_the_end(stepper, logits, state, scores, beam, options.length, vocab, prime)[
            : options.num_samples
        ]
    live: list[list[int]] = [[]]
    done: list[tuple[list[int], float, str | None]] = []
    for _ in range(options.length):
        logp = torch.log_softmax(logits.to(scores.dtype), -1)
        vocab_size = logp.shape[-1]
        top, index = (scores.unsqueeze(1) + logp).view(-1).topk(min(beam, logp.numel()))
        keep: list[int] = []
        kept: list[list[int]] = []
        for j, (flat, total) in enumerate(zip(index.tolist(), top.tolist(), strict=True)):
            seq = [*live[flat // vocab_size], flat % vocab_size]
            tail = vocab.decode(seq[-longest:]) if longest else ""
            hit = next((s for s in stops if tail.endswith(s)), None)
            if hit is not None:
                done.append((seq, total, hit))
            else:
                keep.append(j)
                kept.append(seq)
        live = kept
        if not keep:
            break
        pick = torch.tensor(keep, device=device)
        scores = top[pick]
        state = stepper.reorder(state, torch.div(index[pick], vocab_size, rounding_mode="floor"))
        logits, state = stepper.step(index[pick] % vocab_size, state)
    else:
        done += [(seq, total, None) for seq, total in zip(live, scores.tolist(), strict=True)]
    done.sort(key=lambda h: h[1] / len(h[0]), reverse=True)
    return [
        Sample(prime, vocab.decode(seq), total, hit)
        for seq, total, hit in done[: options.num_samples]
    ]


def _beam_to_the_end(
    stepper: Any,
    logits: torch.Tensor,
    state: Any,
    scores: torch.Tensor,
    beam: int,
    length: int,
    vocab: Vocab,
    prime: str,
) -> list[Sample]:
    """Beam search without stop strings: every hypothesis runs `length` steps, so each step's
    picks stay on the device as back-pointers, read once at the end (one host sync, not two a
    step). The same hypotheses, in the same order, as the stepwise search."""
    parents, chars = [], []
    for _ in range(length):
        logp = torch.log_softmax(logits.to(scores.dtype), -1)
        vocab_size = logp.shape[-1]
        scores, index = (scores.unsqueeze(1) + logp).view(-1).topk(min(beam, logp.numel()))
        parent = torch.div(index, vocab_size, rounding_mode="floor")
        parents.append(parent)
        chars.append(index % vocab_size)
        state = stepper.reorder(state, parent)
        logits, state = stepper.step(chars[-1], state)
    back, ids = torch.stack(parents).tolist(), torch.stack(chars).tolist()
    found = []
    for row, total in enumerate(scores.tolist()):
        seq = []
        for t in range(length - 1, -1, -1):
            seq.append(ids[t][row])
            row = back[t][row]
        found.append(Sample(prime, vocab.decode(seq[::-1]), total, None))
    return found


def decode(
    model: CharLM, vocab: Vocab, prime: str, options: SampleOptions, scored: bool = False
) -> list[Sample] | Iterator[tuple[str, ...]]:
    """Run the decoder the options call for.

    Beam search when `options.beam` is set; else sampling: the finished samples with their
    log-likelihoods when `scored`, else `generate_batch`'s rows of new characters, which keep no
    bookkeeping, so a single stream can be shown as it comes. The prime is encoded before this
    returns either way.
    """
    if options.beam is not None:
        return beam_search(model, vocab, prime, options)
    if scored:
        return sample_batch(model, vocab, prime, options)
    return generate_batch(model, vocab, prime, options)
