"""What the benchmark scripts share: the default corpus and reading it with a clear error."""

from __future__ import annotations

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
