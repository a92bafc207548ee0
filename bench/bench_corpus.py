"""Corpus encoding and memory: `charlm data prepare` and the first training steps by corpus size.

Generates corpora of the requested sizes in a scratch folder, of each kind asked for:
  - `stdlib`: the built-in standard-library corpus repeated (mostly ASCII),
  - `one-non-ascii`: the same text made pure ASCII, then one `é` in every MiB, so every chunk
    goes through the decoding path (the case whose memory once grew with the corpus),
then measures in a fresh subprocess each:
  - `charlm data prepare` building the cache (wall and CPU seconds, throughput, peak RSS),
  - the same command again (cache reused),
  - 20 training steps from a fresh process on the prepared cache (peak RSS; no final eval).
Peak RSS comes from os.wait4 on that one child. Everything is deleted afterwards.

    .venv/bin/python bench/bench_corpus.py --sizes 10,100,1000 --repeats 3
    .venv/bin/python bench/bench_corpus.py --sizes 50,200 --repeats 1 --kinds one-non-ascii
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MB = 2**20
TRAIN_CHILD = """
import sys, torch
from pathlib import Path
from charlm.config import load_config
from charlm.training import Trainer
torch.set_num_threads(1)
corpus, cache_dir, run, steps = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
config = load_config(None, [f"data.corpus={corpus}", f"data.cache_dir={cache_dir}",
    "train.device=cpu", "model.hidden_size=128", "train.batch_size=32", "train.seq_len=128",
    f"train.batching={sys.argv[5]}"])
trainer = Trainer(config, run)
for _ in range(steps):
    trainer.train_step()
"""


KINDS = ("stdlib", "one-non-ascii")


def make_corpus(path: Path, size: int, kind: str = "stdlib") -> None:
    """The built-in corpus's UTF-8 bytes repeated up to `size` bytes (cut at a line end).

    `one-non-ascii`: its non-ASCII characters dropped, then one `é` (two bytes for two ASCII
    ones) near the start of every MiB.
    """
    sys.path.insert(0, str(REPO))
    from charlm.config import DataConfig
    from charlm.corpus import load_corpus

    text = load_corpus(DataConfig()).text.encode("utf-8")
    if kind == "one-non-ascii":
        text = text.decode("utf-8").encode("ascii", "ignore")
    with path.open("wb") as f:
        written = 0
        while written < size:
            part = text[: size - written]
            part = part[: part.rfind(b"\n") + 1] or part
            if kind == "one-non-ascii":
                part = bytearray(part)
                for at in range(-written % MB, len(part) - 1, MB):
                    part[at : at + 2] = "é".encode()
            f.write(part)
            written += len(part)


def measure(cmd: list[str]) -> dict[str, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one fresh subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    proc.stderr.close()
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "rss_mib": usage.ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100", help="corpus sizes in MiB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="builds per size (median shown)")
    parser.add_argument("--steps", type=int, default=20, help="training steps to measure")
    parser.add_argument("--batching", default="stream", help="stream or random")
    parser.add_argument("--scratch", default=None, help="scratch folder (default: a /tmp one)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"corpus kinds, comma-separated: {KINDS}"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="charlm-bench-", dir=args.scratch))
    py = sys.executable
    print(
        "| corpus | MiB | id-cache build s (median) | MB/s (wall, cpu) | build peak RSS MiB "
        f"| reuse s | reuse RSS MiB | {args.steps} train steps s | train RSS MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    if not set(kinds) <= set(KINDS):
        raise SystemExit(f"--kinds {args.kinds!r}: expected some of {', '.join(KINDS)}")
    try:
        for kind, size_mib in ((k, s) for k in kinds for s in sizes):
            corpus = scratch / f"corpus-{kind}-{size_mib}mb.txt"
            make_corpus(corpus, size_mib * MB, kind)
            cache_dir = scratch / f"cache-{size_mib}"
            prepare = [py, "-m", "charlm", "data", "prepare", str(corpus)]
            prepare.append(f"data.cache_dir={cache_dir}")
            builds = []
            for _ in range(args.repeats):
                shutil.rmtree(cache_dir, ignore_errors=True)
                builds.append(measure(prepare))
            reuse = measure(prepare)
            run = scratch / f"run-{size_mib}"
            steps = measure(
                [py, "-c", TRAIN_CHILD, str(corpus), str(cache_dir), str(run), str(args.steps),
                 args.batching]
            )  # fmt: skip
            build = {k: statistics.median(b[k] for b in builds) for k in builds[0]}
            print(
                f"| {kind} | {size_mib:,} | {build['wall_s']:.2f} "
                f"| {size_mib / build['wall_s']:.1f}, {size_mib / build['cpu_s']:.1f} "
                f"| {build['rss_mib']:.0f} | {reuse['wall_s']:.2f} "
                f"| {reuse['rss_mib']:.0f} | {steps['wall_s']:.2f} | {steps['rss_mib']:.0f} |",
                flush=True,
            )
            corpus.unlink()
            shutil.rmtree(cache_dir, ignore_errors=True)
            shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nload average at the end: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
