"""Long generation: peak memory and speed of `charlm sample --length N`, and sampling from the
ONNX export in onnxruntime against charlm's own sampler at batch 1.

Each length runs `charlm sample RUN --length N --seed 1 --device cpu` in a child process whose
output is read and counted here, and reports its peak resident memory (the kernel's maxrss for
the child) and its characters per second (the run of one character subtracted, so start-up is
out); from 10^6 characters on, the peak so far (VmHWM) is printed at every tenth of the way, so
a run stopped early still tells. Memory that stays flat from 10^5 to 10^7 characters means
nothing grows per character.

With --onnx the run is exported to ONNX and greedy text is made three ways in this process, for
--chars characters each: `charlm.load(RUN).stream` (charlm's stepper), the docs/api.md loop in
numpy + onnxruntime, and the traced TorchScript step in a plain loop.

Without RUN, a model of the default shape (2x256 LSTM) is trained for one step on the corpus:
speed and memory do not depend on training.

    python bench/bench_long_sample.py [RUN] [--lengths 100000 10000000] [--onnx] [--chars 20000]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import DEFAULT_CORPUS, train_in_child  # noqa: E402


def high_water(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes; 0 where /proc lacks it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, flags=re.MULTILINE)
    return int(found.group(1)) * 1024 if found else 0


def sample_child(run: Path, length: int, report: bool = False) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of `charlm sample RUN --length N`, its output read and
    counted here; with `report`, the peak so far is printed at every tenth of the length."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "charlm", "sample", str(run), "--length", str(length)]
    cmd += ["--seed", "1", "--device", "cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    got, mark = 0, length // 10
    while chunk := proc.stdout.read1(1 << 16):
        got += len(chunk)
        if report and got >= mark:
            seconds = time.perf_counter() - start
            print(f"  {got:>12,} bytes out, {seconds:7.1f} s: peak RSS so far "
                  f"{high_water(proc.pid) / 2**20:.1f} MiB", flush=True)  # fmt: skip
            mark += length // 10
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"charlm sample --length {length} failed")
    return seconds, usage.ru_maxrss * 1024


def memory(run: Path, lengths: list[int]) -> None:
    base, base_rss = sample_child(run, 1)
    print(f"start-up (--length 1): {base:.2f} s, peak RSS {base_rss / 2**20:.1f} MiB")
    for n in lengths:
        seconds, rss = sample_child(run, n, report=n >= 1_000_000)
        speed = n / (seconds - base) if seconds > base + 1 else float("nan")
        print(
            f"--length {n:>12,}: {seconds:8.1f} s, {speed:10,.0f} chars/s, "
            f"peak RSS {rss / 2**20:.1f} MiB",
            flush=True,
        )


def greedy_onnx(path: Path, prime: str, length: int) -> str:
    """The docs/api.md loop, greedy."""
    import json

    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    opts = session.get_modelmeta().custom_metadata_map
    meta = json.loads(opts["charlm"])
    chars = meta["vocab"]["chars"]
    layers, _, hidden = meta["state_shape"]
    names = meta["inputs"][1:]
    state = [np.zeros((layers, 1, hidden), dtype=np.float32) for _ in names]

    def step(i: int, state: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {"ids": np.array([i], dtype=np.int64), **dict(zip(names, state, strict=True))}
        return session.run(None, feeds)

    out = []
    for c in prime:
        logits, *state = step(chars.index(c), state)
    for _ in range(length):
        i = int(np.argmax(logits[0]))
        out.append(chars[i])
        logits, *state = step(i, state)
    return "".join(out)


def greedy_torchscript(path: Path, prime: str, length: int) -> str:
    import json

    import torch

    extra = {"charlm.json": ""}
    step = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["charlm.json"])
    chars = meta["vocab"]["chars"]
    layers, _, hidden = meta["state_shape"]
    state = [torch.zeros(layers, 1, hidden) for _ in meta["inputs"][1:]]
    out = []
    with torch.no_grad():
        for c in prime:
            logits, *state = step(torch.tensor([chars.index(c)]), *state)
        for _ in range(length):
            i = int(logits[0].argmax())
            out.append(chars[i])
            logits, *state = step(torch.tensor([i]), *state)
    return "".join(out)


def onnx_speed(run: Path, folder: Path, chars: int) -> None:
    import torch

    import charlm
    from charlm.export import export

    torch.set_num_threads(1)
    onnx = export(run, "onnx", folder / "m.onnx", force=True)
    script = export(run, "torchscript", folder / "m.pt", force=True)
    print(f"onnx: {onnx.bytes:,} bytes, max logit difference {onnx.max_diff:.3g}")
    model = charlm.load(run)
    ways = {
        "charlm (load().stream, greedy)": lambda: "".join(
            model.stream("\n", length=chars, temperature=0.0)
        ),
        "onnxruntime (docs loop, greedy)": lambda: greedy_onnx(onnx.path, "\n", chars),
        "torchscript (plain loop, greedy)": lambda: greedy_torchscript(script.path, "\n", chars),
    }
    texts = {}
    for name, make in ways.items():
        start = time.perf_counter()
        texts[name] = make()
        print(f"{name:34s} {chars / (time.perf_counter() - start):10,.0f} chars/s at batch 1")
    print("same text:", len(set(texts.values())) == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100_000, 10_000_000])
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = Path(tmp) / "run"
            corpus = [f"data.corpus={args.corpus}"] if args.corpus.is_file() else []
            steps = ["train.max_steps=1", "train.eval_interval=1", "train.device=cpu"]
            train_in_child([*corpus, *steps], run, "training the model")
        memory(run, args.lengths)
        if args.onnx:
            onnx_speed(run, Path(tmp), args.chars)


if __name__ == "__main__":
    main()
