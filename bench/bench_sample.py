"""Sampling speed: charlm's sampler against a plain PyTorch loop, in characters per second.

The plain loop is what one writes first: embedding -> nn.LSTM/GRU -> linear -> softmax ->
torch.multinomial, one model call per character with the hidden state carried. charlm's figure is
the public API (`generate` at batch 1, `generate_batch` above), characters included. Weights are
random: speed does not depend on training. Each figure is the median of --repeats runs, and the
four (plain, charlm, charlm with bf16 products, charlm with int8 weights) are measured in turn so
background load hits all alike. (What bf16 and int8 cost a trained model in loss:
`charlm eval RUN --precision P`.) The last column is what `--precision auto` picked, once per
repeat, beside the runs: whether its half-second timing finds the precision the full runs call
fastest (or fp32 where none is 1.1x faster).

Threads are what `charlm sample` uses, for both loops alike: one at batch 1 (a single stream's
products are too small to split), all of torch's at larger batches; --threads N fixes N for all.

    python bench/bench_sample.py [CORPUS] [--chars 2000] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import DEFAULT_CORPUS, read_corpus  # noqa: E402

from charlm.config import ModelConfig  # noqa: E402 (after the path line, to bench this checkout)
from charlm.model import CharLM  # noqa: E402
from charlm.precision import SAMPLE_PRECISIONS as PRECISIONS  # noqa: E402
from charlm.sample import generate_batch  # noqa: E402
from charlm.sample_options import SampleOptions  # noqa: E402
from charlm.stepper import auto_precision  # noqa: E402 (charlm sample --precision)
from charlm.vocab import Vocab  # noqa: E402

CASES = [  # (cell, layers, hidden, batch)
    ("lstm", 2, 256, 1),
    ("lstm", 2, 256, 32),
    ("lstm", 2, 512, 1),
    ("gru", 2, 256, 1),
    ("gru", 2, 256, 32),
]


@torch.inference_mode()
def plain_loop(model: CharLM, vocab: Vocab, batch: int, chars: int) -> float:
    """Characters per second (all streams) of the straightforward one-call-per-step loop."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.zeros(batch, 1, dtype=torch.long)
    state = None
    start = time.perf_counter()
    for _ in range(chars):
        logits, state = model(ids, state)
        probs = torch.softmax(logits[:, -1], dim=-1)
        ids = torch.multinomial(probs, 1, generator=gen)
        "".join(vocab.chars[i] for i in ids.view(-1).tolist())
    return batch * chars / (time.perf_counter() - start)


def charlm_sampler(
    model: CharLM, vocab: Vocab, batch: int, chars: int, precision: str = "fp32"
) -> float:
    """Characters per second (all streams) of charlm's sampler, characters as they come."""
    start = time.perf_counter()
    for _ in generate_batch(
        model,
        vocab,
        "",
        SampleOptions(length=chars, seed=0, num_samples=batch, precision=precision),
    ):
        pass
    return batch * chars / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "corpus",
        nargs="?",
        type=Path,
        default=DEFAULT_CORPUS,
        help="Text whose characters make the vocabulary (default: tinyshakespeare).",
    )
    parser.add_argument("--chars", type=int, default=2000, help="Characters per stream per run.")
    parser.add_argument("--repeats", type=int, default=5, help="Runs per figure (median shown).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads.")
    args = parser.parse_args()
    all_threads = torch.get_num_threads()
    vocab = Vocab.from_text(read_corpus(args.corpus))
    print(
        f"vocab {len(vocab)}, embedding 64, {args.chars} chars per stream, median of "
        f"{args.repeats}, torch {torch.__version__}\n"
    )
    print(
        "| cell | layers x hidden | batch | threads | plain loop chars/s | "
        + " | ".join(f"charlm {q} chars/s (x plain)" for q in PRECISIONS)
        + " | auto picked |"
    )
    print(
        "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in PRECISIONS) + " | --- |"
    )
    for cell, layers, hidden, batch in CASES:
        threads = args.threads or (1 if batch == 1 else all_threads)
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        config = ModelConfig(cell=cell, embedding_dim=64, hidden_size=hidden, num_layers=layers)
        model = CharLM(config, len(vocab)).eval()
        plain_loop(model, vocab, batch, 50)  # warm-up
        for precision in PRECISIONS:
            charlm_sampler(model, vocab, batch, 50, precision)
        plain: list[float] = []
        ours: dict[str, list[float]] = {precision: [] for precision in PRECISIONS}
        picks: list[str] = []
        for _ in range(args.repeats):
            plain.append(plain_loop(model, vocab, batch, args.chars))
            for precision in PRECISIONS:
                ours[precision].append(charlm_sampler(model, vocab, batch, args.chars, precision))
            picks.append(auto_precision(model, batch)[0])
        p = statistics.median(plain)
        cells = " | ".join(
            f"{statistics.median(ours[q]):,.0f} ({statistics.median(ours[q]) / p:.1f}x)"
            for q in PRECISIONS
        )
        picked = ", ".join(f"{q} {picks.count(q)}" for q in PRECISIONS if q in picks)
        print(
            f"| {cell} | {layers} x {hidden} | {batch} | {threads} | {p:,.0f} | {cells} "
            f"| {picked} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
