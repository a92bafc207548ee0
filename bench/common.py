"""What the benchmark scripts share: the default corpus and reading it with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
# How the race and the levers score a model: the first 100,000 val characters as 20 streams.
VAL_CHARS, VAL_STREAMS = 100_000, 20


def read_corpus(path: Path) -> str:
    """The corpus text, or exit with one line naming the path and what was expected."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        sys.exit(f"error: corpus {path} not found; pass a UTF-8 text file as the first argument")
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: corpus {path} cannot be read as UTF-8 text ({e})")


def train_in_child(args: list[str], out: Path, what: str, threads: int | None = None) -> None:
    """`charlm train ARGS --out OUT --quiet` from this checkout, in a process of its own (with
    `threads` torch threads if given); a failure exits with one line naming `what`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, "-m", "charlm", "train", *args, "--out", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{what} failed: {last}")
