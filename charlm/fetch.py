"""Download a classic corpus by name, verified by length and SHA-256 before it is kept.

The file is streamed into a temporary name beside the destination and renamed only once its
length and digest match, so an interrupted or tampered download never leaves a file that looks
like the corpus. The destination's folders are created only once the first bytes arrive, and
those it created are removed again if the download then fails: a failed fetch leaves nothing.
Progress goes to a callback (the CLI draws it), as (bytes so far, total or None).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import CharlmError
from charlm.files import atomic_open

Progress = Callable[[int, int | None], None]
"""Called with (bytes received so far, the total the server announced or None), from 0 up."""

_BLOCK = 1 << 16


@dataclass(frozen=True)
class KnownCorpus:
    name: str
    url: str
    filename: str
    size: int
    sha256: str


KNOWN = {
    "tinyshakespeare": KnownCorpus(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="tinyshakespeare.txt",
        size=1_115_394,
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
}


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _matches(path: Path, known: KnownCorpus) -> bool:
    if not path.is_file() or path.stat().st_size != known.size:
        return False
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            sha.update(block)
    return sha.hexdigest() == known.sha256


def fetch(
    name: str,
    dest: str | Path = "data",
    url: str | None = None,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> tuple[Path, bool]:
    """Download corpus `name` into `dest`; returns its path and whether it was downloaded.

    A file already there with the right length and digest is kept as it is. `url` replaces the
    corpus's canonical address (a mirror); `progress` hears of every block received.
    """
    known = KNOWN.get(name)
    if known is None:
        known_names = ", ".join(KNOWN)
        raise CharlmError(f"data fetch {name!r}: unknown corpus; expected one of {known_names}")
    url = url or known.url
    target = Path(dest) / known.filename
    if _matches(target, known):
        return target, False
    folder = Path(dest)
    file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:  # refused before anything is downloaded
        raise CharlmError(f"{folder}: {file} is a file; expected a folder to save in (--dest)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            _save(response, target, known, url, progress or (lambda done, total: None))
    except urllib.error.HTTPError as e:
        raise CharlmError(f"{url}: download failed (HTTP {e.code} {_one_line(e.reason)})") from None
    except urllib.error.URLError as e:
        raise CharlmError(
            f"{url}: cannot download {name} ({_one_line(e.reason)}); check the network "
            f"connection, or pass --url with a reachable copy"
        ) from None
    except ValueError as e:  # not a URL urllib can open
        raise CharlmError(f"--url {url!r}: {_one_line(e)}; expected an http(s) address") from None
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        reason = _one_line(getattr(e, "strerror", None) or e) or type(e).__name__
        raise CharlmError(
            f"{url}: download of {name} failed ({reason}); nothing was saved"
        ) from None
    return target, True


def _save(
    response: http.client.HTTPResponse,
    target: Path,
    known: KnownCorpus,
    url: str,
    progress: Progress,
) -> None:
    """Stream the response into `target`, verified; on failure remove the folders it made."""
    length = response.headers.get("Content-Length", "")
    total = int(length) if length.isdigit() else None
    progress(0, total)
    block = response.read(_BLOCK)  # the first bytes: only now is anything created
    created = _make_folder(target.parent)
    try:
        sha, size = hashlib.sha256(), 0
        with atomic_open(target) as out:
            while block and size <= known.size:  # one byte more than expected is enough
                sha.update(block)
                out.write(block)
                size += len(block)
                progress(size, total)
                block = response.read(_BLOCK)
            _check(known, url, size, sha.hexdigest(), total)
    except BaseException:
        _remove(created)
        raise


def _make_folder(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; -> the ones created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove(missing)
        raise CharlmError(f"{folder}: cannot create the folder ({e.strerror or e})") from None
    return missing


def _remove(created: list[Path]) -> None:
    """Remove the folders a failed download created, deepest first; one holding anything stays
    (rmdir removes only empty folders), and none that existed before is in the list."""
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check(known: KnownCorpus, url: str, size: int, sha: str, total: int | None) -> None:
    """Refuse a download that stopped short or is not the corpus (nothing is kept then)."""
    if size <= known.size and total is not None and size < total:
        raise CharlmError(
            f"{url}: the connection closed after {size:,} of {total:,} bytes; nothing was saved"
        )
    if size != known.size or sha != known.sha256:
        got = (
            f"more than {known.size:,} bytes"
            if size > known.size
            else f"{size:,} bytes, SHA-256 {sha}"
        )
        raise CharlmError(
            f"{url}: the download does not match {known.name} (got {got}; expected "
            f"{known.size:,} bytes, SHA-256 {known.sha256}); nothing was saved"
        )


def fetch_hint(corpus: str) -> str | None:
    """For a missing corpus file named like a classic one: the `charlm data fetch` command that
    puts it at that very path."""
    import shlex

    path = Path(corpus)
    known = next((k for k in KNOWN.values() if k.filename == path.name), None)
    if known is None:
        return None
    dest = "" if path.parent == Path("data") else f" --dest {shlex.quote(str(path.parent))}"
    here = "" if path.is_absolute() else " (run in this folder)"
    return (
        f"get it with `charlm data fetch {known.name}{dest}`{here}, or set data.corpus=PATH "
        f"to a copy"
    )
