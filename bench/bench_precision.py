"""Training speed of each `train.precision` on this machine, at the presets' model and batch.

bf16 pays only where the hardware has bf16 arithmetic (AVX-512 BF16 or AMX on a CPU, a recent
GPU); elsewhere oneDNN refuses the fused cell or emulates it. This trains each preset for --steps
steps in each precision (no evals, no checkpoints), the precisions alternating round by round so
a noisy machine slows them alike, and times the steps after the first --skip (start-up, the
first allocations) from the run's own metrics log. Whether bf16 also reaches a lower loss in the
same minutes is the race's question (bench/race.py --set train.precision=bf16).

The cell `gru-torch` is the GRU preset trained through nn.GRU's own autograd backward instead of
charlm's CPU GRU layer (charlm/cpu/gru.py), to measure what that layer gives.

    python bench/bench_precision.py [CORPUS] [--steps 400] [--rounds 3] \
        [--cells lstm,gru,gru-torch] [--precisions fp32,bf16] [--set model.impl=reference ...]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from common import DEFAULT_CORPUS, ROOT, read_corpus

import charlm.model
from charlm.config import load_config
from charlm.errors import CharlmError
from charlm.runs import read_metrics
from charlm.training import train


@contextlib.contextmanager
def torch_gru_backward() -> Iterator[None]:
    """Train the GRU through nn.GRU itself (its autograd backward), not charlm.cpu.gru's layer."""
    kept = charlm.model.gru_sequence
    charlm.model.gru_sequence = lambda rnn, x, h0: rnn(x, h0)
    try:
        yield
    finally:
        charlm.model.gru_sequence = kept


def timed_run(
    corpus: Path, cell: str, precision: str, steps: int, skip: int, sets: list[str]
) -> float | None:
    """Training chars/s between step `skip` and the last step; None if refused here."""
    preset = "gru" if cell == "gru-torch" else cell
    config = load_config(
        ROOT / "configs" / f"shakespeare-{preset}.yaml",
        [
            f"data.corpus={corpus}",
            f"train.max_steps={steps}",
            "train.max_time=null",
            f"train.eval_interval={steps}",
            "train.eval_chars=1000",
            f"train.checkpoint_interval={steps}",
            f"train.log_interval={skip}",
            "train.device=cpu",
            f"train.precision={precision}",
            *sets,
        ],
    )
    kernel = torch_gru_backward() if cell == "gru-torch" else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as tmp, kernel:
        try:
            train(config, Path(tmp) / "run")
        except CharlmError:
            return None
        rows = {r["step"]: r["elapsed_s"] for r in read_metrics(Path(tmp) / "run") if "step" in r}
    seconds = rows[steps] - rows[skip]
    return (steps - skip) * config.train.batch_size * config.train.seq_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--skip", type=int, default=50, help="Steps left out of the timing.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()
    read_corpus(args.corpus)  # a clear error for a missing corpus before any training
    if args.steps % args.skip or args.steps <= args.skip:
        parser.error("--steps must be a multiple of --skip and larger than it")
    precisions = args.precisions.split(",")
    print(f"| cell | round | {' | '.join(f'{p} chars/s' for p in precisions)} |")
    print(f"| --- | ---: | {' | '.join('---:' for _ in precisions)} |")
    summary = []
    for cell in args.cells.split(","):
        speeds: dict[str, list[float]] = {p: [] for p in precisions}
        for r in range(1, args.rounds + 1):
            shown = []
            for p in precisions:
                speed = timed_run(args.corpus, cell, p, args.steps, args.skip, args.sets)
                shown.append("refused here" if speed is None else f"{speed:,.0f}")
                if speed is not None:
                    speeds[p].append(speed)
            print(f"| {cell} | {r} | {' | '.join(shown)} |", flush=True)
        medians = {p: statistics.median(v) for p, v in speeds.items() if v}
        summary.append((cell, medians))
    first = precisions[0]
    print(f"\n| cell | {' | '.join(f'{p} median' for p in precisions)} | vs {first} |")
    print(f"| --- | {' | '.join('---:' for _ in precisions)} | --- |")
    for cell, medians in summary:
        shown = [f"{medians[p]:,.0f}" if p in medians else "refused" for p in precisions]
        ratios = ", ".join(
            f"{p} {medians[p] / medians[first]:.2f}x"
            for p in precisions[1:]
            if p in medians and first in medians
        )
        print(f"| {cell} | {' | '.join(shown)} | {ratios} |")
    cpu = "AVX-512 BF16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
    print(
        f"\npresets' models {' '.join(args.sets)}, {args.steps} steps ({args.skip} untimed), "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU: {cpu} ({torch.backends.cpu.get_cpu_capability()})"
    )


if __name__ == "__main__":
    main()
