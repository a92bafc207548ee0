"""Precision: what the hardware has, which precisions training and sampling offer, and `auto`.

One timing probe (`time_candidates`) and one threshold (`MIN_SPEEDUP`) serve both `auto`s:
training times a forward and backward in fp32 and bf16, sampling times a stepper's step in each
precision it can run. Whether a low precision is faster depends on the CPU, the model's width and
the batch (docs/benchmarks.md), so on a CPU `auto` times rather than guesses.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from charlm.config import ModelConfig
from charlm.errors import CharlmError
from charlm.model import CharLM

TRAIN_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "tf32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Training precisions: the autocast dtype of the forward pass (None: plain fp32). `tf32` is fp32
with a GPU's TF32 products (inputs rounded to 10 mantissa bits, fp32 sums); on a CPU it is fp32.
On an H200, TF32 steps of a 3x512 LSTM ran 1.2x, of a 2x1024 one 3x, strict fp32's
(docs/benchmarks.md)."""

SAMPLE_PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
}
"""Sampling precisions: the dtype of the matrix products where it is not fp32 (state and gates
stay fp32). int8 is the fast steppers' own, on the CPU: weights in int8 with a scale per output,
each step's input quantized to 8 bits as it comes (charlm.cpu.packed.Int8Weight). `auto` times
the ones the device runs (`choose_precision`)."""

MIN_SPEEDUP = 1.1
"""`auto` leaves fp32 only for a precision whose timed step is at least this much faster: a low
precision moves the numbers a little, which a margin within the timing noise is not worth. For
training on a CPU, AVX-512 BF16 alone does not say: on a 2-core AMD EPYC bf16 steps ran 1.3x
fp32's; on a 2-core Xeon with the same flag but no AMX exposed, 0.7-0.9x (docs/benchmarks.md)."""


def hardware_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in the hardware: a CUDA GPU's own, or oneDNN's AVX-512 BF16 / AMX.

    An Apple GPU (mps) says no: torch runs bf16 there only on recent macOS, and no timing of
    charlm's models on one backs a faster step, so `auto` keeps fp32 on mps.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_forward_runs(model_config: ModelConfig, device: torch.device) -> bool:
    """Whether a two-character model of this layout runs forward in bf16 under autocast here.

    Its logits must come out in bf16: where torch's autocast lacks bf16 for the device (mps on
    an older macOS) it warns and runs fp32 instead, which is not bf16 training.
    """
    with torch.random.fork_rng(devices=[]):  # the probe's weights leave the run's RNG as it was
        probe = CharLM(model_config, 2).to(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback's warning: the answer says it
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits, _ = probe(torch.zeros(1, 1, dtype=torch.long, device=device))
    except RuntimeError:
        return False
    return logits.dtype == torch.bfloat16


def native_bf16(device: torch.device, model_config: ModelConfig) -> bool:
    """Whether `train.precision: auto` may train this model in bf16 on `device`: the hardware has
    bf16 arithmetic and the model runs in it. Elsewhere oneDNN either refuses the fused cell or
    emulates bf16, which is slower than fp32, so auto keeps fp32."""
    return hardware_bf16(device) and bf16_forward_runs(model_config, device)


# -- the one timing probe and the one pick ------------------------------------------------------
def time_candidates(
    steps: Mapping[str, Callable[[], None]],
    device: torch.device,
    budget_s: float,
    max_rounds: int = 8,
) -> dict[str, float]:
    """-> each candidate's fastest seconds per call, timed in alternating rounds.

    One warm-up call each, then rounds in which every candidate runs once, so a noisy machine
    slows them alike; rounds stop after `budget_s` (at least two are timed) or `max_rounds`.
    """
    best = {name: math.inf for name in steps}
    for step in steps.values():
        step()
    began = time.perf_counter()
    for round_ in range(max_rounds):
        if round_ >= 2 and time.perf_counter() - began > budget_s:
            break
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def pick_precision(timings: dict[str, float], baseline: str = "fp32") -> str:
    """The fastest precision at least `MIN_SPEEDUP` times as fast as `baseline`, else that."""
    limit = timings[baseline] / MIN_SPEEDUP
    faster = {name: t for name, t in timings.items() if name != baseline and t <= limit}
    return min(faster, key=lambda name: faster[name]) if faster else baseline


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock reads its time (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def wide_float(device: torch.device) -> torch.dtype:
    """The widest float `device` computes in, for sums and scores kept on it: float64, except on
    an Apple GPU (mps), which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def empty_cache(device: torch.device) -> None:
    """Hand the GPU memory torch keeps cached for reuse back to the device (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


# -- training -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainPrecision:
    """A run's resolved precision, and the probe's seconds per step when `auto` timed one."""

    name: str
    probe: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "probe": self.probe}


def time_train_step(
    model_config: ModelConfig,
    vocab_size: int,
    batch: int,
    seq_len: int,
    device: torch.device,
    budget_s: float = 2.0,
) -> dict[str, float]:
    """-> seconds of one forward and backward of this model at this batch shape, in the baseline
    (fp32 on a CPU, tf32 on a GPU) and in bf16: {"fp32" or "tf32": s, "bf16": s}.

    A throwaway model with its own weights (the run's random streams are left as they were),
    timed by `time_candidates` for up to three rounds (a big model's step is slow enough to time
    once the budget is spent).
    """
    baseline = "tf32" if device.type == "cuda" else "fp32"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = CharLM(model_config, vocab_size).to(device)
        x = torch.randint(vocab_size, (batch, seq_len), device=device)

        def step(name: str) -> Callable[[], None]:
            def run() -> None:
                set_matmul_precision(name, device)
                with autocast(name, device):
                    logits, _ = probe(x)
                loss = F.cross_entropy(logits.reshape(-1, vocab_size).float(), x.reshape(-1))
                loss.backward()
                probe.zero_grad(set_to_none=True)

            return run

        steps = {name: step(name) for name in (baseline, "bf16")}
        return time_candidates(steps, device, budget_s, max_rounds=3)


def resolve_train_precision(
    requested: str,
    model_config: ModelConfig,
    vocab_size: int,
    batch: int,
    seq_len: int,
    device: torch.device,
    agree_any: Callable[[bool], bool] = lambda ok: ok,
) -> TrainPrecision:
    """Check the precision a run asks for on this device; resolve `auto` (done once per run).

    `auto` starts from fp32 on a CPU and tf32 on a GPU, and takes bf16 where the hardware has it,
    the model runs in it and a timed step is `MIN_SPEEDUP` faster in it. (On an H200 the GPU
    presets' 3x512 LSTM step took 15 ms in bf16 against 19 in tf32, so auto took bf16.) `agree_any`
    makes every process of a run take bf16 if any timed it faster, so all train alike.
    """
    check_train_precision(requested, model_config, device)
    if requested != "auto":
        return TrainPrecision(requested)
    baseline = "tf32" if device.type == "cuda" else "fp32"
    if not native_bf16(device, model_config):
        return TrainPrecision(baseline)
    timings = time_train_step(model_config, vocab_size, batch, seq_len, device)
    faster = agree_any(pick_precision(timings, baseline) == "bf16")
    probe = {f"{name}_step_s": seconds for name, seconds in timings.items()}
    return TrainPrecision("bf16" if faster else baseline, probe)


def check_train_precision(precision: str, model_config: ModelConfig, device: torch.device) -> None:
    """Refuse up front a training precision this device cannot train in."""
    if precision not in (*TRAIN_PRECISIONS, "auto"):
        raise CharlmError(
            f"train.precision: {precision!r}: expected one of auto, {', '.join(TRAIN_PRECISIONS)}"
        )
    if precision == "fp16" and device.type != "cuda":
        instead = "fp32 or bf16" if device.type == "cpu" else "fp32"
        raise CharlmError(
            "train.precision: 'fp16' needs a CUDA GPU (it trains with a gradient scaler "
            f"there); on {device.type} use {instead}"
        )
    if precision != "bf16" or device.type == "cuda" or bf16_forward_runs(model_config, device):
        return
    if device.type == "cpu":
        raise CharlmError(
            "train.precision: 'bf16' is not supported by this CPU's fused "
            f"{model_config.cell.upper()} kernel (oneDNN needs AVX-512 BF16 for it);"
            " use fp32, auto, or model.impl=reference"
        )
    raise CharlmError(
        f"train.precision: 'bf16' does not run on {device.type} with this torch and OS "
        "(autocast fell back to fp32 or refused); use fp32 or auto"
    )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """A training forward pass's precision: plain fp32, or autocast to bf16 / fp16."""
    dtype = TRAIN_PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_matmul_precision(precision: str, device: torch.device) -> None:
    """Make "fp32" mean fp32 on a GPU (TF32 off for matrix products and cuDNN) and "tf32" TF32.

    TF32 rounds fp32 products' inputs to 10 mantissa bits; left to the library defaults (cuDNN
    on, matrix products off), an fp32 run's numbers would depend on which kernel ran. Under bf16
    / fp16 autocast the low products are the low dtype's anyway, and the fp32 parts (the loss,
    the optimizer) may use TF32, which is as precise as the rest of such a step. The setting is
    process-wide; on a CPU it is left alone (TF32 is a GPU format).
    """
    if device.type != "cuda":
        return
    strict = precision == "fp32"
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict


# -- sampling -----------------------------------------------------------------------------------
def check_precision(precision: str, auto: bool = True) -> None:
    """Refuse a sampling precision the steppers do not have, naming the option (the sample and
    eval commands call it before any work; `make_stepper` for every other caller). `auto` (the
    fastest, timed) is for sampling; eval scores one named precision, so it passes auto=False."""
    known = [*SAMPLE_PRECISIONS, "auto"] if auto else list(SAMPLE_PRECISIONS)
    if precision not in known:
        raise CharlmError(f"--precision {precision!r}: expected one of {', '.join(known)}")


def sample_candidates(model: nn.Module, fast: bool, fast_ok: bool) -> list[str]:
    """The sampling precisions worth timing for this model on its device."""
    device = next(model.parameters()).device
    names = ["fp32"]
    if hardware_bf16(device):
        names.append("bf16")
    if device.type == "cpu" and fast and fast_ok:
        names.append("int8")
    return names


def choose_precision(
    model: nn.Module,
    build: Callable[[str], Any],
    names: list[str],
    batch: int = 1,
    budget_s: float = 0.5,
) -> tuple[str, dict[str, float]]:
    """-> (the precision sampling's `auto` takes, seconds per step of each precision tried).

    `build(name)` makes a stepper (charlm.stepper.make_stepper); a precision whose stepper
    cannot be built or started here (no int8 kernels, no bf16 version) is left out. All start
    from the same one-character prime and step in `time_candidates`' alternating rounds of eight
    steps. The steps run on the caller's threads: set those first.
    """
    device = next(model.parameters()).device
    builders = {name: (device, functools.partial(build, name)) for name in names}
    timings = time_steps(builders, batch, budget_s)
    return pick_precision(timings), timings


def time_steps(
    builders: Mapping[str, tuple[torch.device, Callable[[], Any]]],
    batch: int = 1,
    budget_s: float = 0.5,
) -> dict[str, float]:
    """-> seconds per sampling step of each stepper the builders make, on its device.

    Each stepper starts from the same one-character prime and steps in `time_candidates`'
    alternating rounds of eight steps; one that cannot be built or started here (no int8
    kernels, no bf16 version) is left out. The steps run on the caller's threads.
    """
    runs: dict[str, Callable[[], None]] = {}
    waits = torch.device("cpu")
    with torch.inference_mode():
        for name, (device, make) in builders.items():
            ids = torch.zeros(batch, dtype=torch.long, device=device)
            try:
                stepper = make()
                _, state = stepper.start(ids.unsqueeze(1))
                _, state = stepper.step(ids, state)  # packing, first-call allocations
            except CharlmError:
                continue
            runs[name] = _eight_steps(stepper, state, ids)
            waits = device if device.type != "cpu" else waits
        per_round = time_candidates(runs, waits, budget_s)
    return {name: seconds / 8 for name, seconds in per_round.items()}


def _eight_steps(stepper: Any, state: Any, ids: torch.Tensor) -> Callable[[], None]:
    """Eight sampling steps that carry their state from one call to the next."""
    box = [state]

    def run() -> None:
        for _ in range(8):
            _, box[0] = stepper.step(ids, box[0])

    return run
