"""The training loop: data -> model -> AdamW -> metrics, evals and checkpoints in a run folder.

`train(config, run_dir)` is the whole job and reports progress through a callback, so the CLI (or a
notebook, or a test) decides how to show it. The learning rate is a pure function of the step (or
of elapsed time when only a time budget bounds the run), so it needs no state of its own.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import shlex
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlm import checkpoint as ckpt
from charlm import distributed, tblog
from charlm.batches import Splits, check_train_size, make_batcher, split_ids
from charlm.cache import prepare_corpus, split_sizes
from charlm.config import (
    BUILTIN_CORPUS,
    Config,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_yaml,
)
from charlm.distributed import Dist
from charlm.errors import CharlmError
from charlm.evaluate import EvalResult, evaluate_ids
from charlm.model import CharLM, State, detach_state, hardware_bf16, resolve_device
from charlm.runs import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    Callback,
    MetricsLog,
    check_resume_dir,
    check_run_dir,
    prepare_run_dir,
    rollback_metrics,
    running_lock,
    write_failure,
    write_json,
)
from charlm.vocab import Vocab

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Keys a resumed run may change: budgets (which extend or end the run) and the device (to resume a
# GPU run on a CPU machine). Everything else is the recorded config, so the run stays one run.
RESUME_KEYS = ("train.max_steps", "train.max_time", "train.device")


def resume_command(run_dir: Path) -> str:
    return f"charlm train --resume {shlex.quote(str(run_dir))}"


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint; not a failure.

    The CLI maps it to exit code 128 + signal number (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path, run_dir: Path) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.step = step
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        self.exit_code = 128 + signum
        self.resume_command = resume_command(run_dir)
        super().__init__(
            f"stopped by {self.signal_name} after step {step}; checkpoint saved to {checkpoint}"
        )


class TrainingDiverged(CharlmError):
    """A non-finite loss or gradient norm: the step was not applied and nothing was saved."""

    def __init__(self, message: str, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


def lr_at(config: Config, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio over the run's budget.

    Progress is measured in steps when `max_steps` is set, else in seconds of `max_time`.
    """
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.max_steps is not None:
        span = max(1, t.max_steps - t.warmup_steps)
        progress = (step - t.warmup_steps) / span
    else:
        assert t.max_time is not None
        progress = elapsed / t.max_time
    progress = min(max(progress, 0.0), 1.0)
    floor = t.lr * t.min_lr_ratio
    return floor + (t.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def update_average(
    average: list[torch.Tensor], weights: list[torch.Tensor], cap: float, step: int
) -> None:
    """average <- average + (1 - decay) (weights - average) after (0-based) step `step`, one
    fused call for all tensors, with decay = min(cap, (1 + t) / (10 + t)).

    The ramp makes the average span about the last ninth of the steps so far until `cap` takes
    over: a fixed 500-step span cost a one-minute LSTM run 0.03, while five-minute runs reach
    the cap long before their end (docs/benchmarks.md)."""
    decay = min(cap, (1 + step) / (10 + step))
    torch._foreach_lerp_(average, weights, 1.0 - decay)


@dataclass
class Data:
    vocab: Vocab
    splits: Splits
    corpus_record: dict[str, Any]


def prepare_data(config: Config) -> Data:
    """Encode the corpus into its id cache (or reuse it) and split the memory-mapped ids.

    The split sizes are checked after counting and before the cache is written, so a corpus too
    small to train on leaves nothing behind.
    """
    d, t = config.data, config.train

    def check(chars: int) -> None:
        n_train, n_val, _ = split_sizes(chars, d.val_fraction, d.test_fraction)
        if n_val < 2:
            raise CharlmError(
                f"{d.corpus or BUILTIN_CORPUS}: the val split has {n_val} characters "
                f"({chars:,} in all x data.val_fraction={d.val_fraction}); "
                f"need at least 2: use a larger corpus or a larger data.val_fraction"
            )
        check_train_size(n_train, t.batch_size, t.seq_len, t.batching)

    corpus = prepare_corpus(d, check)
    splits = split_ids(corpus.ids, d.val_fraction, d.test_fraction)
    spec = corpus.source
    resolved = spec if spec == BUILTIN_CORPUS else str(Path(spec).absolute())
    record = {
        "source": spec,
        "resolved": resolved,
        "sha256": corpus.sha256,
        "chars": corpus.chars,
        "files": len(corpus.files),
    }
    return Data(vocab=corpus.vocab, splits=splits, corpus_record=record)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    elapsed_s: float
    chars_per_s: float
    eval_s: float
    parameters: int
    final_val: EvalResult
    best_val_loss: float
    best_step: int
    last_checkpoint: Path
    best_checkpoint: Path

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / math.log(2)

    @property
    def step_chars_per_s(self) -> float:
        """Training chars/s outside the interval evals: the loop's own speed, which `eval_s`
        (their share of `elapsed_s`) does not dilute."""
        steps_s = self.elapsed_s - self.eval_s
        return self.chars_per_s * self.elapsed_s / steps_s if steps_s > 0 else 0.0


def _rng_record() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *[float(v) for v in np_state[2:]]],
    }


def _rng_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda{i}"] = s
    return out


def _restore_rng(record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Put back every random state a checkpoint holds (CUDA ones only for GPUs present)."""
    version, internal, gauss = record["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = record["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"cuda{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"cuda{i}"], i)


def _bf16_forward_runs(model_config: ModelConfig, device: torch.device) -> bool:
    """Whether a two-character model of this layout runs forward under bf16 autocast here."""
    with torch.random.fork_rng(devices=[]):  # the probe's weights leave the run's RNG as it was
        probe = CharLM(model_config, 2).to(device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            probe(torch.zeros(1, 1, dtype=torch.long, device=device))
    except RuntimeError:
        return False
    return True


def native_bf16(device: torch.device, model_config: ModelConfig) -> bool:
    """Whether `train.precision: auto` may train this model in bf16 on `device`: the hardware has
    bf16 arithmetic and the model runs in it. Elsewhere oneDNN either refuses the fused cell or
    emulates bf16, which is slower than fp32, so auto keeps fp32. On a GPU this decides; on a
    CPU the flag did not say whether bf16 is faster (docs/benchmarks.md), so the trainer then
    also times a step in each (`time_bf16_step`).
    """
    return hardware_bf16(device) and _bf16_forward_runs(model_config, device)


BF16_MIN_SPEEDUP = 1.1
"""On a CPU, `auto` takes bf16 only if a timed training step runs at least this much faster in it:
AVX-512 BF16 alone does not say. On a 2-core AMD EPYC bf16 steps ran 1.3x fp32's; on a 2-core
Xeon with the same flag but no AMX exposed, 0.7-0.9x (docs/benchmarks.md)."""


def time_bf16_step(
    model_config: ModelConfig,
    vocab_size: int,
    batch: int,
    seq_len: int,
    device: torch.device,
    budget_s: float = 2.0,
) -> tuple[float, float]:
    """-> (fp32, bf16) seconds of one forward and backward of this model at this batch shape.

    A throwaway model with its own weights (the run's random streams are left as they were);
    after one warm-up step each, up to three steps of each precision alternate so a noisy machine
    slows both alike, and the fastest of each counts: about eight training steps, or four once
    the probe has taken `budget_s` (a big model's step is slow enough to time once).
    """
    began = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        probe = CharLM(model_config, vocab_size).to(device)
        x = torch.randint(vocab_size, (batch, seq_len), device=device)
        best = {"fp32": math.inf, "bf16": math.inf}
        for i in range(4):
            if i > 1 and time.perf_counter() - began > budget_s:
                break
            for name in best:
                start = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
                    logits, _ = probe(x)
                F.cross_entropy(logits.reshape(-1, vocab_size).float(), x.reshape(-1)).backward()
                probe.zero_grad(set_to_none=True)
                if i:
                    best[name] = min(best[name], time.perf_counter() - start)
    return best["fp32"], best["bf16"]


class Trainer:
    """One training run. Kept as a class only so its state can be saved from one place.

    Under torchrun (`info.enabled`) every process builds the same model and reads the same global
    batches, trains on its own rows of them through DistributedDataParallel, and only rank 0
    writes files and reports events.
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        on_event: Callback | None = None,
        info: Dist | None = None,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.dist = info or Dist()
        self.emit: Callback = (on_event if self.dist.is_main else None) or (lambda event: None)
        self.device = distributed.place(resolve_device(config.train.device), self.dist)
        # AdamW's fused kernel: one vectorised pass per parameter instead of a dozen tensor ops
        # (on the CPU torch otherwise picks its per-tensor loop); see docs/benchmarks.md.
        self.fused_adamw = self.device.type in ("cpu", "cuda")
        t = config.train
        self.local_batch = self.dist.local_batch(t.batch_size)
        random.seed(t.seed)
        np.random.seed(t.seed % 2**32)
        torch.manual_seed(t.seed)
        self.data = prepare_data(config)
        self.batcher = make_batcher(
            self.data.splits.train, t.batching, t.batch_size, t.seq_len, seed=t.seed
        )
        self.model = CharLM(config.model, len(self.data.vocab)).to(self.device)
        # The module that trains: DDP averages gradients across processes in backward. Weights,
        # evals and checkpoints use the plain model, so a checkpoint has the same keys either way.
        self.net: torch.nn.Module = self.model
        # With train.ema_decay, an average of the weights along the way is what gets scored,
        # saved as the run's model and sampled: at the steps five minutes buy it scored 0.007 to
        # 0.015 below the last weights (docs/benchmarks.md). The trained weights stay training
        # state.
        self.averaged: CharLM | None = None
        if t.ema_decay is not None:
            self.averaged = copy.deepcopy(self.model).requires_grad_(False)
        if self.dist.enabled:
            self._seed_dropout(0)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=t.lr,
            betas=(t.beta1, t.beta2),
            weight_decay=t.weight_decay,
            fused=self.fused_adamw,
        )
        self.state: State = self.model.init_state(self.local_batch, self.device)
        self.precision_probe: dict[str, float] | None = None  # auto's timing, on a CPU
        self.precision, self.scaler = self._precision_check()
        self.step = 0
        self.elapsed = 0.0
        self.eval_s = 0.0  # of `elapsed`, the seconds spent in interval evals
        self.best_val_loss = math.inf
        self.best_step = 0
        self.last_val: EvalResult | None = None
        # The running train-loss window between metrics lines: saved, so a resumed run logs
        # the same averages as one that never stopped.
        self.window_loss = torch.zeros((), device=self.device)
        self.window_steps = 0
        self.last_checkpoint: Path | None = None
        # On a GPU, reading the finiteness check every step would make the host wait for the
        # device every step. There the first non-finite step (step, loss, norm) is recorded on
        # the device instead and read where the loop waits anyway: metrics lines, evals, saves.
        # (Under DDP the processes agree on it every step in one collective, as before.)
        self.deferred_check = self.device.type == "cuda" and not self.dist.enabled
        self.first_bad = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.stop_signal: int | None = None
        # Under torchrun: the signal and rank 0's clock as all processes agreed on them.
        self.agreed_signal: int | None = None
        self.agreed_elapsed = 0.0
        self.clock_start = time.perf_counter()

    def _seed_dropout(self, step: int) -> None:
        """Give every process other than rank 0 its own dropout stream (seed + rank)."""
        if self.dist.rank > 0:
            t = self.config.train
            torch.manual_seed(t.seed + self.dist.rank + step * self.dist.world_size)

    # -- state: the one save/load pair (everything a resume needs) ------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON record of the whole training state at the end of `self.step`.

        Under torchrun every process must call it (it gathers the carried state of all rows and
        averages the loss window), so the record is the global one a single process would save.
        """
        state = [distributed.gather_rows(s, self.dist, dim=1) for s in self.state]
        window_loss = distributed.mean_all(self.window_loss, self.dist)
        opt_tensors, opt_record = ckpt.pack_optimizer(self.optimizer.state_dict())
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model/{k}": v for k, v in self.scored.state_dict().items()})
        if self.averaged is not None:  # the weights the optimizer moves, for a resume
            tensors.update({f"trained/{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"optim/{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"state/{i}": s for i, s in enumerate(state)})
        tensors.update({f"rng/{k}": v for k, v in _rng_tensors().items()})
        record = {
            "config": config_to_dict(self.config),
            "vocab": self.data.vocab.to_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed,
            "eval_s": self.eval_s,
            "batcher": self.batcher.state_dict(),
            "window": {"loss_sum": float(window_loss), "steps": self.window_steps},
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "best_step": self.best_step,
            "last_val": None if self.last_val is None else self.last_val.to_dict(),
            "parameters": self.model.num_parameters(),
            "corpus": self.data.corpus_record,
            "optimizer": opt_record,
            "rng": _rng_record(),
            "torch_version": torch.__version__,
            "device": str(self.device),
            "precision": self.precision,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }
        return tensors, record

    def load_state(self, checkpoint: ckpt.Checkpoint) -> None:
        """Restore what `state_dict` saved; tensors are loaded on the CPU, then moved here."""
        record, where = checkpoint.record, checkpoint.path
        if record.get("corpus", {}).get("sha256") != self.data.corpus_record["sha256"]:
            raise CharlmError(
                f"{where}: the corpus {self.data.corpus_record['source']} changed since this "
                f"checkpoint was written; a resumed run must read the same text"
            )
        try:
            if self.averaged is None:
                self.model.load_state_dict(checkpoint.group("model"))
            else:  # "model" is then the average, and "trained" the weights it averages
                self.model.load_state_dict(checkpoint.group("trained"))
                self.averaged.load_state_dict(checkpoint.group("model"))
            saved_optim = ckpt.unpack_optimizer(checkpoint.group("optim"), record["optimizer"])
            for group in saved_optim["param_groups"]:  # a checkpoint from before fused AdamW
                group["fused"] = self.fused_adamw
            self.optimizer.load_state_dict(saved_optim)
            saved_state = checkpoint.group("state")
            rows = self.dist.shard(self.config.train.batch_size)
            self.state = tuple(
                saved_state[str(i)][:, rows].to(self.device) for i in range(len(saved_state))
            )
            if any(s.shape[1] != self.local_batch for s in self.state):
                raise ValueError("the saved hidden state does not match train.batch_size")
            self.batcher.load_state_dict(record["batcher"])
            window = record.get("window", {"loss_sum": 0.0, "steps": 0})
            self.window_loss = torch.tensor(window["loss_sum"], device=self.device)
            self.window_steps = int(window["steps"])
            self.step = int(record["step"])
            self.elapsed = float(record["elapsed_s"])
            self.eval_s = float(record.get("eval_s", 0.0))
            best = record.get("best_val_loss")
            self.best_val_loss = math.inf if best is None else float(best)
            self.best_step = int(record.get("best_step", 0))
            if record.get("last_val"):
                fields = ("loss", "bpc", "perplexity", "chars", "streams", "seconds")
                self.last_val = EvalResult(**{k: record["last_val"][k] for k in fields})
            if self.scaler is not None and record.get("grad_scaler"):
                self.scaler.load_state_dict(record["grad_scaler"])
            _restore_rng(record["rng"], checkpoint.group("rng"))
            self._seed_dropout(self.step)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CharlmError(f"{where}: cannot restore training state from it ({first})") from None
        self.last_checkpoint = where

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 writes; every process takes part in gathering it)."""
        self.check_deferred()
        tensors, record = self.state_dict()
        if self.dist.is_main:
            ckpt.save_checkpoint(path, tensors, record)
        self.emit({"event": "checkpoint", "path": str(path), "step": self.step})

    def save_step(self) -> Path:
        """Write this step's checkpoint and prune the old ones; the resume point."""
        path = self.run_dir / CHECKPOINT_DIR / ckpt.step_name(self.step)
        self.save(path)
        self.last_checkpoint = path
        if self.dist.is_main:
            ckpt.prune(path.parent, self.config.train.keep_last)
        return path

    # -- stop signals ------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT, frame: object = None) -> None:
        """Ask the loop to stop after the current step (the SIGINT/SIGTERM handler).

        Only records the first signal: a second Ctrl-C while the checkpoint is being written is
        ignored, so it cannot cut the save short.
        """
        if self.stop_signal is None:
            self.stop_signal = signum

    @contextlib.contextmanager
    def stop_signals(self) -> Iterator[None]:
        """Route SIGINT/SIGTERM to `request_stop` (main thread only), then restore the old ones."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self.request_stop)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)

    def _precision_check(self) -> tuple[str, torch.amp.GradScaler | None]:
        """The precision this run trains in, refused up front if the device cannot; fp16's scaler.

        `auto` resolves here, on this device, so a run resumed on another machine may change
        precision; the checkpoint and summary record the one each stretch trained in.
        """
        precision = self.config.train.precision
        if precision == "fp16" and self.device.type != "cuda":
            raise CharlmError(
                "train.precision: 'fp16' needs a CUDA GPU (it trains with a gradient scaler "
                "there); on the CPU use fp32 or bf16"
            )
        if precision == "auto":
            precision = "bf16" if native_bf16(self.device, self.config.model) else "fp32"
            if precision == "bf16" and self.device.type == "cpu":
                t = self.config.train
                fp32_s, bf16_s = time_bf16_step(
                    self.config.model, len(self.data.vocab), self.local_batch, t.seq_len,
                    self.device,
                )  # fmt: skip
                self.precision_probe = {"fp32_step_s": fp32_s, "bf16_step_s": bf16_s}
                faster = fp32_s >= BF16_MIN_SPEEDUP * bf16_s
                # Every process must train in the same precision: bf16 if any timed it faster.
                faster = distributed.agree_max([float(faster)], self.dist)[0] > 0
                precision = "bf16" if faster else "fp32"
        elif (
            precision == "bf16"
            and self.device.type == "cpu"
            and not _bf16_forward_runs(self.config.model, self.device)
        ):
            raise CharlmError(
                "train.precision: 'bf16' is not supported by this CPU's fused "
                f"{self.config.model.cell.upper()} kernel (oneDNN needs AVX-512 BF16 for it);"
                " use fp32, auto, or model.impl=reference"
            )
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        return precision, scaler

    # -- one step ----------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's precision: plain fp32, or autocast to bf16 / fp16."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward one batch with the carried state; the mean next-character loss."""
        with self.autocast():
            logits, state = self.net(x, self.state)
        self.state = detach_state(state)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Backward, clip and apply one update, unless the loss or gradient norm is not finite.

        With fp16 a gradient scaler multiplies the loss so small gradients survive; it skips a
        step whose gradients overflowed and lowers its scale, so there only the loss decides
        divergence.
        """
        loss = self.compute_loss(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        clip = self.config.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), clip if clip > 0 else math.inf
        )
        finite_norm = torch.isfinite(norm) if scaler is None else torch.ones((), dtype=torch.bool)
        finite_t = torch.isfinite(loss.detach()) & finite_norm.to(loss.device)
        if self.deferred_check:
            self._record_bad(finite_t, loss.detach(), norm.detach())
        else:
            finite = bool(finite_t)
            if self.dist.enabled:
                finite = self._agree(finite)
            if not finite:
                self._diverged(float(loss.detach()), float(norm))
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        if self.averaged is not None:
            assert self.config.train.ema_decay is not None
            update_average(
                list(self.averaged.parameters()),
                [p.detach() for p in self.model.parameters()],
                self.config.train.ema_decay,
                self.step,
            )
        return loss.detach()

    @property
    def scored(self) -> CharLM:
        """The model that evals score and checkpoints save as the run's model."""
        return self.averaged if self.averaged is not None else self.model

    def _agree(self, finite: bool) -> bool:
        """One collective per step: rank 0's clock, any stop signal, any non-finite loss.

        Every process then takes the same decisions (time budget, time-based learning rate,
        stopping, divergence), so none is left waiting in a collective the others skipped.
        """
        elapsed = time.perf_counter() - self.clock_start if self.dist.is_main else 0.0
        signum = float(self.stop_signal or 0)
        now, sig, bad = distributed.agree_max([elapsed, signum, 0.0 if finite else 1.0], self.dist)
        self.agreed_elapsed = now
        if sig and self.agreed_signal is None:
            self.agreed_signal = int(sig)
        return not bad

    def _record_bad(self, finite: torch.Tensor, loss: torch.Tensor, norm: torch.Tensor) -> None:
        """Keep the first non-finite step's (step, loss, norm) on the device: no host sync."""
        bad = ~finite & (self.first_bad[0] == 0)
        step = torch.full((), self.step + 1, dtype=torch.float64, device=self.device)
        now = torch.stack([step, loss.double(), norm.to(self.device).double()])
        self.first_bad.copy_(torch.where(bad, now, self.first_bad))

    def check_deferred(self) -> None:
        """Stop with the divergence error if a step since the last check was not finite.

        The steps after it were applied (with non-finite numbers), but nothing is saved before
        this check, so the last good checkpoint is what remains, as with the per-step check.
        """
        if self.deferred_check:
            step, loss, norm = self.first_bad.tolist()
            if step:
                self._diverged(loss, norm, int(step))

    def _diverged(self, loss: float, norm: float, step: int | None = None) -> None:
        found_later = step is not None
        step = self.step + 1 if step is None else step
        last = self.last_checkpoint
        where = (
            f"last good checkpoint {last} (left untouched)"
            if last is not None
            else "no checkpoint had been saved yet"
        )
        if self.dist.is_main:
            write_json(
                self.run_dir / SUMMARY_NAME,
                {
                    "status": "diverged",
                    "step": step,
                    "last_checkpoint": None if last is None else str(last),
                },
            )
        distributed.barrier(self.dist)
        outcome = (
            f"noticed at step {self.step}, before anything was saved"
            if found_later
            else "the step was not applied"
        )
        message = (
            f"training diverged at step {step}: loss {loss:.4g}, gradient norm {norm:.4g} "
            f"(not finite); {outcome}; {where}. Try a lower train.lr or a "
            f"train.grad_clip > 0 in a new run"
        )
        if not self.dist.is_main:
            raise distributed.PeerFailed(message)
        raise TrainingDiverged(message, step, last)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, full: bool) -> EvalResult:
        t = self.config.train
        val = self.data.splits.val
        if not full and t.eval_chars is not None:
            val = val[: t.eval_chars]
        if not self.dist.enabled:
            return evaluate_ids(self.scored, val, t.eval_streams)
        # Each process scores its share of the segments; the float64 sums are added up, so the
        # score is that of a single-process eval (up to float rounding).
        return evaluate_ids(
            self.scored,
            val,
            t.eval_streams,
            rows=self.dist.rows,
            reduce=lambda total: distributed.sum_all(total, self.dist),
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the budget; SIGINT/SIGTERM stop it cleanly after a checkpoint."""
        if self.dist.enabled and self.net is self.model:
            # Wrapped here, not in __init__: DDP's first collective must come after every
            # process has built (and maybe restored) its model without error.
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        try:
            with self.stop_signals():
                return self._run()
        finally:
            # DDP's reducer holds the process group; dropped here, the group can be torn down
            # while Python is alive (see `distributed.process_group`).
            self.net = self.model

    def _run(self) -> TrainResult:
        t = self.config.train
        ckpt_dir = self.run_dir / CHECKPOINT_DIR
        metrics = MetricsLog(self.run_dir / METRICS_NAME)
        vocab_size = len(self.data.vocab)
        self.emit(
            {
                "event": "start",
                "run_dir": str(self.run_dir),
                "device": str(self.device),
                "precision": self.precision,
                "precision_probe": self.precision_probe,
                "parameters": self.model.num_parameters(),
                "vocab_size": vocab_size,
                "train_chars": len(self.data.splits.train),
                "val_chars": len(self.data.splits.val),
                "max_steps": t.max_steps,
                "max_time": t.max_time,
                "step": self.step,
            }
        )
        self.model.train()
        window_time = 0.0
        start = time.perf_counter() - self.elapsed
        self.clock_start = start
        while True:
            step_start = time.perf_counter()
            lr = lr_at(self.config, self.step, self.elapsed)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y, fresh = self.batcher.next()
            if fresh:
                self.state = self.model.init_state(self.local_batch, self.device)
            if self.dist.enabled:
                rows = self.dist.shard(t.batch_size)
                x, y = x[rows], y[rows]
            if self.device.type == "cuda":
                # From page-locked memory the copies really are asynchronous.
                x, y = x.pin_memory(), y.pin_memory()
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            self.window_loss += self.train_step(x, y)
            self.step += 1
            self.window_steps += 1
            window_time += time.perf_counter() - step_start
            self.elapsed = self.agreed_elapsed if self.dist.enabled else time.perf_counter() - start
            done = (t.max_steps is not None and self.step >= t.max_steps) or (
                t.max_time is not None and self.elapsed >= t.max_time
            )
            row: dict[str, Any] = {}
            if self.step % t.log_interval == 0 or done:
                self.check_deferred()
                window_loss = distributed.mean_all(self.window_loss, self.dist)
                train_loss = float(window_loss) / self.window_steps
                row = {
                    "step": self.step,
                    "elapsed_s": round(self.elapsed, 3),
                    "train_loss": train_loss,
                    "lr": lr,
                    "chars_per_s": round(
                        self.window_steps * t.batch_size * t.seq_len / max(window_time, 1e-9),
                        1,
                    ),
                    "epoch": self.batcher.position.epoch,
                }
                self.window_loss.zero_()
                self.window_steps, window_time = 0, 0.0
            if self.step % t.eval_interval == 0 or done:
                # Every eval that picks the best checkpoint scores the same text (the first
                # eval_chars of val), so the best is the best; the final score is whole-split.
                self.check_deferred()
                result = self.evaluate(full=False)
                if not done:  # the last evals run after the clock has stopped
                    self.eval_s += result.seconds
                self.last_val = result
                row = row or {"step": self.step, "elapsed_s": round(self.elapsed, 3)}
                row.update({"val_loss": result.loss, "val_bpc": result.bpc})
                if result.loss < self.best_val_loss:
                    self.best_val_loss, self.best_step = result.loss, self.step
                    self.save(ckpt_dir / ckpt.BEST_NAME)
                if done and t.eval_chars is not None and t.eval_chars < len(self.data.splits.val):
                    self.last_val = self.evaluate(full=True)
                    row.update(
                        {"final_val_loss": self.last_val.loss, "final_val_bpc": self.last_val.bpc}
                    )
            if row and self.dist.is_main:
                metrics.write(row)
                self.emit({"event": "log", **row})
            signum = self.agreed_signal if self.dist.enabled else self.stop_signal
            stopping = signum is not None and not done
            if self.step % t.checkpoint_interval == 0 or done or stopping:
                self.save_step()
            if done:
                break
            if signum is not None and stopping:
                self._interrupted(signum)
        assert self.last_checkpoint is not None
        return self._finish(self.last_checkpoint)

    def _interrupted(self, signum: int) -> None:
        assert self.last_checkpoint is not None
        stop = TrainingInterrupted(signum, self.step, self.last_checkpoint, self.run_dir)
        if self.dist.is_main:
            write_json(
                self.run_dir / SUMMARY_NAME,
                {
                    "status": "interrupted",
                    "signal": stop.signal_name,
                    "steps": self.step,
                    "last_checkpoint": str(self.last_checkpoint),
                    "resume": stop.resume_command,
                },
            )
        distributed.barrier(self.dist)  # the others exit only after rank 0 has written
        self.emit({"event": "interrupted", "signal": stop.signal_name, "step": self.step})
        raise stop

    def _finish(self, last_path: Path) -> TrainResult:
        assert self.last_val is not None
        train_chars = self.step * self.config.train.batch_size * self.config.train.seq_len
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            elapsed_s=self.elapsed,
            chars_per_s=train_chars / max(self.elapsed, 1e-9),
            eval_s=self.eval_s,
            parameters=self.model.num_parameters(),
            final_val=self.last_val,
            best_val_loss=self.best_val_loss,
            best_step=self.best_step,
            last_checkpoint=last_path,
            best_checkpoint=self.run_dir / CHECKPOINT_DIR / ckpt.BEST_NAME,
        )
        summary = {
            "status": "finished",
            "steps": result.steps,
            "elapsed_s": round(result.elapsed_s, 3),
            "chars_per_s": round(result.chars_per_s, 1),
            "eval_s": round(result.eval_s, 3),
            "step_chars_per_s": round(result.step_chars_per_s, 1),
            "precision": self.precision,
            **({"precision_probe": self.precision_probe} if self.precision_probe else {}),
            "parameters": result.parameters,
            "final_val": result.final_val.to_dict(),
            "best_val_loss": result.best_val_loss,
            "best_val_bpc": result.best_val_bpc,
            "best_step": result.best_step,
            "last_checkpoint": str(last_path.relative_to(self.run_dir)),
            "best_checkpoint": str(result.best_checkpoint.relative_to(self.run_dir)),
        }
        if self.dist.is_main:
            write_json(self.run_dir / SUMMARY_NAME, summary)
        distributed.barrier(self.dist)
        self.emit({"event": "end", **summary})
        return result


def train(config: Config, run_dir: str | Path, on_event: Callback | None = None) -> TrainResult:
    """Train a model as `config` says, writing everything into the new folder `run_dir`.

    Under torchrun every process calls it with the same arguments: rank 0 alone checks and
    prepares the folder, and an error on any process stops them all (see `distributed.together`).
    """
    run_dir = Path(run_dir)
    if config.train.tensorboard:
        tblog.summary_writer_class()  # a missing extra stops here, before any work or writes
    with distributed.process_group() as info:
        main = info.is_main

        def prepare() -> None:
            if main:
                prepare_run_dir(run_dir)
                (run_dir / CONFIG_NAME).write_text(dump_yaml(config), encoding="utf-8")

        # The folder is checked before the (slow) data load, and before anything is written.
        distributed.together(info, lambda: check_run_dir(run_dir) if main else None)
        trainer = distributed.together(info, lambda: Trainer(config, run_dir, on_event, info))
        distributed.together(info, prepare)
        return run_recorded(trainer)


def run_recorded(trainer: Trainer) -> TrainResult:
    """Run the trainer (new or resumed) with the extras around it: TensorBoard logging when
    asked, a `failed` summary.json when an error stops it (unless the trainer wrote its own, as
    for interrupted or diverged runs), curves.png when it finishes, and RUN/.running locked
    meanwhile so `charlm runs` can tell a run in progress from an interrupted one."""
    if not trainer.dist.is_main:  # under torchrun, rank 0 alone writes files
        return trainer.run()
    tensorboard = None
    if trainer.config.train.tensorboard:
        tensorboard = tblog.TensorBoardLogger(
            trainer.run_dir,
            dump_yaml(trainer.config),
            purge_step=trainer.step + 1 if trainer.step else None,
        )
        trainer.emit = tensorboard.wrap(trainer.emit)
    with running_lock(trainer.run_dir):
        try:
            result = trainer.run()
        except Exception as e:
            if not (trainer.run_dir / SUMMARY_NAME).exists():
                write_failure(trainer.run_dir, e, trainer.step, trainer.elapsed)
            raise
        finally:
            if tensorboard is not None:
                tensorboard.close()
    try:
        from charlm.plots import plot_curves

        plot_curves(trainer.run_dir)
    except Exception as e:  # a plot is a convenience: never lose a finished run to it
        reason = " ".join(str(e).split()) or type(e).__name__
        trainer.emit({"event": "warning", "message": f"could not draw curves.png: {reason}"})
    return result


def resume_config(checkpoint: ckpt.Checkpoint, overrides: Sequence[str] = ()) -> Config:
    """The config recorded in a checkpoint, with only the `RESUME_KEYS` allowed to change."""
    where = f"{checkpoint.path} (config record)"
    raw = checkpoint.record.get("config")
    if not isinstance(raw, dict):
        raise CharlmError(f"{where}: missing; cannot resume from this checkpoint")
    merged = apply_overrides(raw, overrides)
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in RESUME_KEYS:
            raise CharlmError(
                f"override {item!r}: a resumed run keeps the config recorded in its checkpoint; "
                f"only {', '.join(RESUME_KEYS)} may change (start a new run to change {key})"
            )
    return config_from_dict(merged, where=where)


def resume(
    run_dir: str | Path, overrides: Sequence[str] = (), on_event: Callback | None = None
) -> TrainResult:
    """Continue a run from its newest intact step checkpoint, exactly as if it never stopped.

    Exact (bit for bit on the same device) for step-bounded runs with unchanged budgets; a run
    bounded only by `max_time` schedules its learning rate by elapsed time, which is not.
    """
    run_dir = Path(run_dir)
    with distributed.process_group() as info:
        return _resume(run_dir, overrides, on_event, info)


def _resume(
    run_dir: Path, overrides: Sequence[str], on_event: Callback | None, info: Dist
) -> TrainResult:
    """`resume` inside the process group: rank 0 picks the checkpoint, every process loads it."""
    emit: Callback = (on_event if info.is_main else None) or (lambda event: None)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    found: list[ckpt.Checkpoint] = []

    def pick() -> int:
        if not info.is_main:
            return 0
        check_resume_dir(run_dir)
        checkpoint, skipped = ckpt.latest_intact(ckpt_dir)
        for path, problem in skipped:
            emit({"event": "warning", "message": f"skipping {path.name}: {problem}"})
        if checkpoint is None:
            raise CharlmError(
                f"{run_dir}: no complete checkpoint to resume from (none was written, or all "
                f"are damaged); start again with a new --out folder"
            )
        found.append(checkpoint)
        return checkpoint.step

    step = distributed.broadcast_int(distributed.together(info, pick), info)

    def load() -> tuple[Trainer, ckpt.Checkpoint]:
        checkpoint = found[0] if found else ckpt.load_checkpoint(ckpt_dir / ckpt.step_name(step))
        return _restore(run_dir, checkpoint, overrides, on_event, info), checkpoint

    trainer, checkpoint = distributed.together(info, load)

    def tidy() -> None:
        if info.is_main:
            ckpt.remove_temp_files(ckpt_dir)
            rollback_metrics(run_dir, step)
            (run_dir / SUMMARY_NAME).unlink(missing_ok=True)
            (run_dir / CONFIG_NAME).write_text(dump_yaml(trainer.config), encoding="utf-8")

    distributed.together(info, tidy)
    emit({"event": "resume", "path": str(checkpoint.path), "step": step})
    return run_recorded(trainer)


def _restore(
    run_dir: Path,
    checkpoint: ckpt.Checkpoint,
    overrides: Sequence[str],
    on_event: Callback | None,
    info: Dist,
) -> Trainer:
    """A trainer holding `checkpoint`'s state, after checking the budgets leave work to do."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    config = resume_config(checkpoint, overrides)
    if config.train.tensorboard:
        tblog.summary_writer_class()  # a missing extra stops here, before any work or writes
    t, step = config.train, checkpoint.step
    if t.max_steps is not None and step >= t.max_steps:
        raise CharlmError(
            f"{checkpoint.path}: already at step {step}, which train.max_steps={t.max_steps} "
            f"does not exceed; pass a larger train.max_steps=N to train further"
        )
    elapsed = float(checkpoint.record.get("elapsed_s", 0.0))
    if t.max_time is not None and elapsed >= t.max_time:
        raise CharlmError(
            f"{checkpoint.path}: already trained {elapsed:.1f} s, which train.max_time="
            f"{t.max_time:g} does not exceed; pass a larger train.max_time=SECONDS"
        )
    trainer = Trainer(config, run_dir, on_event, info)
    trainer.load_state(checkpoint)
    _adopt_newer_best(trainer, ckpt_dir / ckpt.BEST_NAME)
    return trainer


def _adopt_newer_best(trainer: Trainer, best_path: Path) -> None:
    """Keep a best checkpoint written after the resume point as the score to beat.

    On an exact resume the redone evals reproduce it anyway; otherwise a better model already
    on disk must not be overwritten by a worse one.
    """
    if not best_path.is_file():
        return
    try:
        best = ckpt.load_checkpoint(best_path).record
    except CharlmError:
        return  # a damaged best is simply replaced by the next better eval
    loss = best.get("best_val_loss")
    if best.get("step", 0) > trainer.step and loss is not None and loss < trainer.best_val_loss:
        trainer.best_val_loss, trainer.best_step = float(loss), int(best["best_step"])
