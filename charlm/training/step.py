"""One training step: forward under the run's precision, loss, backward, clipping, the update.

A step is two calls so the loop can decide between them: `backward` computes the loss and the
clipped gradients and says whether they are finite; the loop agrees on that across processes (or
records it for a later check) and stops a diverged run before `apply` moves any weight. Nothing
here calls back into the loop.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlm import precision as prec
from charlm.config import TrainConfig
from charlm.model import CharLM, State

FUSED_ADAMW = ("cpu", "cuda")
"""Devices where AdamW runs its fused kernel: one vectorised pass per parameter instead of a
dozen tensor ops (on the CPU torch otherwise picks its per-tensor loop); docs/benchmarks.md."""


def adamw(model: CharLM, t: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.parameters(),
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        weight_decay=t.weight_decay,
        fused=device.type in FUSED_ADAMW,
    )


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


def averaged_copy(model: CharLM) -> CharLM:
    """A frozen copy of `model` for the weight average. On CUDA its RNN's weights are compacted
    again: a deep copy leaves cuDNN's flat weight buffer behind, and cuDNN would otherwise warn
    and compact them at every eval."""
    averaged = copy.deepcopy(model).requires_grad_(False)
    flatten = getattr(getattr(averaged, "rnn", None), "flatten_parameters", None)
    if callable(flatten) and next(averaged.parameters()).device.type == "cuda":
        flatten()
    return averaged


def batch_to(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Move a batch to the device. For CUDA, x and y (the same characters shifted by one) go as
    one contiguous chunk, pinned so the copy is really asynchronous, and are sliced there."""
    if device.type != "cuda":
        return x.to(device), y.to(device)
    chunk = torch.cat([x, y[:, -1:]], 1).pin_memory().to(device, non_blocking=True)
    return chunk[:, :-1], chunk[:, 1:]


@dataclass
class Backward:
    """What `TrainStep.backward` did: the loss and gradient norm (device tensors), whether both
    are finite (a device bool), and the hidden state to carry into the next step (fp32)."""

    loss: torch.Tensor
    norm: torch.Tensor
    finite: torch.Tensor
    state: State


class TrainStep:
    """The arithmetic of a step for one model, optimizer and precision."""

    def __init__(
        self,
        model: CharLM,
        optimizer: torch.optim.Optimizer,
        precision: str,
        device: torch.device,
        grad_clip: float,
        averaged: CharLM | None = None,
        ema_decay: float | None = None,
    ) -> None:
        self.model = model
        self.net: torch.nn.Module = model  # DistributedDataParallel(model) under torchrun
        self.optimizer = optimizer
        self.precision = precision
        self.device = device
        self.clip = grad_clip if grad_clip > 0 else math.inf
        self.averaged = averaged
        self.ema_decay = ema_decay
        # fp16 multiplies the loss so small gradients survive; the scaler skips a step whose
        # gradients overflowed and lowers its scale, so there only the loss decides divergence.
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def compute_loss(
        self, x: torch.Tensor, y: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """Forward one batch from the carried `state`: the mean next-character loss, new state."""
        with prec.autocast(self.precision, self.device):
            logits, new_state = self.net(x, state)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        return loss, new_state

    def backward(self, x: torch.Tensor, y: torch.Tensor, state: State) -> Backward:
        """Forward one batch from the carried `state`, backward, and clip the gradients."""
        loss, new_state = self.compute_loss(x, y, state)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        loss = loss.detach()
        finite = torch.isfinite(loss)
        if self.scaler is None:
            finite = finite & torch.isfinite(norm).to(finite.device)
        # Carried in fp32 whatever the autocast dtype: it is checkpointed, and a run resumed on
        # the CPU in fp32 feeds it straight to the LSTM.
        carried = tuple(s.detach().float() for s in new_state)
        return Backward(loss=loss, norm=norm.detach(), finite=finite, state=carried)

    def apply(self, step: int) -> None:
        """Apply the update of (0-based) step `step` and move the weight average after it."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.averaged is not None:
            assert self.ema_decay is not None
            update_average(
                list(self.averaged.parameters()),
                [p.detach() for p in self.model.parameters()],
                self.ema_decay,
                step,
            )


class DeferredCheck:
    """The first non-finite step's (step, loss, norm), kept on the device.

    On a GPU, reading the finiteness check every step would make the host wait for the device
    every step. The loop records each step here and reads it where it waits anyway: metrics
    lines, evals, saves.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        wide = prec.wide_float(device)
        self.first_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.first_values = torch.zeros(2, dtype=wide, device=device)  # its loss and norm

    def record(self, done: Backward, step: int) -> None:
        """Keep (step, loss, norm) if `done` is not finite and nothing was recorded before."""
        bad = ~done.finite & (self.first_step == 0)
        wide = self.first_values.dtype
        now = torch.stack([done.loss.to(wide), done.norm.to(self.device, wide)])
        self.first_values.copy_(torch.where(bad, now, self.first_values))
        self.first_step.masked_fill_(bad, step)

    def first(self) -> tuple[int, float, float] | None:
        """-> (step, loss, norm) of the first non-finite step recorded, or None (a host sync)."""
        step = int(self.first_step)
        if not step:
            return None
        loss, norm = self.first_values.tolist()
        return step, loss, norm
