"""The training state, and the one checkpoint it saves to and restores from.

The state is a list of parts; each saves its tensors (under its own key prefix) and its fields of
the checkpoint's JSON record, and restores them. Adding something a resume needs is one new part
in `TrainState.parts`. The file's keys stay as they always were: tensors `model/`, `trained/`,
`optim/`, `state/`, `rng/`; record fields `step`, `elapsed_s`, `batcher`, `window`, ...
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from charlm import checkpoint as ckpt
from charlm import distributed
from charlm.batches import PositionedBatcher
from charlm.config import Config, config_to_dict
from charlm.distributed import Dist
from charlm.errors import CharlmError
from charlm.evaluate import EvalResult
from charlm.model import CharLM, State, mps_available
from charlm.precision import TrainPrecision
from charlm.vocab import Vocab

Tensors = dict[str, torch.Tensor]
Record = dict[str, Any]


class Part(Protocol):
    """One piece of the training state that saves and restores itself."""

    def save(self) -> tuple[Tensors, Record]: ...

    def load(self, checkpoint: ckpt.Checkpoint) -> None: ...


@dataclass
class Counters:
    """Where the run is: steps, clock, and the best interval eval so far."""

    step: int = 0
    elapsed: float = 0.0
    eval_s: float = 0.0  # of `elapsed`, the seconds spent in interval evals
    best_val_loss: float = math.inf
    best_step: int = 0
    last_val: EvalResult | None = None
    interval_evals: int = 0
    final_eval_s: float = 0.0  # the evals after the clock stopped (the final eval's among them)
    final: bool = False  # the budget is spent and last_val is the final, whole-split score

    def save(self) -> tuple[Tensors, Record]:
        return {}, {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "eval_s": self.eval_s,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "best_step": self.best_step,
            "last_val": None if self.last_val is None else self.last_val.to_dict(),
            "interval_evals": self.interval_evals,
            "final_eval_s": self.final_eval_s,
            "final": self.final,
        }

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        record = checkpoint.record
        self.step = int(record["step"])
        self.elapsed = float(record["elapsed_s"])
        self.eval_s = float(record.get("eval_s", 0.0))
        best = record.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else float(best)
        self.best_step = int(record.get("best_step", 0))
        if record.get("last_val"):
            fields = ("loss", "bpc", "perplexity", "chars", "streams", "seconds")
            self.last_val = EvalResult(**{k: record["last_val"][k] for k in fields})
        # Older checkpoints did not count their evals; a best score means at least one ran.
        self.interval_evals = int(record.get("interval_evals", best is not None))
        self.final_eval_s = float(record.get("final_eval_s", 0.0))
        self.final = record.get("final", self._spent_before(record)) is True

    def _spent_before(self, record: Record) -> bool:
        """`final` for a checkpoint written before it was recorded: the checkpoint of the step
        that spent the run's budget was written after that step's evals."""
        train = (record.get("config") or {}).get("train") or {}
        steps, seconds = train.get("max_steps"), train.get("max_time")
        spent = (steps is not None and self.step >= steps) or (
            seconds is not None and self.elapsed >= seconds
        )
        return spent and self.last_val is not None


@dataclass
class LossWindow:
    """The running train-loss sum between metrics lines: saved, so a resumed run logs the same
    averages as one that never stopped (under torchrun, averaged over the processes)."""

    device: torch.device
    dist: Dist
    loss: torch.Tensor = field(init=False)
    steps: int = 0

    def __post_init__(self) -> None:
        self.loss = torch.zeros((), device=self.device)

    def save(self) -> tuple[Tensors, Record]:
        loss = distributed.mean_all(self.loss, self.dist)
        return {}, {"window": {"loss_sum": float(loss), "steps": self.steps}}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        window = checkpoint.record.get("window", {"loss_sum": 0.0, "steps": 0})
        self.loss = torch.tensor(window["loss_sum"], device=self.device)
        self.steps = int(window["steps"])


@dataclass
class Weights:
    """The model's weights; with a weight average, `model/` is the average (what evals score and
    sampling loads) and `trained/` the weights the optimizer moves."""

    model: CharLM
    averaged: CharLM | None

    def save(self) -> tuple[Tensors, Record]:
        scored = self.averaged if self.averaged is not None else self.model
        tensors = {f"model/{k}": v for k, v in scored.state_dict().items()}
        if self.averaged is not None:
            tensors.update({f"trained/{k}": v for k, v in self.model.state_dict().items()})
        return tensors, {"parameters": self.model.num_parameters()}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        if self.averaged is None:
            self.model.load_state_dict(checkpoint.group("model"))
        else:
            self.model.load_state_dict(checkpoint.group("trained"))
            self.averaged.load_state_dict(checkpoint.group("model"))


@dataclass
class Optimizer:
    optimizer: torch.optim.Optimizer
    fused: bool

    def save(self) -> tuple[Tensors, Record]:
        tensors, record = ckpt.pack_optimizer(self.optimizer.state_dict())
        return {f"optim/{k}": v for k, v in tensors.items()}, {"optimizer": record}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        saved = ckpt.unpack_optimizer(checkpoint.group("optim"), checkpoint.record["optimizer"])
        for group in saved["param_groups"]:  # a checkpoint from before fused AdamW
            group["fused"] = self.fused
        self.optimizer.load_state_dict(saved)


@dataclass
class Scaler:
    """fp16's gradient scaler (None in every other precision)."""

    scaler: torch.amp.GradScaler | None

    def save(self) -> tuple[Tensors, Record]:
        return {}, {"grad_scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        if self.scaler is not None and checkpoint.record.get("grad_scaler"):
            self.scaler.load_state_dict(checkpoint.record["grad_scaler"])


@dataclass
class Batcher:
    batcher: PositionedBatcher

    def save(self) -> tuple[Tensors, Record]:
        return {}, {"batcher": self.batcher.state_dict()}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        self.batcher.load_state_dict(checkpoint.record["batcher"])


class Rng:
    """Every random stream: Python's, NumPy's, torch's CPU one and each GPU's (CUDA, mps)."""

    def save(self) -> tuple[Tensors, Record]:
        np_state = np.random.get_state()
        py = random.getstate()
        tensors = {"rng/torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda{i}"] = s
        if mps_available():
            tensors["rng/mps"] = torch.mps.get_rng_state()
        record = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *[float(v) for v in np_state[2:]]],
        }
        return tensors, {"rng": record}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        """Put back every random state a checkpoint holds (GPU ones only for GPUs present)."""
        record, tensors = checkpoint.record["rng"], checkpoint.group("rng")
        version, internal, gauss = record["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = record["numpy"]
        np.random.set_state(
            (kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached)
        )
        torch.set_rng_state(tensors["torch_cpu"])
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                if f"cuda{i}" in tensors:
                    torch.cuda.set_rng_state(tensors[f"cuda{i}"], i)
        if "mps" in tensors and mps_available():
            torch.mps.set_rng_state(tensors["mps"])


@dataclass
class RunRecord:
    """What the run is (config, vocabulary, corpus, precision): saved for sampling, `info` and
    resume; on restore only checked, against the corpus the run reads now."""

    config: Config
    vocab: Vocab
    corpus: Record
    device: torch.device
    precision: TrainPrecision

    def save(self) -> tuple[Tensors, Record]:
        return {}, {
            "config": config_to_dict(self.config),
            "vocab": self.vocab.to_dict(),
            "corpus": self.corpus,
            "torch_version": torch.__version__,
            "device": str(self.device),
            "precision": self.precision.name,
            "precision_probe": self.precision.probe,
        }

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        if checkpoint.record.get("corpus", {}).get("sha256") != self.corpus["sha256"]:
            raise CharlmError(
                f"{checkpoint.path}: the corpus {self.corpus['source']} changed since this "
                f"checkpoint was written; a resumed run must read the same text"
            )


@dataclass
class Hidden:
    """The hidden state carried between batches, of every row of the global batch (fp32).

    Under torchrun each process holds its own rows: saving gathers them, loading takes this
    process's rows again."""

    state: State
    rows: slice
    local_batch: int
    device: torch.device
    dist: Dist

    def save(self) -> tuple[Tensors, Record]:
        gathered = [distributed.gather_rows(s, self.dist, dim=1) for s in self.state]
        return {f"state/{i}": s.float() for i, s in enumerate(gathered)}, {}

    def load(self, checkpoint: ckpt.Checkpoint) -> None:
        saved = checkpoint.group("state")
        state = tuple(
            saved[str(i)][:, self.rows].to(self.device, torch.float32) for i in range(len(saved))
        )
        if any(s.shape[1] != self.local_batch for s in state):
            raise ValueError("the saved hidden state does not match train.batch_size")
        self.state = state


def save_parts(parts: list[Part]) -> tuple[Tensors, Record]:
    """Every part's tensors and record fields, merged (under torchrun, on every process)."""
    tensors: Tensors = {}
    record: Record = {}
    for part in parts:
        more, fields = part.save()
        tensors.update(more)
        record.update(fields)
    return tensors, record


def load_parts(parts: list[Part], checkpoint: ckpt.Checkpoint, after: Callable[[], None]) -> None:
    """Restore every part from `checkpoint`, in order; a damaged or mismatched checkpoint is
    one CharlmError naming the file. `after` runs once all are restored."""
    parts[0].load(checkpoint)  # the run record: a changed corpus is its own error
    try:
        for part in parts[1:]:
            part.load(checkpoint)
        after()
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CharlmError(
            f"{checkpoint.path}: cannot restore training state from it ({first})"
        ) from None
