"""Read a corpus (file, folder, glob or the built-in one) into one string.

Decoding is strict by default: an invalid byte stops with the file name and byte offset, because a
silently mangled corpus trains a silently worse model. Line endings are normalised to `\n` unless
`data.newline: keep`, so a corpus mixing Windows and Unix files has one newline symbol.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from charlm.config import BUILTIN_CORPUS, DataConfig
from charlm.errors import CharlmError

_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Corpus:
    """The text and where it came from; `sha256` identifies it in checkpoints."""

    text: str
    files: tuple[str, ...]
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def stdlib_files() -> list[Path]:
    """The built-in corpus: the top-level modules of this Python's standard library, sorted.

    Present on every machine with Python, needs no download, and fixed for a Python version.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if p.is_file())


def resolve_files(spec: str, encoding: str = "utf-8") -> list[Path]:
    """Expand a corpus spec into the files it names, in a fixed order."""
    try:
        return _resolve_files(spec, encoding)
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL in it
        reason = getattr(e, "strerror", None) or e
        raise CharlmError(f"{spec}: cannot open the corpus ({reason})") from None


def _resolve_files(spec: str, encoding: str) -> list[Path]:
    path = Path(spec)
    if any(ch in spec for ch in "*?[") and not path.exists():
        matches = sorted(Path(p) for p in glob.glob(spec, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise CharlmError(f"data.corpus: the glob {spec!r} matches no files")
        return files
    if path.is_symlink() and not path.exists():
        raise CharlmError(f"{spec}: is a broken symbolic link (data.corpus)")
    if not path.exists():
        raise CharlmError(
            f"{spec}: corpus not found (data.corpus); expected a file, folder or glob"
        )
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and _looks_like_text(p, encoding)
        ]
        if not files:
            raise CharlmError(
                f"{spec}: the folder holds no text files (data.corpus); files with NUL bytes "
                f"and hidden files are left out"
            )
        return files
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CharlmError(f"{spec}: is not a regular file (data.corpus); expected a text file")
    return [path]


def _nul_means_binary(encoding: str) -> bool:
    """NUL bytes mark a binary file only in byte-oriented encodings (not UTF-16 or UTF-32)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return True
    return not name.startswith(("utf-16", "utf-32"))


def _looks_like_text(path: Path, encoding: str = "utf-8") -> bool:
    if not _nul_means_binary(encoding):
        return True
    try:
        with path.open("rb") as f:
            return b"\0" not in f.read(_SNIFF_BYTES)
    except OSError:
        return True  # let the read below report it with its reason


def normalise_newlines(text: str) -> str:
    """`\r\n` and lone `\r` become `\n`."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_file(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode one file; a byte-order mark is dropped, line endings are kept as they are."""
    try:
        data = path.read_bytes()
    except PermissionError:
        raise CharlmError(f"{path}: permission denied reading the corpus") from None
    except OSError as e:
        raise CharlmError(f"{path}: cannot read the corpus ({e.strerror})") from None
    if b"\0" in data[:_SNIFF_BYTES] and _nul_means_binary(encoding):
        raise CharlmError(
            f"{path}: looks like a binary file (it has NUL bytes in its first "
            f"{_SNIFF_BYTES:,} bytes); expected text (data.corpus), or set data.encoding if it "
            f"is UTF-16 or UTF-32 text"
        )
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError as e:
        raise CharlmError(
            f"{path}: invalid {encoding} at byte offset {e.start}; set data.encoding to the "
            f"file's encoding, or data.errors=replace to substitute bad bytes"
        ) from None
    except UnicodeError as e:  # codecs such as idna raise it without an offset
        raise CharlmError(f"{path}: cannot decode as {encoding} ({e}); set data.encoding") from None
    return text.removeprefix("\ufeff")


def load_corpus(data: DataConfig) -> Corpus:
    """Read the corpus that `data.corpus` names (the built-in one when it is empty)."""
    spec = data.corpus or BUILTIN_CORPUS
    if spec == BUILTIN_CORPUS:
        files = stdlib_files()
        if not files:
            raise CharlmError(f"{BUILTIN_CORPUS}: no standard-library sources found on this Python")
        texts = [read_file(p, "utf-8", "replace") for p in files]
    else:
        files = resolve_files(spec, data.encoding)
        texts = [read_file(p, data.encoding, data.errors) for p in files]
    if data.newline == "lf":  # per file, so one file's last \r never joins the next one's \n
        texts = [normalise_newlines(t) for t in texts]
    text = "".join(texts)
    if not text:
        raise CharlmError(
            f"{spec}: the corpus is empty (0 characters in {len(files)} file(s)); "
            f"expected some text to train on"
        )
    return Corpus(text=text, files=tuple(str(p) for p in files), source=spec)
