"""The training loop: data -> model -> AdamW -> metrics, evals and checkpoints in a run folder.

`train(config, run_dir)` is the whole job and reports progress through a callback, so the CLI (or a
notebook, or a test) decides how to show it. The learning rate is a pure function of the step (or
of elapsed time when only a time budget bounds the run), so it needs no state of its own.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlm import checkpoint as ckpt
from charlm.batches import Splits, StreamBatcher, split_ids
from charlm.config import BUILTIN_CORPUS, Config, config_to_dict, dump_yaml
from charlm.corpus import load_corpus
from charlm.errors import CharlmError
from charlm.evaluate import EvalResult, evaluate_ids
from charlm.model import CharLM, State, detach_state, resolve_device
from charlm.runs import (
    CHECKPOINT_DIR,
    CONFIG_NAME,
    METRICS_NAME,
    SUMMARY_NAME,
    MetricsLog,
    check_run_dir,
    prepare_run_dir,
    write_json,
)
from charlm.vocab import Vocab

Event = dict[str, Any]
Callback = Callable[[Event], None]
ADAM_BETAS = (0.9, 0.99)


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


@dataclass
class Data:
    vocab: Vocab
    splits: Splits
    corpus_record: dict[str, Any]


def prepare_data(config: Config) -> Data:
    """Read, encode and split the corpus, checking each split is big enough to use."""
    corpus = load_corpus(config.data)
    vocab = Vocab.from_text(corpus.text, config.data.min_char_count)
    ids = vocab.encode(corpus.text, unknown="replace" if vocab.unknown_char else "error")
    splits = split_ids(ids, config.data.val_fraction, config.data.test_fraction)
    if len(splits.val) < 2:
        raise CharlmError(
            f"{corpus.source}: the val split has {len(splits.val)} characters "
            f"({len(corpus.text):,} in all x data.val_fraction={config.data.val_fraction}); "
            f"need at least 2: use a larger corpus or a larger data.val_fraction"
        )
    spec = corpus.source
    resolved = spec if spec == BUILTIN_CORPUS else str(Path(spec).absolute())
    record = {
        "source": spec,
        "resolved": resolved,
        "sha256": corpus.sha256,
        "chars": len(corpus.text),
        "files": len(corpus.files),
    }
    return Data(vocab=vocab, splits=splits, corpus_record=record)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    elapsed_s: float
    chars_per_s: float
    parameters: int
    final_val: EvalResult
    best_val_loss: float
    best_step: int
    last_checkpoint: Path
    best_checkpoint: Path

    @property
    def best_val_bpc(self) -> float:
        return self.best_val_loss / math.log(2)


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


class Trainer:
    """One training run. Kept as a class only so its state can be saved from one place."""

    def __init__(self, config: Config, run_dir: Path, on_event: Callback | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.emit: Callback = on_event or (lambda event: None)
        self.device = resolve_device(config.train.device)
        t = config.train
        random.seed(t.seed)
        np.random.seed(t.seed % 2**32)
        torch.manual_seed(t.seed)
        self.data = prepare_data(config)
        self.batcher = StreamBatcher(self.data.splits.train, t.batch_size, t.seq_len, seed=t.seed)
        self.model = CharLM(config.model, len(self.data.vocab)).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=ADAM_BETAS, weight_decay=t.weight_decay
        )
        self.state: State = self.model.init_state(t.batch_size, self.device)
        self.step = 0
        self.elapsed = 0.0
        self.best_val_loss = math.inf
        self.best_step = 0
        self.last_val: EvalResult | None = None

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        opt_tensors, opt_record = ckpt.pack_optimizer(self.optimizer.state_dict())
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model/{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"optim/{k}": v for k, v in opt_tensors.items()})
        tensors.update({f"state/{i}": s for i, s in enumerate(self.state)})
        tensors.update({f"rng/{k}": v for k, v in _rng_tensors().items()})
        record = {
            "config": config_to_dict(self.config),
            "vocab": self.data.vocab.to_dict(),
            "step": self.step,
            "elapsed_s": self.elapsed,
            "batcher": self.batcher.state_dict(),
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "best_step": self.best_step,
            "last_val": None if self.last_val is None else self.last_val.to_dict(),
            "parameters": self.model.num_parameters(),
            "corpus": self.data.corpus_record,
            "optimizer": opt_record,
            "rng": _rng_record(),
            "torch_version": torch.__version__,
            "device": str(self.device),
        }
        ckpt.save_checkpoint(path, tensors, record)
        self.emit({"event": "checkpoint", "path": str(path), "step": self.step})

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, full: bool) -> EvalResult:
        t = self.config.train
        val = self.data.splits.val
        if not full and t.eval_chars is not None:
            val = val[: t.eval_chars]
        return evaluate_ids(self.model, val, t.eval_streams)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        t = self.config.train
        ckpt_dir = self.run_dir / CHECKPOINT_DIR
        metrics = MetricsLog(self.run_dir / METRICS_NAME)
        vocab_size = len(self.data.vocab)
        self.emit(
            {
                "event": "start",
                "run_dir": str(self.run_dir),
                "device": str(self.device),
                "parameters": self.model.num_parameters(),
                "vocab_size": vocab_size,
                "train_chars": len(self.data.splits.train),
                "val_chars": len(self.data.splits.val),
                "max_steps": t.max_steps,
                "max_time": t.max_time,
            }
        )
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        window_steps, window_time = 0, 0.0
        last_path = ckpt_dir / ckpt.step_name(0)
        start = time.perf_counter() - self.elapsed
        while True:
            step_start = time.perf_counter()
            lr = lr_at(self.config, self.step, self.elapsed)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x, y, fresh = self.batcher.next()
            if fresh:
                self.state = self.model.init_state(t.batch_size, self.device)
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            logits, state = self.model(x, self.state)
            self.state = detach_state(state)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach()
            self.step += 1
            window_steps += 1
            window_time += time.perf_counter() - step_start
            self.elapsed = time.perf_counter() - start
            done = (t.max_steps is not None and self.step >= t.max_steps) or (
                t.max_time is not None and self.elapsed >= t.max_time
            )
            row: dict[str, Any] = {}
            if self.step % t.log_interval == 0 or done:
                train_loss = float(loss_sum) / window_steps
                row = {
                    "step": self.step,
                    "elapsed_s": round(self.elapsed, 3),
                    "train_loss": train_loss,
                    "lr": lr,
                    "chars_per_s": round(
                        window_steps * t.batch_size * t.seq_len / max(window_time, 1e-9), 1
                    ),
                    "epoch": self.batcher.position.epoch,
                }
                loss_sum.zero_()
                window_steps, window_time = 0, 0.0
            if self.step % t.eval_interval == 0 or done:
                result = self.evaluate(full=done)
                self.last_val = result
                row = row or {"step": self.step, "elapsed_s": round(self.elapsed, 3)}
                row.update({"val_loss": result.loss, "val_bpc": result.bpc})
                if result.loss < self.best_val_loss:
                    self.best_val_loss, self.best_step = result.loss, self.step
                    self.save(ckpt_dir / ckpt.BEST_NAME)
            if row:
                metrics.write(row)
                self.emit({"event": "log", **row})
            if self.step % t.checkpoint_interval == 0 or done:
                last_path = ckpt_dir / ckpt.step_name(self.step)
                self.save(last_path)
                ckpt.prune(ckpt_dir, t.keep_last)
            if done:
                break
        return self._finish(last_path)

    def _finish(self, last_path: Path) -> TrainResult:
        assert self.last_val is not None
        train_chars = self.step * self.config.train.batch_size * self.config.train.seq_len
        result = TrainResult(
            run_dir=self.run_dir,
            steps=self.step,
            elapsed_s=self.elapsed,
            chars_per_s=train_chars / max(self.elapsed, 1e-9),
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
            "parameters": result.parameters,
            "final_val": result.final_val.to_dict(),
            "best_val_loss": result.best_val_loss,
            "best_val_bpc": result.best_val_bpc,
            "best_step": result.best_step,
            "last_checkpoint": str(last_path.relative_to(self.run_dir)),
            "best_checkpoint": str(result.best_checkpoint.relative_to(self.run_dir)),
        }
        write_json(self.run_dir / SUMMARY_NAME, summary)
        self.emit({"event": "end", **summary})
        return result


def train(config: Config, run_dir: str | Path, on_event: Callback | None = None) -> TrainResult:
    """Train a model as `config` says, writing everything into the new folder `run_dir`."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)  # before the (slow) data load, and before anything is written
    trainer = Trainer(config, run_dir, on_event)
    prepare_run_dir(run_dir)
    (run_dir / CONFIG_NAME).write_text(dump_yaml(config), encoding="utf-8")
    return trainer.run()
