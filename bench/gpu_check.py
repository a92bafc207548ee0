"""The CUDA paths end to end on one GPU, in about six minutes; every figure into one JSON file.

    PYTHONPATH=. python bench/gpu_check.py --corpus PATH --out DIR [--train-s 60]

What it runs (each part stands alone: an error is recorded and the next part runs):
- the test suite, in the background on the CPU side (it must pass on a machine with CUDA);
- the GPU presets (configs/gpu-lstm.yaml, configs/gpu-gru.yaml) for --train-s seconds each, then
  `charlm eval` of each run with carried state and on fresh 256-character windows (the way
  nanoGPT's shakespeare_char scores);
- what dtype the recurrent layers really run in under each precision;
- resume on CUDA: a run cut back to a middle checkpoint and resumed, against the same run
  unbroken (weights compared bit for bit), and a CUDA checkpoint resumed on the CPU;
- sampling speed per character on the GPU and the CPU at batch 1 and 32.
Results: DIR/gpu_check.json (rewritten after every part) and DIR/*.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS: dict[str, Any] = {}


def save(out: Path) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(RESULTS, indent=1, default=str))
    os.replace(tmp, out / "gpu_check.json")


def part(name: str, out: Path, fn: Callable[[], Any]) -> None:
    began = time.time()
    try:
        result = fn()
    except Exception as e:  # every part stands alone
        result = {
            "error": f"{type(e).__name__}: {e}"[:600],
            "traceback": traceback.format_exc()[-2000:],
        }
    if isinstance(result, dict):
        result["seconds"] = round(time.time() - began, 1)
    RESULTS[name] = result
    print(
        f"[{time.strftime('%H:%M:%S')}] {name}: {json.dumps(result, default=str)[:600]}", flush=True
    )
    save(out)


def charlm(args: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """`python -m charlm ARGS` with its output in `log`; the exit code and the last lines."""
    began = time.time()
    with log.open("w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, "-m", "charlm", *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=REPO,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = log.read_text(errors="replace").strip().splitlines()[-6:]
    return {"rc": rc, "wall_s": round(time.time() - began, 1), "tail": tail}


def preset(name: str, corpus: Path, work: Path, out: Path, train_s: float) -> dict[str, Any]:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    res = charlm(
        [
            "train",
            f"configs/{name}.yaml",
            f"data.corpus={corpus}",
            f"data.cache_dir={work / 'cache'}",
            f"train.max_time={train_s}",
            "--out",
            str(run),
            "-q",
        ],
        out / f"train-{name}.log",
        train_s + 240,
    )
    summary = (
        json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    )
    rows = (
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if (run / "metrics.jsonl").is_file()
        else []
    )
    res["summary"] = {
        k: summary.get(k)
        for k in (
            "status",
            "steps",
            "elapsed_s",
            "step_chars_per_s",
            "precision",
            "best_val_loss",
            "best_step",
            "final_val",
            "final_eval_s",
        )
    }
    res["val_curve"] = [
        [r["step"], r["elapsed_s"], round(r["val_loss"], 4)] for r in rows if "val_loss" in r
    ]
    for label, extra in (("eval_carried", []), ("eval_window256", ["--window", "256"])):
        e = charlm(
            ["eval", str(run), "--device", "cuda", *extra], out / f"eval-{name}-{label}.log", 180
        )
        res[label] = e["tail"][-3:]
    return res


def rnn_dtypes() -> dict[str, Any]:
    import torch

    from charlm.config import ModelConfig
    from charlm.model import CharLM
    from charlm.precision import autocast

    out: dict[str, Any] = {}
    for cell in ("lstm", "gru"):
        model = CharLM(ModelConfig(cell=cell, hidden_size=64, num_layers=2, dropout=0.1), 10).cuda()
        seen: list[str] = []

        def note(module: Any, inputs: Any, output: Any, seen: list[str] = seen) -> None:
            seen.append(str(inputs[0].dtype))

        hook = model.head.register_forward_hook(note)
        for precision in ("fp32", "tf32", "bf16", "fp16"):
            try:
                with autocast(precision, torch.device("cuda")):
                    _, state = model(torch.zeros(2, 5, dtype=torch.long, device="cuda"))
                out[f"{cell}/{precision}"] = {"rnn_out": seen[-1], "state": str(state[0].dtype)}
            except Exception as e:
                out[f"{cell}/{precision}"] = f"{type(e).__name__}: {e}"[:200]
        hook.remove()
    return out


def resume_exact(corpus: Path, work: Path, precision: str) -> dict[str, Any]:
    """A 200-step run, and a copy of it cut back to step 100 and resumed: same weights?"""
    import torch

    from charlm.checkpoint import load_checkpoint
    from charlm.config import load_config
    from charlm.training import resume, train

    name = f"resume-{precision}"
    a, b = work / f"{name}-A", work / f"{name}-B"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    overrides = [
        f"data.corpus={corpus}",
        f"data.cache_dir={work / 'cache'}",
        "train.device=cuda",
        f"train.precision={precision}",
        "train.max_time=null",
        "train.max_steps=200",
        "train.checkpoint_interval=100",
        "train.eval_interval=100",
        "train.eval_chars=20000",
        "model.hidden_size=256",
        "model.num_layers=2",
        "model.dropout=0.2",
        "train.batch_size=64",
        "train.seq_len=64",
    ]
    config = load_config(REPO / "configs/gpu-lstm.yaml", overrides)
    train(config, a)
    shutil.copytree(a, b)
    (b / "checkpoints" / "step-00000200.safetensors").unlink()
    resume(b)
    ca = load_checkpoint(a / "checkpoints" / "step-00000200.safetensors").group("model")
    cb = load_checkpoint(b / "checkpoints" / "step-00000200.safetensors").group("model")
    diff = max(float((ca[k].double() - cb[k].double()).abs().max()) for k in ca)
    return {"bitwise_equal": all(torch.equal(ca[k], cb[k]) for k in ca), "max_abs_diff": diff}


def resume_on_cpu(work: Path) -> dict[str, Any]:
    """The bf16 CUDA run of resume_exact, continued on the CPU (train.device=cpu may change)."""
    from charlm.checkpoint import load_checkpoint
    from charlm.training import resume

    run = work / "resume-bf16-A"
    state = load_checkpoint(run / "checkpoints" / "step-00000200.safetensors").group("state")
    result = resume(run, ["train.device=cpu", "train.max_steps=205"])
    return {"saved_state_dtype": str(state["0"].dtype), "resumed_steps": result.steps}


def sampling_speed(corpus: Path) -> dict[str, Any]:
    import copy

    import torch

    from charlm.config import load_config
    from charlm.model import CharLM
    from charlm.sample import generate_batch
    from charlm.sample_options import SampleOptions
    from charlm.sample_setup import choose_device
    from charlm.vocab import Vocab

    vocab = Vocab.from_text(corpus.read_text(encoding="utf-8")[:200000])
    cfg = load_config(REPO / "configs/gpu-lstm.yaml", [f"data.corpus={corpus}"]).model
    small = load_config(REPO / "configs/shakespeare-lstm.yaml", [f"data.corpus={corpus}"]).model
    out: dict[str, Any] = {}
    for label, mc in (("3x512", cfg), ("2x256", small)):
        torch.manual_seed(0)
        gpu = CharLM(mc, len(vocab)).cuda().eval()
        cpu = copy.deepcopy(gpu).cpu().eval()
        for dev, model in (("cuda", gpu), ("cpu", cpu)):
            for batch, length in ((1, 1000), (32, 300)):
                options = SampleOptions(length=length, seed=1, num_samples=batch)
                it = generate_batch(model, vocab, "\n", options)
                next(it)
                began, k = time.perf_counter(), 0
                for _ in it:
                    k += 1
                if dev == "cuda":
                    torch.cuda.synchronize()
                out[f"{label}/{dev}/b{batch}_chars_per_s"] = round(
                    batch * k / (time.perf_counter() - began)
                )
        for batch in (1, 32, 256):
            picked, timings = choose_device(cpu, SampleOptions(num_samples=batch))
            out[f"{label}/auto_device/b{batch}"] = {
                "picked": next(picked.parameters()).device.type,
                "us_per_step": {k: round(v * 1e6, 1) for k, v in timings.items()},
            }
    out["cpu_threads"] = torch.get_num_threads()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/charlm-gpu-check"))
    p.add_argument("--train-s", type=float, default=60.0)
    p.add_argument("--skip", default="", help="comma-separated parts to skip")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    skip = set(a.skip.split(","))
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_check: this torch sees no CUDA GPU; nothing to check here")

    RESULTS["env"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(0),
        "cpus": os.cpu_count(),
    }
    tests = None
    if "tests" not in skip:
        log = (a.out / "pytest.log").open("w")
        tests = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-m",
                "not distributed",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    parts: list[tuple[str, Callable[[], Any]]] = [
        ("rnn_dtypes", rnn_dtypes),
        ("preset_lstm", lambda: preset("gpu-lstm", a.corpus, a.work, a.out, a.train_s)),
        ("preset_gru", lambda: preset("gpu-gru", a.corpus, a.work, a.out, a.train_s)),
        ("resume_bf16", lambda: resume_exact(a.corpus, a.work, "bf16")),
        ("resume_tf32", lambda: resume_exact(a.corpus, a.work, "tf32")),
        ("resume_on_cpu", lambda: resume_on_cpu(a.work)),
        ("sampling_speed", lambda: sampling_speed(a.corpus)),
    ]
    for name, fn in parts:
        if name not in skip:
            part(name, a.out, fn)
    if tests is not None:
        try:
            tests.wait(timeout=240)
        except subprocess.TimeoutExpired:
            tests.kill()
        lines = (a.out / "pytest.log").read_text(errors="replace").strip().splitlines()
        RESULTS["pytest"] = {
            "rc": tests.returncode,
            "summary": lines[-1:],
            "failed": [ln for ln in lines if ln.startswith("FAILED")][:30],
        }
        save(a.out)
    print(json.dumps(RESULTS.get("pytest"), default=str))


if __name__ == "__main__":
    main()
