"""Dropout whose CPU mask costs a third of F.dropout's.

Why: on the CPU `F.dropout` draws one Bernoulli sample per element, about 2 ms for a 32 x 32 x 256
batch, and a training step of the presets calls it once or twice in 40-50 ms. Here one 64-bit draw
from torch's generator gives four 16-bit lanes, each kept when it is at or above a cut, so the
keep probability is 1 - p to within 2^-17 and the survivors are scaled by the exact inverse.
Forward and backward together take about a third of F.dropout's time (docs/benchmarks.md).
The draws come from torch's default generator, as F.dropout's do, so `torch.manual_seed` (and a
resumed run's restored generator state) fixes the mask. On a GPU it is F.dropout, one fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LANES = 1 << 16  # the values a 16-bit lane takes


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Zero each element of x with probability p (to 1/65536) and scale the rest by 1 / (1 - p)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return F.dropout(x, p, training)
    cut = round(p * LANES)  # lanes below -32768 + cut are dropped
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
    lanes = words.view(torch.int16)[: x.numel()].view(x.shape)
    keep = (lanes >= cut - LANES // 2).to(x.dtype).mul_(LANES / (LANES - cut))
    return x * keep
