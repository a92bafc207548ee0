"""charlm's CPU dropout against F.dropout: alone, and inside whole training steps.

The first table times dropout's forward and backward on a [batch, seq, hidden] tensor. The second
trains each preset's model (random batches; embedding, recurrent stack, head, cross-entropy,
clipping, fused AdamW) with charlm's dropout and with F.dropout everywhere it applies (the head's
input and, through nn.LSTM or charlm's GRU layer, between the layers), the two alternating in
chunks of --chunk steps in one process, ABBA, so the machine's drift falls on both. Prints the
median chars/s of each side and the median ratio of paired chunks.

    python bench/bench_dropout.py [--chunks 8] [--chunk 10] [--threads 2] [--cells lstm,gru]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import charlm.cpu.gru  # noqa: E402 (after the path line)
import charlm.model  # noqa: E402
from charlm.config import load_config  # noqa: E402
from charlm.cpu.dropout import dropout  # noqa: E402
from charlm.model import CharLM  # noqa: E402

VOCAB = 65


def torch_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(x, p, training)


def nn_lstm(rnn: torch.nn.LSTM, x: torch.Tensor, state: tuple) -> tuple:
    return rnn(x, state)  # nn.LSTM's own multi-layer call, F.dropout between the layers


LSTM_LAYERS = charlm.model.rnn_layers


def use(charlm_side: bool) -> None:
    """Point the model's dropout (and the LSTM's layer path) at charlm's or at torch's."""
    fn = dropout if charlm_side else torch_dropout
    charlm.model.dropout = fn
    charlm.cpu.gru.dropout = fn
    charlm.model.rnn_layers = LSTM_LAYERS if charlm_side else nn_lstm


def timed(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def dropout_alone(shape: tuple[int, ...], p: float, rounds: int) -> tuple[float, float]:
    """Median microseconds of forward + backward for charlm's dropout and for F.dropout."""
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(shape)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for side in (True, False) if r % 2 == 0 else (False, True):
            fn = dropout if side else torch_dropout
            times[side].append(timed(lambda fn=fn: fn(x, p, True).backward(grad), 20))
    return statistics.median(times[True]) * 1e6, statistics.median(times[False]) * 1e6


def training_steps(preset: Path, chunks: int, chunk: int) -> tuple[float, float, float]:
    """Median chars/s with charlm's dropout, with F.dropout, and the paired-chunk ratio."""
    config = load_config(preset, [])
    t = config.train
    torch.manual_seed(0)
    model = CharLM(config.model, VOCAB)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)
    x = torch.randint(0, VOCAB, (t.batch_size, t.seq_len))
    y = torch.randint(0, VOCAB, (t.batch_size, t.seq_len))
    state = model.init_state(t.batch_size)

    def step() -> None:
        nonlocal state
        logits, new = model(x, state)
        state = tuple(s.detach() for s in new)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()

    chars = t.batch_size * t.seq_len
    speeds: dict[bool, list[float]] = {True: [], False: []}
    for r in range(chunks):
        for side in (True, False) if r % 2 == 0 else (False, True):
            use(side)
            step()  # one untimed step after switching
            speeds[side].append(chars / timed(step, chunk))
    use(True)
    ratios = [a / b for a, b in zip(speeds[True], speeds[False], strict=True)]
    return (
        statistics.median(speeds[True]),
        statistics.median(speeds[False]),
        statistics.median(ratios),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--cells", default="lstm,gru")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| dropout p=0.1 on | charlm us (fwd+bwd) | F.dropout us | F.dropout / charlm |")
    print("| --- | ---: | ---: | ---: |")
    for shape in [(32, 32, 256), (32, 64, 384)]:
        mine, theirs = dropout_alone(shape, 0.1, 2 * args.chunks)
        name = " x ".join(map(str, shape))
        print(f"| {name} | {mine:,.0f} | {theirs:,.0f} | {theirs / mine:.2f}x |")
    print()
    print("| preset model | charlm dropout chars/s | F.dropout chars/s | charlm / F.dropout |")
    print("| --- | ---: | ---: | ---: |")
    for cell in args.cells.split(","):
        preset = ROOT / "configs" / f"shakespeare-{cell}.yaml"
        mine, theirs, ratio = training_steps(preset, args.chunks, args.chunk)
        print(f"| {preset.name} | {mine:,.0f} | {theirs:,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
