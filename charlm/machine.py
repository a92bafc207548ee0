"""What this machine can hold: memory and CPUs, checked before a size from the user is allocated.

A model or a batch of samples too big for the machine would otherwise fail deep inside torch's
allocator (a traceback) or get the process killed; these checks refuse it first, in one line that
says how much it needs and how much there is.
"""

from __future__ import annotations

import os
from pathlib import Path

from charlm.config import Config, ModelConfig
from charlm.errors import CharlmError

GB = 1e9
# Bytes per parameter when training: fp32 weights, gradients, and AdamW's two moments.
TRAIN_BYTES_PER_PARAMETER = 16


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now (MemAvailable), else the physical total."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def cpu_count() -> int:
    """CPUs this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def model_parameters(model: ModelConfig, vocab_size: int) -> int:
    """What `CharLM(model, vocab_size).num_parameters()` counts, without building it."""
    gates = 4 if model.cell == "lstm" else 3
    e, h = model.embedding_dim, model.hidden_size
    rnn = sum(gates * (n_in * h + h * h + 2 * h) for n_in in [e] + [h] * (model.num_layers - 1))
    return vocab_size * e + rnn + h * vocab_size + vocab_size


def check_model_fits(config: Config, vocab_size: int, on_gpu: bool) -> None:
    """Refuse a model whose training state cannot fit in the memory available now.

    The model is built on the CPU first, so its weights must fit there even when it trains on a
    GPU; on the CPU, training also holds gradients and AdamW's moments (and an EMA copy).
    """
    free = available_memory()
    if free is None:
        return
    m, t = config.model, config.train
    params = model_parameters(m, vocab_size)
    per = 4 if on_gpu else TRAIN_BYTES_PER_PARAMETER + (4 if t.ema_decay is not None else 0)
    need = params * per
    if need <= free:
        return
    what = "its weights" if on_gpu else "weights, gradients and AdamW's two moments"
    raise CharlmError(
        f"model.hidden_size={m.hidden_size} (model.embedding_dim={m.embedding_dim}, "
        f"model.num_layers={m.num_layers}, {m.cell}): {params:,} parameters need about "
        f"{need / GB:,.1f} GB for {what} ({per} bytes each), but this machine has "
        f"{free / GB:,.1f} GB available; use a smaller model"
    )
