"""Where and how sampling runs, decided before its first step: the precision and the device
(`auto` times steps on each candidate), the CPU threads, and whether the batch fits in memory.

Kept apart from the decoders in charlm.sample, which take these decisions as given.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import nn

from charlm import stepper as steps
from charlm.errors import CharlmError
from charlm.machine import available_memory, cpu_count
from charlm.model import accelerator
from charlm.precision import empty_cache, time_steps
from charlm.sample import NOISE_CHUNK
from charlm.sample_options import SampleOptions
from charlm.stepper import make_stepper


def resolve_precision(
    model: nn.Module, options: SampleOptions
) -> tuple[SampleOptions, dict[str, float]]:
    """`precision="auto"` made concrete, with the seconds per step timed for each precision.

    Timed once at the batch the steps run (the beam width or the number of samples), on the
    current threads, so a caller can name the pick before decoding; any other precision comes
    back unchanged, with no timings.
    """
    if options.precision != "auto":
        return options, {}
    chosen, timings = steps.auto_precision(model, options.batch)
    return replace(options, precision=chosen), timings


def choose_device(model: nn.Module, options: SampleOptions) -> tuple[nn.Module, dict[str, float]]:
    """`--device auto` for sampling: the model (given on the CPU) where its steps run faster.

    Why: a sampling step is a few small products and element-wise calls per layer, so at small
    batches a GPU spends it launching kernels and the CPU can be as fast or faster; at large
    batches the GPU wins. The GPU is the one `train.device: auto` takes (CUDA, else mps). Both
    are timed at the batch and precision that will be sampled (fp32 when the precision is auto,
    int8 only exists on the CPU) and the faster is taken. -> (the model on that device, seconds
    per step on each device; empty when there is no GPU).
    """
    gpu_name = accelerator()
    if gpu_name is None:
        return model, {}
    gpu = copy.deepcopy(model).to(gpu_name)
    precision = "fp32" if options.precision == "auto" else options.precision
    devices = {"cpu": model, gpu_name: gpu}
    builders = {
        name: (
            torch.device(name),
            functools.partial(make_stepper, m, True, precision, options.batch),
        )
        for name, m in devices.items()
    }
    timings = time_steps(builders, options.batch)
    best = min(timings, key=timings.__getitem__) if timings else "cpu"
    if best == "cpu":
        del gpu
        empty_cache(torch.device(gpu_name))
    return devices[best], timings


def check_threads(threads: int | None) -> None:
    """1 to the CPUs this process may use: far more threads than CPUs crash OpenMP."""
    if threads is None:
        return
    cpus = cpu_count()
    if not 1 <= threads <= cpus:
        raise CharlmError(
            f"--threads {threads}: expected a whole number from 1 to {cpus} (the CPUs here)"
        )


# What a sample costs beyond the model, as measured: its seeded generator and lists (about 5 KB),
# a chunk of Gumbel noise (three float32 copies of NOISE_CHUNK x vocab) and, per character, the
# step's tuple slot and the joined text (about 13 bytes).
ROW_BYTES = 5000
BYTES_PER_CHAR = 13


def sampling_bytes(vocab_size: int, options: SampleOptions) -> int:
    """About how much memory decoding `options` takes, for `options.batch` rows."""
    per_row = ROW_BYTES + 12 * NOISE_CHUNK * vocab_size + BYTES_PER_CHAR * options.length
    return options.batch * per_row


def check_sampling_memory(vocab_size: int, options: SampleOptions) -> None:
    """Refuse --num-samples (or --beam) whose batch cannot fit in the memory available now."""
    free = available_memory()
    need = sampling_bytes(vocab_size, options)
    if free is None or need <= free:
        return
    option = f"--beam {options.beam}" if options.beam is not None else "--num-samples"
    if options.beam is None:
        option += f" {options.num_samples}"
    raise CharlmError(
        f"{option} with --length {options.length}: needs about {need / 1e9:,.1f} GB "
        f"({need // options.batch:,} bytes per sample), but this machine has {free / 1e9:,.1f} "
        f"GB available; ask for fewer at a time"
    )


@contextmanager
def sampling_threads(
    model: nn.Module, options: SampleOptions, threads: int | None = None
) -> Iterator[None]:
    """Run the block on the CPU threads sampling uses; torch's setting is put back afterwards.

    `threads` when given; else one thread for a single sample on the CPU, because one stream's
    steps are matrix-vector products too small to split across threads and the split costs a
    synchronisation per call, ruinous on a busy CPU (docs/benchmarks.md); else torch's own.
    """
    check_threads(threads)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    elif options.num_samples == 1 and next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
