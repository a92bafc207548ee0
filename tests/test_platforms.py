"""What differs by platform: the user cache folder, the run lock, Apple GPUs (mps) as a device,
and `charlm data fetch` (which leaves nothing behind when a download fails)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from charlm.cache import cache_path, user_cache_dir
from charlm.config import DataConfig
from charlm.corpus import corpus_source


# -- the user cache folder ----------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG folders are Linux's")
def test_the_user_cache_folder_follows_xdg_on_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == tmp_path / "xdg" / "charlm"
    data = DataConfig()  # the built-in corpus: its cache goes to the user cache folder
    assert cache_path(data, corpus_source(data)).parent == tmp_path / "xdg" / "charlm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "charlm"
