"""Download a classic corpus by name, verified by length and SHA-256 before it is kept.

The file is streamed into a temporary name beside the destination and renamed only once its
length and digest match, so an interrupted or tampered download never leaves a file that looks
like the corpus.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from charlm.errors import CharlmError
from charlm.files import atomic_open

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
    name: str, dest: str | Path = "data", url: str | None = None, timeout: float = 30.0
) -> tuple[Path, bool]:
    """Download corpus `name` into `dest`; returns its path and whether it was downloaded.

    A file already there with the right length and digest is kept as it is.
    """
    known = KNOWN.get(name)
    if known is None:
        known_names = ", ".join(KNOWN)
        raise CharlmError(f"data fetch {name!r}: unknown corpus; expected one of {known_names}")
    url = url or known.url
    target = Path(dest) / known.filename
    if _matches(target, known):
        return target, False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharlmError(f"{dest}: cannot create the folder ({e.strerror or e})") from None
    sha, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_open(target) as out:
            while size <= known.size:  # one byte more than expected is enough to refuse
                block = response.read(_BLOCK)
                if not block:
                    break
                sha.update(block)
                out.write(block)
                size += len(block)
            if size != known.size or sha.hexdigest() != known.sha256:
                got = (
                    f"more than {known.size:,} bytes"
                    if size > known.size
                    else f"{size:,} bytes, SHA-256 {sha.hexdigest()}"
                )
                raise CharlmError(
                    f"{url}: the download does not match {name} (got {got}; expected "
                    f"{known.size:,} bytes, SHA-256 {known.sha256}); nothing was saved"
                )
    except urllib.error.HTTPError as e:
        raise CharlmError(f"{url}: download failed (HTTP {e.code} {_one_line(e.reason)})") from None
    except urllib.error.URLError as e:
        raise CharlmError(
            f"{url}: cannot download {name} ({_one_line(e.reason)}); check the network "
            f"connection, or pass --url with a reachable copy"
        ) from None
    except ValueError as e:  # not a URL urllib can open
        raise CharlmError(f"--url {url!r}: {_one_line(e)}; expected an http(s) address") from None
    except (TimeoutError, OSError) as e:
        raise CharlmError(
            f"{url}: download of {name} failed ({_one_line(e.strerror or e)}); nothing was saved"
        ) from None
    return target, True
