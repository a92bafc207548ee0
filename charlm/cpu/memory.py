"""Keep freed memory in the process for the next training step (glibc only).

The trainer does not call this itself: it changes the whole process, so the command line opts in
and a library caller may call it too.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for the next step instead of returning them.

    Why: a training step frees and allocates again the same few-MiB activation and gradient
    buffers. By default glibc hands such blocks back to the kernel (each is its own mmap, or the
    heap top is trimmed), so the next step takes a page fault for every 4 KiB it writes: a third
    of a GRU preset step on the CPU, a quarter of an LSTM one (docs/benchmarks.md). With blocks
    under 32 MiB served from the heap, and the heap trimmed only past 1 GiB of free space, those
    faults go; the process keeps its peak memory instead. Process-wide, so the trainer calls it
    once it runs. False (and nothing changed) where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # musl's mallopt, say, does nothing
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
