"""Generate text one character at a time with the hidden state carried.

Each new character costs one recurrent step, whatever the length so far: the prefix is never
re-run. Randomness comes only from an explicit, seeded `torch.Generator` on the CPU, so the same
seed gives the same text on any device. Temperature 0 means greedy (argmax).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charlm.errors import CharlmError
from charlm.model import CharLM
from charlm.vocab import Vocab


def check_options(
    length: int, temperature: float, top_k: int | None, top_p: float | None, num_samples: int = 1
) -> None:
    """Reject decoding options that make no sense, naming the option."""
    if length < 1:
        raise CharlmError(f"--length {length}: expected a positive number of characters")
    if not temperature >= 0:
        raise CharlmError(f"--temperature {temperature}: expected a number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise CharlmError(f"--top-k {top_k}: expected a whole number >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise CharlmError(f"--top-p {top_p}: expected a number in (0, 1]")
    if num_samples < 1:
        raise CharlmError(f"--num-samples {num_samples}: expected a whole number >= 1")


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


def generate_batch(
    model: CharLM,
    vocab: Vocab,
    prime: str = "",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    unknown: str = "error",
) -> Iterator[tuple[str, ...]]:
    """Yield one new character per sample per step, `length` times.

    Options and the prime are checked here, before the first character is asked for, so a caller
    can report a bad prime before printing anything.
    """
    check_options(length, temperature, top_k, top_p, num_samples)
    prime_ids = encode_prime(vocab, prime, unknown)
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))
    return _decode(model, vocab, prime_ids, length, temperature, top_k, top_p, gen, num_samples)


@torch.inference_mode()
def _decode(
    model: CharLM,
    vocab: Vocab,
    prime_ids: list[int],
    length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    gen: torch.Generator,
    num_samples: int,
) -> Iterator[tuple[str, ...]]:
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor(prime_ids, device=device)
    logits, state = model(ids.expand(num_samples, -1), None)
    last = logits[:, -1].float().cpu()
    for i in range(length):
        if temperature == 0:
            ids = last.argmax(dim=-1)
        else:
            probs = torch.softmax(filter_logits(last / temperature, top_k, top_p), dim=-1)
            ids = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        yield tuple(vocab.chars[i] for i in ids.tolist())
        if i == length - 1:
            break
        logits, state = model(ids.to(device).unsqueeze(1), state)
        last = logits[:, -1].float().cpu()


def generate(
    model: CharLM,
    vocab: Vocab,
    prime: str = "",
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[str]:
    """Yield the characters of one sample as they are produced (the prime is not repeated)."""
    for chars in generate_batch(model, vocab, prime, length, temperature, top_k, top_p, seed, 1):
        yield chars[0]
