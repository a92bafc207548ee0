"""The id cache: a corpus encoded once into a file of integer ids that training memory-maps.

Building streams the corpus twice in chunks (never the whole text in memory): the first pass
counts characters and computes the text's SHA-256 (the digest checkpoints record), the second
writes ids of the smallest fitting type (uint8 up to 256 symbols, else uint16, else uint32). A
second run finds the cache by a cheap key (each file's path, size, modification and change times
and inode) and
starts at once; a changed corpus, or a cache that is truncated or damaged, is rebuilt.

File layout (ids first, so the memory map starts at offset 0):

    ids | header JSON | header length (8 bytes, little-endian) | SHA-256 of the header | MAGIC

The header records the key, the vocabulary, character counts, the text digest and a digest of
sampled blocks of the ids. A file is written under a temporary name, fsynced and renamed, so a
crash never leaves a cache that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import platformdirs

from charlm.config import DataConfig
from charlm.corpus import CHUNK_BYTES, CorpusSource, corpus_source
from charlm.errors import CharlmError
from charlm.files import atomic_open
from charlm.vocab import UNKNOWN_CHAR, Vocab

FORMAT = "charlm-ids"
VERSION = 1
MAGIC = b"CHARLMIDS1\n"
CACHE_FOLDER = ".charlm-cache"
_TRAILER = 8 + 32 + len(MAGIC)
_CODEPOINTS = 0x110000
_SAMPLE_BLOCKS = 16
_SAMPLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class PreparedCorpus:
    """An encoded corpus: ids memory-mapped from the cache, and what describes them."""

    ids: np.ndarray
    vocab: Vocab
    counts: tuple[int, ...]  # occurrences of each vocabulary symbol, in vocabulary order
    sha256: str  # of the text as UTF-8, the same digest as `Corpus.sha256`
    files: tuple[str, ...]
    source: str
    cache_path: Path
    status: str  # "reused", "built" (no cache yet) or "rebuilt: <why>"

    @property
    def chars(self) -> int:
        return len(self.ids)


def user_cache_dir() -> Path:
    """The user cache folder, the platform's own: $XDG_CACHE_HOME/charlm (else ~/.cache/charlm)
    on Linux, ~/Library/Caches/charlm on macOS, %LOCALAPPDATA%\\charlm\\Cache on Windows."""
    return Path(platformdirs.user_cache_dir("charlm", appauthor=False))


def cache_dir(data: DataConfig, source: CorpusSource) -> Path:
    """Where the cache of this corpus lives (see `data.cache_dir`)."""
    if data.cache_dir:
        return Path(data.cache_dir).expanduser()
    spec = Path(source.spec)
    if source.builtin or not spec.exists():  # the built-in corpus, or a glob
        return user_cache_dir()
    beside = spec if spec.is_dir() else spec.parent
    target = beside / CACHE_FOLDER
    return target if _writable(target if target.is_dir() else beside) else user_cache_dir()


def _check_folder(folder: Path) -> None:
    """Refuse a cache folder that is a file, or lies under one, before anything reads or writes."""
    for place in (folder, *folder.parents):
        if place.is_dir():
            return
        if place.exists() or place.is_symlink():
            raise CharlmError(
                f"data.cache_dir: {folder} cannot be a folder, because {place} is not one; set "
                f"data.cache_dir to a folder (it is created if missing)"
            )


def _writable(folder: Path) -> bool:
    """Writable and not marked read-only. Root passes `os.access` everywhere, so a folder with no
    write bit at all (a shared, read-only copy of someone's data) is left alone even then."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def _identity(data: DataConfig, source: CorpusSource) -> dict[str, Any]:
    """What names the cache file: the corpus and every option that changes its ids."""
    spec = source.spec if source.builtin else os.path.abspath(source.spec)
    return {
        "corpus": spec,
        "encoding": source.encoding,
        "errors": source.errors,
        "newline": source.newline,
        "separator": source.separator,
        "min_char_count": data.min_char_count,
    }


def _fast_key(source: CorpusSource) -> list[list[Any]]:
    """Each file's absolute path, size, mtime, ctime and inode: cheap, whatever the corpus size.

    The ctime catches an edit whose mtime was put back (`touch -d`, `cp -p`): no one can set it.
    """
    key = []
    for path in source.files:
        try:
            st = path.stat()
        except OSError as e:
            raise CharlmError(f"{path}: cannot read the corpus ({e.strerror})") from None
        key.append([os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino])
    return key


def cache_path(data: DataConfig, source: CorpusSource) -> Path:
    identity = json.dumps(_identity(data, source), sort_keys=True)
    name = "stdlib" if source.builtin else Path(source.spec).name or "corpus"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir(data, source) / f"{safe}-{digest}.ids"


# -- pass 1: count ------------------------------------------------------------------------------
@dataclass
class Scan:
    counts: np.ndarray  # occurrences of every code point (0x110000 entries)
    chars: int
    sha256: str


def _utf8(piece: bytes | str) -> np.ndarray:
    """The piece's UTF-8 bytes (for the digest and the counts) as a uint8 array."""
    raw = piece if isinstance(piece, bytes) else piece.encode("utf-8", "surrogatepass")
    return np.frombuffer(raw, dtype=np.uint8)


def _multibyte_codes(utf8: np.ndarray) -> np.ndarray:
    """Code points of the characters of valid UTF-8 that take 2-4 bytes, in text order.

    Vectorised over the lead bytes only, so mostly-ASCII text costs one comparison per byte.
    """
    lead = np.flatnonzero(utf8 >= 0xC0)
    first = utf8[lead].astype(np.uint32)
    length = 2 + (first >= 0xE0) + (first >= 0xF0)
    codes = first & np.where(length == 2, 0x1F, np.where(length == 3, 0x0F, 0x07)).astype(np.uint32)
    for k in (1, 2, 3):
        more = length > k
        codes[more] = (codes[more] << 6) | (utf8[lead[more] + k] & 0x3F)
    return codes


def _byte_counts(utf8: np.ndarray) -> np.ndarray:
    """Occurrences of each byte value; counted in pairs (as uint16) for twice bincount's speed."""
    even = len(utf8) // 2 * 2
    pairs = np.bincount(utf8[:even].view(np.uint16), minlength=65536).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < len(utf8):
        counts[utf8[-1]] += 1
    return counts


def scan(source: CorpusSource, chunk_bytes: int = CHUNK_BYTES) -> Scan:
    """Count every character and hash the text, one chunk at a time."""
    counts = np.zeros(_CODEPOINTS, dtype=np.int64)
    sha = hashlib.sha256()
    chars = 0
    for piece in source.pieces(chunk_bytes):
        utf8 = _utf8(piece)
        sha.update(utf8)
        per_byte = _byte_counts(utf8)
        counts[:128] += per_byte[:128]  # ASCII characters are single bytes
        chars += len(utf8) - int(per_byte[0x80:0xC0].sum())  # continuation bytes are no chars
        if per_byte[0xC0:].any():
            codes = _multibyte_codes(utf8)
            low = int(codes.min())  # counted from the lowest code, not 0: an emoji costs
            found = np.bincount(codes - low)  # its range, not a 9 MB array per chunk
            counts[low : low + len(found)] += found
    return Scan(counts=counts, chars=chars, sha256=sha.hexdigest())


def vocab_from_counts(counts: np.ndarray, min_count: int) -> Vocab:
    """The vocabulary `Vocab.from_text` would build from the text these counts describe."""
    if min_count <= 1:
        return Vocab(tuple(chr(c) for c in np.flatnonzero(counts)))
    kept = {chr(c) for c in np.flatnonzero(counts >= min_count)}
    return Vocab(tuple(sorted(kept | {UNKNOWN_CHAR})), unknown_char=UNKNOWN_CHAR)


def symbol_counts(vocab: Vocab, counts: np.ndarray) -> tuple[int, ...]:
    """Occurrences of each vocabulary symbol; the unknown symbol also counts the rare ones."""
    out = [int(counts[ord(c)]) for c in vocab.chars]
    if vocab.unknown_char is not None:
        in_vocab = np.zeros(_CODEPOINTS, dtype=bool)
        in_vocab[[ord(c) for c in vocab.chars]] = True
        out[vocab.chars.index(vocab.unknown_char)] += int(counts[~in_vocab].sum())
    return tuple(out)


# -- pass 2: encode -----------------------------------------------------------------------------
def lookup_table(vocab: Vocab) -> np.ndarray:
    """Code point -> id; characters outside the vocabulary map to the unknown symbol (or 0)."""
    fill = vocab.chars.index(vocab.unknown_char) if vocab.unknown_char is not None else 0
    table = np.full(_CODEPOINTS, fill, dtype=vocab.dtype)
    table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab), dtype=vocab.dtype)
    return table


def _write_ids(out: BinaryIO, source: CorpusSource, vocab: Vocab, chunk_bytes: int) -> int:
    table = lookup_table(vocab)
    # Bytes -> ids for ASCII (lead bytes get a placeholder, overwritten below); with uint8 ids
    # `bytes.translate` does it in one C loop.
    by_byte = table[:256]
    translate = by_byte.tobytes() if vocab.dtype == np.uint8 else None
    written = 0
    for piece in source.pieces(chunk_bytes):
        utf8 = _utf8(piece)
        firsts = utf8 if isinstance(piece, bytes) else utf8[(utf8 & 0xC0) != 0x80]
        if translate is not None:
            ids = np.frombuffer(bytearray(firsts.tobytes().translate(translate)), np.uint8)
        else:
            ids = np.take(by_byte, firsts)
        if not isinstance(piece, bytes):
            ids[np.flatnonzero(firsts >= 0xC0)] = table[_multibyte_codes(utf8)]
        out.write(memoryview(ids).cast("B"))
        written += len(ids)
    return written


def _sample_digest(f: BinaryIO, payload_bytes: int) -> str:
    """SHA-256 of a few blocks spread over the ids: catches damage without reading them all."""
    sha = hashlib.sha256(str(payload_bytes).encode())
    step = max(payload_bytes // _SAMPLE_BLOCKS, 1)
    for start in range(0, payload_bytes, step):
        f.seek(start)
        sha.update(f.read(min(_SAMPLE_BYTES, payload_bytes - start)))
    return sha.hexdigest()


def _write_cache(
    path: Path, source: CorpusSource, header: dict[str, Any], vocab: Vocab, chunk_bytes: int
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path, "w+b") as f:
            written = _write_ids(f, source, vocab, chunk_bytes)
            if written != header["chars"]:
                raise CharlmError(
                    f"{source.spec}: the corpus changed while it was being encoded "
                    f"({header['chars']:,} then {written:,} characters); run again"
                )
            f.flush()
            payload = written * np.dtype(vocab.dtype).itemsize
            header["ids_sample_sha256"] = _sample_digest(f, payload)
            f.seek(0, os.SEEK_END)
            body = json.dumps(header, ensure_ascii=True).encode("ascii")
            f.write(body + len(body).to_bytes(8, "little") + hashlib.sha256(body).digest() + MAGIC)
    except OSError as e:
        raise CharlmError(
            f"{path}: cannot write the corpus id cache ({e.strerror or e}); set data.cache_dir "
            f"to a writable folder with room for about {header['chars']:,} x "
            f"{np.dtype(vocab.dtype).itemsize} bytes"
        ) from None


def read_header(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The header of a cache file and "" if it is intact, else None and what is wrong."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < _TRAILER:
                return None, "truncated"
            f.seek(size - _TRAILER)
            trailer = f.read(_TRAILER)
            if trailer[-len(MAGIC) :] != MAGIC:
                return None, "truncated or not a charlm id cache"
            length = int.from_bytes(trailer[:8], "little")
            if length > size - _TRAILER:
                return None, "bad header length"
            f.seek(size - _TRAILER - length)
            body = f.read(length)
            if hashlib.sha256(body).digest() != trailer[8:40]:
                return None, "header checksum mismatch"
            header = json.loads(body)
            payload = size - _TRAILER - length
            itemsize = np.dtype(header["dtype"]).itemsize
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                return None, "unknown format or version"
            if payload != header["chars"] * itemsize:
                return None, f"wrong size ({payload:,} bytes of ids for {header['chars']:,})"
            if _sample_digest(f, payload) != header["ids_sample_sha256"]:
                return None, "ids checksum mismatch"
            return header, ""
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable ({e})"


def _open_ids(path: Path, header: dict[str, Any]) -> np.ndarray:
    return np.memmap(path, dtype=np.dtype(header["dtype"]), mode="r", shape=(header["chars"],))


def prepare_corpus(
    data: DataConfig,
    check: Callable[[int], None] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> PreparedCorpus:
    """Encode the corpus `data` names into its cache (or reuse the cache) and map its ids.

    `check(chars)` runs after counting and before anything is written, so a corpus too small to
    train on leaves no cache behind.
    """
    source = corpus_source(data)
    path = cache_path(data, source)
    _check_folder(path.parent)
    identity, fast_key = _identity(data, source), _fast_key(source)
    header, problem = read_header(path)
    if header is not None and (header["identity"], header["fast_key"]) != (identity, fast_key):
        header, problem = None, "the corpus changed"
    if header is not None:
        status = "reused"
        if check is not None:
            check(header["chars"])
    else:
        status = "built" if problem == "missing" else f"rebuilt: {problem}"
        counted = scan(source, chunk_bytes)
        if counted.chars == 0:
            raise source.empty_error()
        if check is not None:
            check(counted.chars)
        vocab = vocab_from_counts(counted.counts, data.min_char_count)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "identity": identity,
            "fast_key": fast_key,
            "sha256": counted.sha256,
            "chars": counted.chars,
            "dtype": np.dtype(vocab.dtype).name,
            "vocab": vocab.to_dict(),
            "counts": list(symbol_counts(vocab, counted.counts)),
        }
        _write_cache(path, source, header, vocab, chunk_bytes)
        if _fast_key(source) != fast_key:
            path.unlink(missing_ok=True)
            raise CharlmError(f"{source.spec}: the corpus changed while it was being encoded")
    return PreparedCorpus(
        ids=_open_ids(path, header),
        vocab=Vocab.from_dict(header["vocab"]),
        counts=tuple(header["counts"]),
        sha256=header["sha256"],
        files=tuple(str(p) for p in source.files),
        source=source.spec,
        cache_path=path,
        status=status,
    )


def split_sizes(chars: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) lengths, as `charlm.batches.split_ids` cuts them (without torch)."""
    n_test = round(chars * test_fraction)
    n_val = round(chars * val_fraction)
    return chars - n_val - n_test, n_val, n_test


def corpus_statistics(prepared: PreparedCorpus, data: DataConfig) -> dict[str, Any]:
    """What `charlm data prepare` reports about a prepared corpus, as JSON-ready values.

    The ten most and least frequent symbols (ties in vocabulary order) and the split sizes
    training will cut with `data`'s fractions.
    """
    n_train, n_val, n_test = split_sizes(prepared.chars, data.val_fraction, data.test_fraction)
    ranked = sorted(zip(prepared.vocab.chars, prepared.counts, strict=True), key=lambda p: -p[1])
    return {
        "corpus": prepared.source,
        "files": len(prepared.files),
        "chars": prepared.chars,
        "vocab_size": len(prepared.vocab),
        "dtype": prepared.ids.dtype.name,
        "most_frequent": [[c, n] for c, n in ranked[:10]],
        "least_frequent": [[c, n] for c, n in ranked[-10:][::-1]],
        "splits": {"train": n_train, "val": n_val, "test": n_test},
        "sha256": prepared.sha256,
        "cache": str(prepared.cache_path),
        "cache_status": prepared.status,
    }
