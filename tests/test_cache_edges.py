"""The id cache at its edges: edits that hide their mtime, wide code points, and flat memory."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_text

from charlm import cache
from charlm.config import DataConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_a_same_size_edit_with_its_mtime_put_back_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(make_text(3000), encoding="utf-8")
    data = DataConfig(corpus=str(path))
    assert cache.prepare_corpus(data).status == "built"
    before = path.stat()
    text = path.read_text(encoding="utf-8")
    path.write_text("Q" + text[1:], encoding="utf-8")  # same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    again = cache.prepare_corpus(data)
    assert again.status == "rebuilt: the corpus changed"
    assert "Q" in again.vocab
    assert cache.prepare_corpus(data).status == "reused"


@pytest.mark.parametrize("chunk", [5, 64, 1 << 20])
def test_counts_of_low_and_astral_code_points_in_one_chunk(tmp_path: Path, chunk: int) -> None:
    text = ("aé Привет 日本 😀 \U0010fffd z\n" * 50) + "\U0001f600" * 3
    path = tmp_path / "w.txt"
    path.write_text(text, encoding="utf-8")
    prepared = cache.prepare_corpus(DataConfig(corpus=str(path)), chunk_bytes=chunk)
    expected = collections.Counter(text)
    assert prepared.vocab.chars == tuple(sorted(expected))
    assert dict(zip(prepared.vocab.chars, prepared.counts, strict=True)) == expected
    assert prepared.vocab.decode(np.asarray(prepared.ids)) == text


PEAK_CHILD = """
import re, runpy, sys
from pathlib import Path
out, sys.argv = Path(sys.argv[1]), ["charlm", *sys.argv[2:]]
try:
    runpy.run_module("charlm", run_name="__main__")
finally:  # VmHWM: this program's own peak (ru_maxrss would include the forked test process)
    status = Path("/proc/self/status").read_text()
    out.write_text(re.search(r"VmHWM:\\s*(\\d+) kB", status).group(1))
"""


def _peak_rss_mib(corpus: Path, cache_dir: Path) -> float:
    """Peak RSS of `charlm data prepare CORPUS` building its cache in a fresh process."""
    report = cache_dir.with_suffix(".peak")
    args = ["data", "prepare", str(corpus), f"data.cache_dir={cache_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(report), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )
    return int(report.read_text()) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM")
def test_prepare_memory_is_flat_on_text_that_needs_decoding(tmp_path: Path) -> None:
    """One `é` per MiB sends every chunk through the decoder; its peak RSS must stay near pure
    ASCII's and must not follow the size.

    With 16 MiB chunks, at 64 MiB: 144 MiB for ASCII, 208 MiB with the `é`s (heap fragmentation).
    """
    line = b"the quick brown fox jumps over the lazy dog, and then some more words here.\n"
    ascii_block = line * (2**20 // len(line))
    block = bytearray(ascii_block)
    block[500:502] = "é".encode()
    peaks = {}
    for name, data, mib in (("ascii", ascii_block, 64), ("one-e", block, 16), ("one-e", block, 64)):
        corpus = tmp_path / f"{name}{mib}.txt"
        with corpus.open("wb") as f:
            for _ in range(mib):
                f.write(data)
        peaks[name, mib] = _peak_rss_mib(corpus, tmp_path / f"cache-{name}{mib}")
        corpus.unlink()
    assert peaks["one-e", 64] - peaks["ascii", 64] < 24, peaks
    assert peaks["one-e", 64] - peaks["one-e", 16] < 8, peaks
