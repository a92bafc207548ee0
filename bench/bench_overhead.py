"""Does charlm's trainer cost anything over a minimal PyTorch loop at the same model and batch?

Both sides train the same model (embedding -> nn.LSTM/nn.GRU -> linear) on the same corpus with
contiguous streams and the state carried, AdamW (its fused kernel on both sides), clipping. The
minimal loop does nothing else; charlm runs its whole `train()` (logging, interval evals,
checkpoints, divergence guard). Two charlm figures are given: chars/s over the whole clock
(interval evals included, the final evaluation not), and chars/s outside the interval evals
(`TrainResult.step_chars_per_s`), which is the loop's own speed; the evals' share of the clock is
shown beside them, since the issue bounds it separately (about 5%). Each round runs both, and the
order flips from round to round (minimal first, then charlm first, ...), so a machine whose speed
drifts within a round favours neither side over the rounds; the table gives each round, the
median ratios and the pooled ratio (all characters over all seconds of each side). Both
run with the allocator setting charlm's trainer makes for its process
(`charlm.cpu.memory.keep_freed_memory`, made here first), so the ratio is the loop's own cost.

With --interleave N the two steps instead run in one process, alternating in chunks of --chunk
steps for N rounds: charlm's batcher and `Trainer.train_step` (everything a step does, without the
run's logging, evals and checkpoints) against the minimal step. Whole runs tens of seconds apart
see a machine whose speed drifts by more than the 3% in question; chunks a second apart do not.

    python bench/bench_overhead.py [CORPUS] [--steps 300] [--rounds 3] [--cell lstm]
    python bench/bench_overhead.py [CORPUS] --interleave 40 [--chunk 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import DEFAULT_CORPUS, read_corpus
from torch import nn

from charlm.config import Config, load_config
from charlm.cpu.memory import keep_freed_memory
from charlm.training import Trainer, train
from charlm.vocab import Vocab


def minimal_loop(text: str, cell: str, steps: int, batch: int, seq: int, seed: int) -> float:
    """The plainest correct loop: returns training characters per second."""
    step = minimal_step(text, cell, batch, seq, seed)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq / (time.perf_counter() - start)


def minimal_step(text: str, cell: str, batch: int, seq: int, seed: int) -> Callable[[], None]:
    """One step of the plainest correct loop per call (its model, optimizer and state inside)."""
    torch.manual_seed(seed)
    vocab = Vocab.from_text(text)
    ids = torch.from_numpy(vocab.encode(text).astype(np.int64))
    train_ids = ids[: int(len(ids) * 0.9)]
    stream_len = len(train_ids) // batch
    streams = train_ids[: batch * stream_len].view(batch, stream_len)
    emb = nn.Embedding(len(vocab), 64)
    rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(64, 256, 2, batch_first=True)
    head = nn.Linear(256, len(vocab))
    params = [*emb.parameters(), *rnn.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=(0.9, 0.99), weight_decay=0.0, fused=True)
    state: Any = None
    count = 0

    def step() -> None:
        nonlocal state, count
        p = (count * seq) % (stream_len - seq - 1)
        count += 1
        x, y = streams[:, p : p + seq], streams[:, p + 1 : p + seq + 1]
        out, state = rnn(emb(x), state)
        state = tuple(s.detach() for s in state) if cell == "lstm" else state.detach()
        loss = F.cross_entropy(head(out).reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def bench_config(corpus: Path, cell: str, batch: int, seq: int, seed: int, *extra: str) -> Config:
    """charlm's defaults (the minimal loop's model) at this cell, batch and sequence length."""
    return load_config(
        None,
        [
            f"data.corpus={corpus}",
            f"model.cell={cell}",
            f"train.batch_size={batch}",
            f"train.seq_len={seq}",
            f"train.seed={seed}",
            "train.device=cpu",
            *extra,
        ],
    )


def charlm_step(corpus: Path, cell: str, batch: int, seq: int, seed: int) -> Callable[[], None]:
    """One step of charlm's trainer per call: `Trainer.train_step` (learning rate, batch, state
    reset, forward, backward, clipping, divergence check and AdamW update), without the run
    around it."""
    trainer = Trainer(
        bench_config(corpus, cell, batch, seq, seed), Path(tempfile.mkdtemp()) / "run"
    )

    def step() -> None:
        trainer.train_step()

    return step


def interleaved(args: argparse.Namespace, text: str) -> None:
    """Both steps in one process, alternating in chunks of --chunk steps (ABBA order), so both
    see the same machine from second to second; the table gives median and fastest chunks."""
    sides = {
        "minimal": minimal_step(text, args.cell, args.batch, args.seq, 0),
        "charlm": charlm_step(args.corpus, args.cell, args.batch, args.seq, 0),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.interleave + 2):  # the first two rounds warm up and are dropped
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            start = time.perf_counter()
            for _ in range(args.chunk):
                sides[name]()
            if r >= 2:
                times[name].append((time.perf_counter() - start) / args.chunk)
    chars = args.batch * args.seq
    print("| side | median chars/s | fastest chunk chars/s | chunks |")
    print("| --- | ---: | ---: | ---: |")
    for name, spans in times.items():
        print(
            f"| {name} | {chars / statistics.median(spans):,.0f} | {chars / min(spans):,.0f} "
            f"| {len(spans)} x {args.chunk} steps |"
        )
    paired = [m / c for m, c in zip(times["minimal"], times["charlm"], strict=True)]
    print(
        f"\ncharlm / minimal: median of paired chunks {statistics.median(paired):.3f}, "
        f"fastest chunks {min(times['minimal']) / min(times['charlm']):.3f}, all time "
        f"{sum(times['minimal']) / sum(times['charlm']):.3f}"
    )


def charlm_run(
    corpus: Path, cell: str, steps: int, batch: int, seq: int, seed: int
) -> tuple[float, float, float]:
    """-> (chars/s over the whole clock, chars/s outside interval evals, evals' share)."""
    config = bench_config(
        corpus,
        cell,
        batch,
        seq,
        seed,
        f"train.max_steps={steps}",
        "train.eval_interval=200",
        "train.eval_chars=100000",
        "train.checkpoint_interval=500",
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train(config, Path(tmp) / "run")
    return result.chars_per_s, result.step_chars_per_s, result.eval_s / result.elapsed_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--cell", choices=["lstm", "gru"], default="lstm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        help="instead of whole runs: this many rounds of --chunk steps a side, in one process",
    )
    parser.add_argument("--chunk", type=int, default=10)
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = read_corpus(args.corpus)
    if args.interleave:
        interleaved(args, text)
        print(
            f"\n{args.cell} 2x256, batch {args.batch}, seq {args.seq}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        return
    rows = []
    for r in range(args.rounds):
        if r % 2 == 0:
            plain = minimal_loop(text, args.cell, args.steps, args.batch, args.seq, r)
            ours = charlm_run(args.corpus, args.cell, args.steps, args.batch, args.seq, r)
        else:
            ours = charlm_run(args.corpus, args.cell, args.steps, args.batch, args.seq, r)
            plain = minimal_loop(text, args.cell, args.steps, args.batch, args.seq, r)
        rows.append((plain, ours))
    print(
        "| round | minimal loop chars/s | charlm chars/s, all | ratio | evals' share "
        "| charlm chars/s outside evals | ratio |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i, (plain, (ours, steps, share)) in enumerate(rows, 1):
        print(
            f"| {i} | {plain:,.0f} | {ours:,.0f} | {ours / plain:.3f} | {share:.1%} "
            f"| {steps:,.0f} | {steps / plain:.3f} |"
        )
    ratio = statistics.median(o[0] / p for p, o in rows)
    share = statistics.median(o[2] for _, o in rows)
    steps_ratio = statistics.median(o[1] / p for p, o in rows)
    print(f"| median | | | **{ratio:.3f}** | {share:.1%} | | **{steps_ratio:.3f}** |")
    # Every run trains the same characters, so the pooled rate is the harmonic mean of rates.
    pooled = statistics.harmonic_mean([o[0] for _, o in rows])
    pooled_steps = statistics.harmonic_mean([o[1] for _, o in rows])
    plain_pooled = statistics.harmonic_mean([p for p, _ in rows])
    print(
        f"| pooled | {plain_pooled:,.0f} | {pooled:,.0f} | **{pooled / plain_pooled:.3f}** | "
        f"| {pooled_steps:,.0f} | **{pooled_steps / plain_pooled:.3f}** |"
    )
    print(
        f"\n{args.cell} 2x256, batch {args.batch}, seq {args.seq}, {args.steps} steps per side, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
