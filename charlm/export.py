"""`charlm export`: a trained model in a file an app can load without the training state.

- `weights`: a safetensors file with only the model's weights (optionally in bf16 or fp16) and
  the config and vocabulary in its metadata: a charlm checkpoint without optimizer, carried state
  or RNG, which `charlm.load`, `charlm sample` and `charlm eval` read like any other.
- `onnx`: one recurrent step, `(ids, h[, c]) -> (logits, h_out[, c_out])`, with the vocabulary
  and config as JSON in the model's metadata (key `charlm`); any ONNX runtime can sample from it.
- `torchscript`: the same step as a traced TorchScript module (JSON in the extra file
  `charlm.json`).

Each file is written under a temporary name, checked, and renamed into place, so a failed or
interrupted export leaves nothing half-written. The step formats are checked by running a probe
sequence through the written file and through the PyTorch model and comparing every logit.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from charlm import checkpoint as ckpt
from charlm.config import config_to_dict
from charlm.errors import CharlmError, missing_package

FORMATS = ("weights", "onnx", "torchscript")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOLERANCE = 1e-4
"""The largest logit difference between an exported step and PyTorch's that an export accepts."""
PROBE_STEPS = 64
STEP_FORMAT = "charlm-step"
DESCRIBED = (
    "corpus", "elapsed_s", "eval_s", "best_val_loss", "best_step", "last_val", "interval_evals",
    "device", "precision", "torch_version",
)  # fmt: skip
"""Fields of the source's record an export keeps: what `charlm info` and `eval` read."""


@dataclass(frozen=True)
class Exported:
    """What an export wrote, and how it was checked."""

    path: Path
    format: str
    bytes: int
    checkpoint: Path
    checkpoint_bytes: int
    max_diff: float | None = None  # the step formats: largest |logit difference| on the probe
    probe_steps: int = 0


class Step(nn.Module):
    """One recurrent step of a CharLM: ids [batch], state... -> logits [batch, vocab], state..."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_state = self.model(ids.unsqueeze(1), tuple(state))
        return (logits[:, 0], *new_state)


def check_request(fmt: str, out: Path, dtype: str | None, force: bool) -> None:
    """Refuse what cannot be done before anything is loaded or written."""
    if fmt not in FORMATS:
        raise CharlmError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if dtype is not None and dtype not in DTYPES:
        raise CharlmError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype not in (None, "fp32") and fmt != "weights":
        raise CharlmError(f"--dtype {dtype}: only --format weights stores a lower precision")
    if out.is_dir():
        raise CharlmError(f"{out}: is a folder; expected a file name for --out")
    if out.exists() and not force:
        raise CharlmError(f"{out}: already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise CharlmError(f"{out.parent}: no such folder for --out")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise missing_package("--format onnx", ["onnx", "onnxruntime"], "export") from None


def export(
    run: str | Path, fmt: str, out: str | Path, dtype: str | None = None, force: bool = False
) -> Exported:
    """Export the checkpoint a RUN argument means as `fmt` into `out` (see the module doc)."""
    from charlm.checkpoint import load_model

    out = Path(out)
    check_request(fmt, out, dtype, force)
    loaded = load_model(run, "cpu")
    source = loaded.checkpoint.path
    if fmt == "weights":
        diff, steps = None, 0
        _write_atomic(out, lambda tmp: tmp.write_bytes(weights_bytes(loaded, dtype or "fp32")))
    else:
        found: list[float] = []
        writer = write_onnx if fmt == "onnx" else write_torchscript
        _write_atomic(out, lambda tmp: found.append(writer(loaded, tmp)))
        diff, steps = found[0], PROBE_STEPS
    return Exported(out, fmt, out.stat().st_size, source, source.stat().st_size, diff, steps)


def _write_atomic(out: Path, write: Callable[[Path], Any]) -> None:
    """Write through a temporary file beside `out`; rename only once `write` returned."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise CharlmError(f"{out}: cannot write the export ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def record_of(loaded: ckpt.Loaded, fmt: str, dtype: str = "fp32") -> dict[str, Any]:
    """The JSON an exported file carries: what to rebuild the model and read its ids with."""
    record = loaded.checkpoint.record
    return {
        **{k: record[k] for k in DESCRIBED if k in record},
        "config": config_to_dict(loaded.config),
        "vocab": loaded.vocab.to_dict(),
        "step": loaded.checkpoint.step,
        "parameters": loaded.model.num_parameters(),
        "exported": {"from": str(loaded.checkpoint.path), "format": fmt, "dtype": dtype},
    }


def weights_bytes(loaded: ckpt.Loaded, dtype: str) -> bytes:
    """A charlm checkpoint holding only `model/` tensors (floating ones cast to `dtype`)."""
    low = DTYPES[dtype]
    tensors = {
        f"model/{k}": (v.to(low) if v.is_floating_point() else v).contiguous()
        for k, v in loaded.model.state_dict().items()
    }
    return ckpt.checkpoint_bytes(tensors, record_of(loaded, "weights", dtype))


def step_inputs(loaded: ckpt.Loaded, batch: int) -> tuple[torch.Tensor, ...]:
    """Example inputs of the step: ids and a zero state (h, and c for an LSTM)."""
    return (torch.zeros(batch, dtype=torch.long), *loaded.model.init_state(batch, "cpu"))


def state_names(loaded: ckpt.Loaded) -> list[str]:
    return ["h", "c"] if loaded.config.model.cell == "lstm" else ["h"]


def step_record(loaded: ckpt.Loaded, fmt: str) -> str:
    names = state_names(loaded)
    m = loaded.config.model
    io = {
        "inputs": ["ids", *names],
        "outputs": ["logits", *[f"{n}_out" for n in names]],
        "state_shape": [m.num_layers, "batch", m.hidden_size],
    }
    return json.dumps({**record_of(loaded, fmt), "format": STEP_FORMAT, **io})


def probe(loaded: ckpt.Loaded, run_step: Callable[..., list[Any]]) -> float:
    """Largest |logit difference| between `run_step` and the PyTorch step over a seeded probe of
    PROBE_STEPS ids in two streams, the state carried."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(loaded.vocab), (PROBE_STEPS, 2), generator=gen)
    step = Step(loaded.model).eval()
    ours = theirs = list(step_inputs(loaded, 2)[1:])
    worst = 0.0
    with torch.no_grad():
        for x in ids:
            want = step(x, *ours)
            got = run_step(x, *theirs)
            worst = max(worst, float((want[0] - torch.as_tensor(got[0])).abs().max()))
            ours, theirs = list(want[1:]), [torch.as_tensor(s) for s in got[1:]]
    if not math.isfinite(worst) or worst >= TOLERANCE:
        raise CharlmError(
            f"the exported step differs from PyTorch's by {worst:.3g} in a logit on the probe "
            f"(limit {TOLERANCE:g}); nothing was written"
        )
    return worst


def write_onnx(loaded: ckpt.Loaded, path: Path) -> float:
    """Export the step through torch.onnx, add the JSON metadata, check it in onnxruntime."""
    import onnx
    import onnxruntime as ort

    names = state_names(loaded)
    outs = [f"{n}_out" for n in names]
    axes = {"ids": {0: "batch"}, "logits": {0: "batch"}}
    axes.update({n: {1: "batch"} for n in [*names, *outs]})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Step(loaded.model).eval(), step_inputs(loaded, 1), str(path), dynamo=False,
            input_names=["ids", *names], output_names=["logits", *outs], dynamic_axes=axes,
        )  # fmt: skip
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"charlm": step_record(loaded, "onnx")})
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = ["ids", *names]

    def run(*args: torch.Tensor) -> list[Any]:
        return session.run(None, {n: a.numpy() for n, a in zip(feeds, args, strict=True)})

    return probe(loaded, run)


def write_torchscript(loaded: ckpt.Loaded, path: Path) -> float:
    """Trace the step, save it with the JSON as an extra file, load it back and check it."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Step(loaded.model).eval(), step_inputs(loaded, 1))
        extra = {"charlm.json": step_record(loaded, "torchscript")}
        torch.jit.save(traced, str(path), _extra_files=extra)
        back = torch.jit.load(str(path), map_location="cpu")
    return probe(loaded, lambda *args: list(back(*args)))
