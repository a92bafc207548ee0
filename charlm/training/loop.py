"""The training loop: data -> model -> AdamW -> metrics, evals and checkpoints in a run folder.

The arithmetic of a step is charlm.training.step, what a checkpoint holds charlm.training.state,
the learning rate and cadence charlm.training.schedule; here is the loop that runs them, stop
signals, and the decisions every process of a run must take together.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from charlm import checkpoint as ckpt
from charlm import distributed
from charlm import events as ev
from charlm import precision as prec
from charlm.batches import make_batcher
from charlm.config import Config
from charlm.distributed import Dist
from charlm.evaluate import EvalResult, evaluate_ids
from charlm.model import CharLM, resolve_device
from charlm.rundir import CHECKPOINT_DIR, METRICS_NAME, MetricsLog, Summary, write_summary
from charlm.training import state as st
from charlm.training.ending import RunEnd
from charlm.training.init_from import build_model, prepare_data  # train.init_from aware
from charlm.training.outcome import (
    TrainingDiverged,
    TrainResult,
    diverged_message,
)
from charlm.training.schedule import Cadence, lr_at
from charlm.training.signals import StopSignals
from charlm.training.step import (
    FUSED_ADAMW,
    Backward,
    DeferredCheck,
    TrainStep,
    adamw,
    averaged_copy,
    batch_to,
)
from charlm.training.ticks import ProgressTicks

WHOLE_SPLIT_SHARE = 0.9
"""When train.eval_chars covers at least this share of the val split, every eval scores the whole
split: the end of the run would otherwise score almost the same text twice."""


class Trainer(RunEnd):
    """One training run.

    Under torchrun (`info.enabled`) every process builds the same model and reads the same global
    batches, trains on its own rows of them through DistributedDataParallel, and only rank 0
    writes files and reports events. `precision` is the run's resolved precision when it has one
    already (a resume, a sweep); otherwise `train.precision` is checked and `auto` resolved here.
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        on_event: ev.Callback | None = None,
        info: Dist | None = None,
        precision: prec.TrainPrecision | None = None,
    ) -> None:
        self.config, self.run_dir = config, run_dir
        self.dist = info or Dist()
        self.emit: ev.Callback = (on_event if self.dist.is_main else None) or ev.ignore
        self.device = distributed.place(resolve_device(config.train.device), self.dist)
        t = config.train
        self.local_batch = self.dist.local_batch(t.batch_size)
        random.seed(t.seed)
        np.random.seed(t.seed % 2**32)
        torch.manual_seed(t.seed)
        self.data = prepare_data(config)
        self.eval_chars = self._eval_chars()
        self.batcher = make_batcher(
            self.data.splits.train, t.batching, t.batch_size, t.seq_len, seed=t.seed
        )
        self.model = build_model(config, self.data.vocab).to(self.device)
        # With train.ema_decay, an average of the weights along the way is what gets scored,
        # saved as the run's model and sampled: at the steps five minutes buy it scored 0.007 to
        # 0.015 below the last weights (docs/benchmarks.md).
        averaged = averaged_copy(self.model) if t.ema_decay is not None else None
        if self.dist.enabled:
            self._seed_dropout(0)
        if precision is not None:  # resolved before: only checked on this device
            prec.check_train_precision(precision.name, config.model, self.device)
        self.precision = precision or self._resolve_precision()
        prec.set_matmul_precision(self.precision.name, self.device)
        optimizer = adamw(self.model, t, self.device)
        self.step_fn = TrainStep(
            self.model, optimizer, self.precision.name, self.device, t.grad_clip, averaged,
            t.ema_decay,
        )  # fmt: skip
        # On a GPU (and under torchrun) the finiteness of each step is recorded on the device and
        # read where the loop waits anyway: metrics lines, evals, saves (see `_agree`).
        later = self.device.type != "cpu" or self.dist.enabled
        self.deferred = DeferredCheck(self.device) if later else None
        self.parts = self._parts(averaged)
        self.last_checkpoint: Path | None = None
        self.stop = StopSignals()
        # Under torchrun: the signal and rank 0's clock as all processes agreed on them.
        self.agreed_signal: int | None = None
        self.agreed_elapsed = 0.0
        self.clock_start = time.perf_counter()

    def _parts(self, averaged: CharLM | None) -> list[st.Part]:
        """Everything a checkpoint holds, in the order it is written and restored."""
        batch = self.config.train.batch_size
        self.counters = st.Counters()
        self.window = st.LossWindow(self.device, self.dist)
        self.hidden = st.Hidden(
            self.model.init_state(self.local_batch, self.device),
            self.dist.shard(batch), self.local_batch, self.device, self.dist,
        )  # fmt: skip
        self.weights = st.Weights(self.model, averaged)
        return [
            st.RunRecord(self.config, self.data.vocab, self.data.corpus_record, self.device,
                         self.precision),
            self.weights,
            st.Optimizer(self.step_fn.optimizer, self.device.type in FUSED_ADAMW),
            self.hidden,
            st.Batcher(self.batcher),
            self.window,
            self.counters,
            st.Scaler(self.step_fn.scaler),
            st.Rng(),
        ]  # fmt: skip

    @property
    def scored(self) -> CharLM:
        """The model that evals score and checkpoints save as the run's model."""
        return self.weights.averaged or self.model

    def _resolve_precision(self) -> prec.TrainPrecision:
        t = self.config.train
        return prec.resolve_train_precision(
            t.precision, self.config.model, len(self.data.vocab), self.local_batch, t.seq_len,
            self.device,
            lambda faster: distributed.agree_max([float(faster)], self.dist)[0] > 0,
        )  # fmt: skip

    def _eval_chars(self) -> int | None:
        """How much of val the interval evals score: None for all of it (see WHOLE_SPLIT_SHARE)."""
        chars, val = self.config.train.eval_chars, len(self.data.splits.val)
        return None if chars is None or chars >= WHOLE_SPLIT_SHARE * val else chars

    def _seed_dropout(self, step: int) -> None:
        """Give every process other than rank 0 its own dropout stream (seed + rank)."""
        if self.dist.rank > 0:
            t = self.config.train
            torch.manual_seed(t.seed + self.dist.rank + step * self.dist.world_size)

    # -- checkpoints -----------------------------------------------------------------------------
    def load_state(self, checkpoint: ckpt.Checkpoint) -> None:
        """Restore what `save` wrote; tensors are loaded on the CPU, then moved here."""
        st.load_parts(self.parts, checkpoint, lambda: self._seed_dropout(self.step))
        self.last_checkpoint = checkpoint.path

    def save(self, path: Path) -> None:
        """Write a checkpoint (rank 0 writes; every process takes part in gathering it)."""
        self.check_deferred()
        tensors, record = st.save_parts(self.parts)
        if self.dist.is_main:
            ckpt.save_checkpoint(path, tensors, record)
        self.emit(ev.CheckpointSaved(path=str(path), step=self.step))

    def save_step(self) -> Path:
        """Write this step's checkpoint and prune the old ones; the resume point."""
        path = self.run_dir / CHECKPOINT_DIR / ckpt.step_name(self.step)
        self.save(path)
        self.last_checkpoint = path
        if self.dist.is_main:
            ckpt.prune(path.parent, self.config.train.keep_last)
        return path

    # -- divergence and agreement ----------------------------------------------------------------
    def _decide(self, done: Backward) -> None:
        """Stop before the update if this step is not finite (on a GPU: record it for later)."""
        if self.deferred is not None:
            self.deferred.record(done, self.step + 1)
            return
        if not bool(done.finite):
            self._diverged(float(done.loss), float(done.norm))

    def _agree(self) -> None:
        """Under torchrun, one collective every log_interval steps and before every eval and
        save: rank 0's clock, any stop signal, any non-finite step since the last one.

        Every process then takes the same decisions (time budget, time-based learning rate and
        cadence, stopping, divergence) from the same numbers, so none is left waiting in a
        collective the others skipped, and no step waits for the others in between.
        """
        elapsed = time.perf_counter() - self.clock_start if self.dist.is_main else 0.0
        signum = float(self.stop.signum or 0)
        bad = self.deferred.first() if self.deferred is not None else None
        found = [elapsed, signum, 0.0 if bad is None else 1.0]
        now, sig, any_bad = distributed.agree_max(found, self.dist)
        self.agreed_elapsed = now
        if sig and self.agreed_signal is None:
            self.agreed_signal = int(sig)
        if any_bad:  # a peer's step, if not ours: its numbers stay in its own message
            step, loss, norm = bad if bad is not None else (self.step, math.nan, math.nan)
            self._diverged(loss, norm, step)

    def check_deferred(self) -> None:
        """Stop with the divergence error if a step since the last check was not finite.

        The steps after it were applied (with non-finite numbers), but nothing is saved before
        this check, so the last good checkpoint is what remains, as with the per-step check.
        """
        if self.dist.enabled:
            self._agree()
            return
        bad = self.deferred.first() if self.deferred is not None else None
        if bad is not None:
            step, loss, norm = bad
            self._diverged(loss, norm, step)

    def _diverged(self, loss: float, norm: float, step: int | None = None) -> None:
        """Record the divergence in summary.json and stop every process with its error."""
        noticed = None if step is None else self.step
        step = self.step + 1 if step is None else step
        last = self.last_checkpoint
        last_text = None if last is None else str(last)
        self.write_summary(Summary(status="diverged", step=step, last_checkpoint=last_text))
        message = diverged_message(step, loss, norm, noticed, last)
        if not self.dist.is_main:
            raise distributed.PeerFailed(message)
        raise TrainingDiverged(message, step, last)

    def write_summary(self, summary: Summary) -> None:
        """summary.json from rank 0; the others wait until it is written."""
        if self.dist.is_main:
            write_summary(self.run_dir, summary)
        distributed.barrier(self.dist)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, full: bool) -> EvalResult:
        val = self.data.splits.val
        if not full and self.eval_chars is not None:
            val = val[: self.eval_chars]
        rows, reduce = None, None
        if self.dist.enabled:
            # Each process scores its share of the segments; the float64 sums are added up, so
            # the score is that of a single-process eval (up to float rounding).
            rows, reduce = self.dist.rows, lambda total: distributed.sum_all(total, self.dist)
        streams = self.config.train.eval_streams
        return evaluate_ids(self.scored, val, streams, rows=rows, reduce=reduce)

    def final_eval(self) -> EvalResult:
        """The whole val split, scored once the budget is spent; reported as it starts and ends."""
        self.emit(ev.FinalEvalStarted(step=self.step, chars=len(self.data.splits.val)))
        result = self.evaluate(full=True)
        self.counters.final_eval_s += result.seconds
        self.emit(ev.FinalEvalFinished(self.step, result.seconds, result.loss, result.bpc))
        return result

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to the budget; SIGINT/SIGTERM stop it cleanly after a checkpoint."""
        if self.dist.enabled and self.step_fn.net is self.model:
            # Wrapped here, not in __init__: DDP's first collective must come after every
            # process has built (and maybe restored) its model without error.
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_fn.net = DistributedDataParallel(self.model, device_ids=ids)
        try:
            with self.stop.routed():
                return self._run()
        finally:
            # DDP's reducer holds the process group; dropped here, the group can be torn down
            # while Python is alive (see `distributed.process_group`).
            self.step_fn.net = self.model

    def _started(self) -> ev.Started:
        t, splits = self.config.train, self.data.splits
        return ev.Started(
            run_dir=str(self.run_dir), device=str(self.device),
            precision=self.precision.name, precision_probe=self.precision.probe,
            parameters=self.model.num_parameters(), vocab_size=len(self.data.vocab),
            train_chars=len(splits.train), val_chars=len(splits.val),
            max_steps=t.max_steps, max_time=t.max_time, step=self.step,
            elapsed_s=self.counters.elapsed,
        )  # fmt: skip

    def train_step(self) -> float:
        """One step of the schedule, its batch read here; -> its learning rate."""
        t, c = self.config.train, self.counters
        lr = lr_at(self.config, c.step, c.elapsed)
        for group in self.step_fn.optimizer.param_groups:
            group["lr"] = lr
        x, y, fresh = self.batcher.next()
        if fresh:
            self.hidden.state = self.model.init_state(self.local_batch, self.device)
        if self.dist.enabled:
            rows = self.dist.shard(t.batch_size)
            x, y = x[rows], y[rows]
        x, y = batch_to(x, y, self.device)
        done = self.step_fn.backward(x, y, self.hidden.state)
        self.hidden.state = done.state
        self._decide(done)
        self.step_fn.apply(c.step)
        self.window.loss += done.loss
        c.step += 1
        c.final, c.final_eval_s = False, 0.0  # a run trained further has its end ahead again
        self.window.steps += 1
        return lr

    def _run(self) -> TrainResult:
        t, c = self.config.train, self.counters
        metrics = MetricsLog(self.run_dir / METRICS_NAME)
        self.emit(self._started())
        self.model.train()
        window_time = 0.0
        start = time.perf_counter() - c.elapsed
        self.clock_start = start
        chars_per_step = t.batch_size * t.seq_len
        ticks = ProgressTicks(
            chars_per_step, start + c.elapsed, c.step, c.eval_s, self.dist.is_main
        )
        evals = Cadence(t.eval_interval, t.eval_every_s, c.elapsed)
        saves = Cadence(t.checkpoint_interval, t.checkpoint_every_s, c.elapsed)
        row: dict[str, float | int] = {}
        scheduled = False
        while not self.spent():
            step_start = time.perf_counter()
            lr = self.train_step()
            logging = c.step % t.log_interval == 0
            if logging:  # chars/s is the device's speed, not how fast steps were queued
                prec.synchronize(self.device)
            now = time.perf_counter()
            window_time += now - step_start
            if logging and self.dist.enabled:
                self._agree()
            c.elapsed = self.agreed_elapsed if self.dist.enabled else now - start
            row = {}
            if logging or self.spent():
                row = self._train_row(lr, window_time)
                window_time = 0.0
            scheduled = evals.due(c.step, c.elapsed)
            if self.spent():
                break  # the last step's evals, line and checkpoint: `conclude`
            if scheduled:
                row = row or self.row_head()
                row.update(self.eval_row(False, scheduled))
                evals.fired(c.elapsed)
            self.log(metrics, row)
            if now >= ticks.next_at and not row:  # between lines: rank 0's own clock
                self.emit(ticks.event(now, now - start, c.step, c.eval_s))
            signum = self.signal()
            if saves.due(c.step, c.elapsed) or signum is not None:
                self.save_step()
                saves.fired(c.elapsed)
            if signum is not None:
                self.interrupted(signum)
        self.conclude(metrics, row, scheduled)
        return self.finish()

    def _train_row(self, lr: float, window_time: float) -> dict[str, float | int]:
        """The metrics of the steps since the last line; starts a new window."""
        t, c = self.config.train, self.counters
        self.check_deferred()
        window_loss = distributed.mean_all(self.window.loss, self.dist)
        row = {
            "step": c.step,
            "elapsed_s": round(c.elapsed, 3),
            "train_loss": float(window_loss) / self.window.steps,
            "lr": lr,
            "chars_per_s": round(
                self.window.steps * t.batch_size * t.seq_len / max(window_time, 1e-9), 1
            ),
            "epoch": self.batcher.position.epoch,
        }
        self.window.loss.zero_()
        self.window.steps = 0
        return row

    def eval_row(self, done: bool, scheduled: bool) -> dict[str, float | int]:
        """An eval on the schedule (or at the end); the best checkpoint follows its score.

        Every eval that picks the best checkpoint scores the same text (the first eval_chars of
        val), so the best is the best; the final score is whole-split.
        """
        c = self.counters
        self.check_deferred()
        whole = done and self.eval_chars is None
        result = self.final_eval() if whole else self.evaluate(full=False)
        if not done:  # the last evals run after the clock has stopped
            c.eval_s += result.seconds
        if scheduled:
            c.interval_evals += 1
        c.last_val = result
        row: dict[str, float | int] = {"val_loss": result.loss, "val_bpc": result.bpc}
        if result.loss < c.best_val_loss:
            c.best_val_loss, c.best_step = result.loss, c.step
            self.save(self.run_dir / CHECKPOINT_DIR / ckpt.BEST_NAME)
        if done and not whole:
            c.final_eval_s += result.seconds
            c.last_val = self.final_eval()
            row.update({"final_val_loss": c.last_val.loss, "final_val_bpc": c.last_val.bpc})
        return row
