"""Data-parallel training under torchrun: process group set-up and the few collectives we need.

charlm scales out with PyTorch's own engine: `torchrun` starts one process per device and sets
RANK / WORLD_SIZE / LOCAL_RANK; `DistributedDataParallel` averages gradients. `train.batch_size`
is the global number of streams, split evenly across processes, so one config trains the same
model whatever the process count, and a checkpoint resumes on any count that divides the batch.

Every decision that changes what the processes do next (stop, fail, save) is agreed through a
collective, so no process waits forever for one that left.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from charlm.errors import CharlmError

T = TypeVar("T")


class PeerFailed(CharlmError):
    """Another process reported the error that stops the run; this one stops with it quietly.

    The CLI exits 1 without printing it, so a mistake shows as one line, not one per process.
    """


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """Streams per process; the global batch must split evenly."""
        if batch_size % self.world_size:
            raise CharlmError(
                f"train.batch_size={batch_size} does not split evenly across "
                f"{self.world_size} processes; use a multiple of {self.world_size} "
                f"(it is the global batch)"
            )
        return batch_size // self.world_size

    def shard(self, batch_size: int) -> slice:
        """The rows of the global batch this process trains on."""
        per = self.local_batch(batch_size)
        return slice(self.rank * per, (self.rank + 1) * per)

    def rows(self, count: int) -> slice:
        """A near-even share of `count` rows that need not divide (eval segments); may be empty."""
        return slice(
            self.rank * count // self.world_size, (self.rank + 1) * count // self.world_size
        )


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_follower() -> bool:
    """A torchrun process other than rank 0: it trains but reports nothing (read from the env)."""
    return os.environ.get("RANK", "0") != "0"


@contextmanager
def process_group() -> Iterator[Dist]:
    """Join the group torchrun prepared for the length of a run, then leave it.

    Gloo carries CPU tensors and NCCL CUDA ones, chosen per collective, so the group can be
    joined before the run's device is known (a resume reads it from the checkpoint). A group the
    caller set up already is used and left in place.
    """
    if not launched_by_torchrun():
        yield Dist()
        return
    info = Dist(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if dist.is_initialized():
        yield info
        return
    gpus = torch.cuda.is_available() and dist.is_nccl_available()
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if gpus else "gloo")
    try:
        yield info
        # Leave together: a process that exits while a peer still works can abort in gloo.
        barrier(info)
    finally:
        # The group must really go now, not at interpreter exit: a gloo group freed during
        # shutdown can abort the process ("terminate called without an active exception")
        # after a run that finished well. Whatever still holds it (DDP, cycles) is collected.
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def place(device: torch.device, info: Dist) -> torch.device:
    """This process's device: its own GPU (by LOCAL_RANK) when training on CUDA."""
    if not info.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if info.local_rank >= count:
        raise CharlmError(
            f"process {info.rank} wants cuda:{info.local_rank} but only {count} GPU(s) are "
            f"visible; use at most {count} processes per node (--nproc_per_node)"
        )
    torch.cuda.set_device(info.local_rank)
    return torch.device("cuda", info.local_rank)


def together(info: Dist, fn: Callable[[], T]) -> T:
    """Run `fn` on every process; if it raised a CharlmError anywhere, all stop together.

    The lowest failing rank raises its own error (the one line the user sees); the others
    raise `PeerFailed`. Doubles as a barrier, so work rank 0 does in `fn` is done after it.
    """
    error: CharlmError | None = None
    result: T | None = None
    try:
        result = fn()
    except CharlmError as e:
        error = e
    if not info.enabled:
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
    first = torch.tensor([info.rank if error is not None else info.world_size])
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    failed = int(first)
    if failed == info.rank and error is not None:
        raise error
    if failed < info.world_size:
        raise PeerFailed(f"process {failed} stopped the run (its error is shown above)")
    return result  # type: ignore[return-value]


def broadcast_int(value: int, info: Dist) -> int:
    """Rank 0's value, on every process."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.broadcast(t, src=0)
    return int(t)


def agree_max(values: list[float], info: Dist) -> list[float]:
    """Element-wise maximum over all processes: one small collective for every stop decision."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def sum_all(t: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum a tensor over all processes (in place) and return it."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def mean_all(t: torch.Tensor, info: Dist) -> torch.Tensor:
    """The mean of a tensor over all processes (a new tensor; `t` is left alone)."""
    if not info.enabled:
        return t
    return sum_all(t.clone(), info) / info.world_size


def gather_rows(t: torch.Tensor, info: Dist, dim: int) -> torch.Tensor:
    """Concatenate every process's shard of `t` along `dim` (each process gets the whole)."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=dim)


def barrier(info: Dist) -> None:
    """Wait for every process (rank 0 finishing its writes before the others exit).

    A tiny all-reduce on a CPU tensor rather than `dist.barrier()`, so it always goes through
    gloo and never needs a GPU (a CPU run on a GPU machine has not picked one).
    """
    if info.enabled:
        dist.all_reduce(torch.zeros(1))


# -- the `charlm train --nproc N` launcher ---------------------------------------------------
def launch_command(nproc: int, train_args: Sequence[str]) -> list[str]:
    """The command that runs `charlm train ARGS` in `nproc` processes on this machine."""
    return [
        sys.executable,
        "-m",
        "charlm.distributed",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "charlm",
        "train",
        *train_args,
    ]


def launch(nproc: int, train_args: Sequence[str]) -> int:
    """Run torchrun as a child and return its exit code.

    SIGINT and SIGTERM sent to this process are passed on to torchrun, which passes them to the
    workers; this process only waits, so a Ctrl-C cannot kill torchrun before they checkpoint.
    """
    if nproc < 1:
        raise CharlmError(f"--nproc {nproc}: expected a number of processes >= 1")
    child = subprocess.Popen(launch_command(nproc, train_args))
    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, lambda signum, frame: child.send_signal(signum))
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _torchrun(argv: list[str]) -> int:
    """torchrun, with its failure report reduced to the exit code of the first failed worker.

    Each worker prints its own error line; torchrun's traceback on top would only repeat it.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    try:
        main(argv)
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        code = failure.exitcode
        return 128 - code if code < 0 else code or 1
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(_torchrun(sys.argv[1:]))
