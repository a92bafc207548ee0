"""Whole-or-nothing file writes: the one way charlm writes a file it must not leave half-written.

A file is written under a temporary name beside it (`.NAME.tmp-PID`), flushed and fsynced,
renamed over the target, and the folder fsynced, so a crash, a kill or a full disk leaves either
the old file or the new one, never a mix. A failed write removes its temporary file and raises
one `CharlmError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from charlm.errors import CharlmError


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename (hidden, and unique to this process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; silently skipped where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """A binary file to write `path` through (`w+b` to read back what was written); it
    replaces `path` only if the block completes.

    Raises what the writing raised (an OSError for a full or read-only disk); the temporary
    file is removed on any exception, a KeyboardInterrupt included.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_failed(path: Path, error: OSError, what: str, after: str = "") -> CharlmError:
    """The one-line error of a write that failed: the file, what it is, and the OS's reason."""
    reason = error.strerror or str(error) or type(error).__name__
    return CharlmError(f"{path}: could not write {what} ({reason}){after}")


def atomic_write_bytes(path: Path, data: bytes, what: str = "the file", after: str = "") -> None:
    """Write `data` to `path` whole or not at all; a failure is one CharlmError naming `path`
    (`what` says what the file is, `after` what still holds, e.g. that the old one is intact)."""
    try:
        with atomic_open(path) as f:
            f.write(data)
    except OSError as e:
        raise write_failed(path, e, what, after) from None


def atomic_write_text(path: Path, text: str, what: str = "the file") -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), what)
