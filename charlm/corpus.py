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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charlm.config import BUILTIN_CORPUS, DataConfig, unescape_separator
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
        from charlm.fetch import fetch_hint

        hint = fetch_hint(spec) or "expected a file, folder or glob"
        raise CharlmError(f"{spec}: corpus not found (data.corpus); {hint}")
    if path.is_dir():
        candidates = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        files = [p for p in candidates if _looks_like_text(p, encoding)]
        if not files:
            raise CharlmError(
                f"{spec}: the folder holds no text files (data.corpus); files with NUL bytes "
                f"and hidden files are left out"
            )
        text = set(files)
        _warn_skipped(spec, [p for p in candidates if p not in text], path)
        return files
    if not path.is_file():  # a FIFO or a device would block or never end
        raise CharlmError(f"{spec}: is not a regular file (data.corpus); expected a text file")
    return [path]


class CorpusWarning(UserWarning):
    """Something about the corpus a user should hear of, though training goes on."""


def _warn_skipped(spec: str, skipped: list[Path], folder: Path) -> None:
    """Name the binary files a folder corpus leaves out, in one line (the first 10 of them)."""
    if not skipped:
        return
    names = ", ".join(str(p.relative_to(folder)) for p in skipped[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(
        f"{spec}: skipped {len(skipped)} binary file(s) (NUL bytes in the first "
        f"{_SNIFF_BYTES:,} bytes): {names}{more}",
        CorpusWarning,
        stacklevel=2,
    )


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


# Decoding reads this many bytes at a time: big enough for NumPy to amortise its per-call cost,
# small enough that memory stays flat whatever the corpus size. Not bigger: glibc's malloc raises
# its mmap threshold to the size of a freed block (up to 32 MiB), so blocks of 16 MiB (the bytes,
# the decoded text, its UTF-8, masks) came from the heap, fragmented it, and peak RSS grew with the
# corpus (193 MiB at 50 MB of text with one non-ASCII character per MB, 224 MiB at 200 MB); at
# 1 MiB it is flat and no slower (the arrays stay in the CPU's caches).
CHUNK_BYTES = 2**20
# Codecs in which a pure-ASCII byte string decodes to the same characters, so an ASCII chunk can
# skip decoding (utf-8-sig is left out: its decoder must see the file's first bytes).
_ASCII_COMPATIBLE = {"utf-8", "ascii", "iso8859-1", "cp1252", "iso8859-15", "latin-1"}

# A piece of corpus text: `bytes` when it is pure ASCII (its bytes are its characters), else `str`.
Piece = bytes | str


def separator_text(data: DataConfig) -> str:
    """`data.separator` with its escapes decoded and, under `data.newline: lf`, its newlines too."""
    text = unescape_separator(data.separator)
    return normalise_newlines(text) if data.newline == "lf" else text


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except PermissionError:
        raise CharlmError(f"{path}: permission denied reading the corpus") from None
    except OSError as e:
        raise CharlmError(f"{path}: cannot read the corpus ({e.strerror})") from None


def _read(f: BinaryIO, path: Path, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as e:
        raise CharlmError(f"{path}: cannot read the corpus ({e.strerror})") from None


def _decode_error(path: Path, encoding: str, e: UnicodeError, offset: int | None) -> CharlmError:
    if isinstance(e, UnicodeDecodeError) and offset is not None:
        return CharlmError(
            f"{path}: invalid {encoding} at byte offset {offset}; set data.encoding to the "
            f"file's encoding, or data.errors=replace to substitute bad bytes"
        )
    return CharlmError(f"{path}: cannot decode as {encoding} ({e}); set data.encoding")


def iter_file(
    path: Path,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str = "keep",
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Piece]:
    """Decode one file in chunks: the same text `read_file` gives, never held whole.

    An incremental decoder keeps a character split across chunks whole, and a `\r` at a chunk's
    end waits for the next chunk, so `\r\n` becomes one `\n` under `newline="lf"`. Byte offsets
    in errors count from the start of the file.
    """
    fast = codecs.lookup(encoding).name in _ASCII_COMPATIBLE
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    lf = newline == "lf"
    with _open(path) as f:
        head = _read(f, path, _SNIFF_BYTES)
        if b"\0" in head and _nul_means_binary(encoding):
            raise CharlmError(
                f"{path}: looks like a binary file (it has NUL bytes in its first "
                f"{_SNIFF_BYTES:,} bytes); expected text (data.corpus), or set data.encoding if "
                f"it is UTF-16 or UTF-32 text"
            )
        f.seek(0)
        consumed = 0  # bytes handed to the decoder so far
        at_start = True  # no character yielded yet: a BOM here is dropped
        held_cr = False  # a `\r` held back from the previous chunk (newline="lf")
        while True:
            data = _read(f, path, chunk_bytes)
            final = not data
            piece: Piece
            if fast and data.isascii() and not decoder.getstate()[0]:
                piece = data
            else:
                pending = len(decoder.getstate()[0])
                try:
                    piece = decoder.decode(data, final)
                except UnicodeError as e:
                    start = getattr(e, "start", None)
                    offset = None if start is None else consumed - pending + start
                    raise _decode_error(path, encoding, e, offset) from None
                if at_start and piece:
                    piece = piece.removeprefix("\ufeff")
            consumed += len(data)
            if lf:
                cr = b"\r" if isinstance(piece, bytes) else "\r"
                if held_cr:
                    piece = cr + piece
                held_cr = not final and piece.endswith(cr)
                if held_cr:
                    piece = piece[:-1]
                if cr in piece:
                    piece = _lf(piece)
            if piece:
                at_start = False
                yield piece
            if final:
                return


def _lf(piece: Piece) -> Piece:
    if isinstance(piece, bytes):
        return piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return normalise_newlines(piece)


def read_file(path: Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode one file; a byte-order mark is dropped, line endings are kept as they are."""
    return "".join(_as_text(p) for p in iter_file(path, encoding, errors, "keep"))


def _as_text(piece: Piece) -> str:
    return piece.decode("ascii") if isinstance(piece, bytes) else piece


@dataclass(frozen=True)
class CorpusSource:
    """Which files a corpus spec names and how to read them, before anything is read."""

    spec: str
    files: tuple[Path, ...]
    encoding: str
    errors: str
    newline: str
    separator: str

    @property
    def builtin(self) -> bool:
        return self.spec == BUILTIN_CORPUS

    def pieces(self, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Piece]:
        """The whole corpus text in pieces: file after file, with the separator between them."""
        for i, path in enumerate(self.files):
            if i and self.separator:
                yield self.separator
            yield from iter_file(path, self.encoding, self.errors, self.newline, chunk_bytes)

    def empty_error(self) -> CharlmError:
        return CharlmError(
            f"{self.spec}: the corpus is empty (0 characters in {len(self.files)} file(s)); "
            f"expected some text to train on"
        )


def corpus_source(data: DataConfig) -> CorpusSource:
    """Resolve `data.corpus` (the built-in corpus when empty) into its files, reading nothing."""
    spec = data.corpus or BUILTIN_CORPUS
    if spec == BUILTIN_CORPUS:
        files = stdlib_files()
        if not files:
            raise CharlmError(f"{BUILTIN_CORPUS}: no standard-library sources found on this Python")
        encoding, errors = "utf-8", "replace"
    else:
        files = resolve_files(spec, data.encoding)
        encoding, errors = data.encoding, data.errors
    return CorpusSource(spec, tuple(files), encoding, errors, data.newline, separator_text(data))


def load_corpus(data: DataConfig) -> Corpus:
    """Read the corpus that `data.corpus` names into memory (small corpora, `eval --corpus`).

    Training goes through `charlm.cache.prepare_corpus` instead, which never holds the text.
    """
    source = corpus_source(data)
    text = "".join(_as_text(p) for p in source.pieces())
    if not text:
        raise source.empty_error()
    return Corpus(text=text, files=tuple(str(p) for p in source.files), source=source.spec)
