"""Training levers compared at a fixed number of steps, free of the machine's speed noise.

A timed race mixes two things: how much a setting helps per step, and how fast the machine happened
to run that minute (this shared VM moves by 15-30% between runs, which is worth more steps than
most levers are worth loss). For settings that do not change the cost of a step (learning rate,
warm-up, schedule, clipping, dropout, weight decay) the fair question is "at the steps five minutes
buy, which ends lower?". Fixed-step runs answer it exactly: each run is deterministic, so runs can
share the machine, one thread each, several at a time, and any difference is the lever's own.

    python bench/levers.py [CORPUS] --preset configs/shakespeare-lstm.yaml --steps 2800 \
        --jobs 2 --seeds 0 --try "train.warmup_steps=0" --try "train.lr=0.01 train.warmup_steps=0" \
        [--set KEY=VALUE ...]

The preset (plus any --set, which every row gets) is always the first row. Each run trains with
`train.max_steps` = --steps (the cosine then decays over steps) and is scored like bench/race.py:
the first 100,000 val characters as 20 carried-state streams, nats per character. Settings that
change a step's cost (width, depth, batch, sequence length) belong in bench/race.py, where the
clock decides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import DEFAULT_CORPUS, ROOT, VAL_CHARS, VAL_STREAMS, read_corpus, train_in_child

from charlm.runs import read_metrics


def run_one(corpus: Path, preset: Path, sets: list[str], steps: int, seed: int, tmp: Path) -> dict:
    """Train one config in its own one-thread process; its final score and last train loss."""
    out = tmp / f"run-{os.urandom(4).hex()}"
    args = [
        str(preset),
        f"data.corpus={corpus}",
        f"train.max_steps={steps}",
        "train.max_time=null",
        f"train.eval_interval={steps}",
        f"train.checkpoint_interval={steps}",
        f"train.eval_chars={VAL_CHARS}",
        f"train.eval_streams={VAL_STREAMS}",
        f"train.seed={seed}",
        "train.device=cpu",
        *sets,
    ]
    start = time.perf_counter()
    train_in_child(args, out, f"levers: {' '.join(sets) or 'preset'} seed {seed}", threads=1)
    rows = read_metrics(out)
    val = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    train_loss = [r["train_loss"] for r in rows if "train_loss" in r][-1]
    return {"val": val, "train": train_loss, "wall": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "shakespeare-lstm.yaml")
    parser.add_argument("--steps", type=int, default=2800, help="training steps per run")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="override for every row"
    )
    parser.add_argument(
        "--try",
        dest="tries",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="one lever: overrides applied on top of the preset (repeatable)",
    )
    args = parser.parse_args()
    read_corpus(args.corpus)  # a missing corpus stops here with one line
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [[], *[t.split() for t in args.tries]]
    every = list(args.sets)
    jobs = [(v, s) for v in variants for s in seeds]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(
                run_one, args.corpus.resolve(), args.preset, every + v, args.steps, s, Path(tmp)
            )
            for v, s in jobs
        ]
        results = [f.result() for f in futures]
    by_variant: dict[str, list[dict]] = {}
    for (v, _), r in zip(jobs, results, strict=True):
        by_variant.setdefault(" ".join(v), []).append(r)
    base = statistics.mean(r["val"] for r in by_variant[""])
    shared = f" with {' '.join(every)}" if every else ""
    print(f"{args.preset.name}{shared}, {args.steps} steps, seeds {args.seeds}, {args.jobs} jobs\n")
    print("| overrides | val loss per seed | mean | vs preset | last train loss (mean) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, rs in by_variant.items():
        vals = [r["val"] for r in rs]
        mean = statistics.mean(vals)
        label = f"`{name}`" if name else "(preset)"
        per_seed = ", ".join(f"{v:.4f}" for v in vals)
        train_mean = statistics.mean(r["train"] for r in rs)
        print(f"| {label} | {per_seed} | {mean:.4f} | {mean - base:+.4f} | {train_mean:.3f} |")
    walls = [r["wall"] for r in results]
    print(f"\n{len(results)} runs, {min(walls):.0f}-{max(walls):.0f} s each")


if __name__ == "__main__":
    main()
