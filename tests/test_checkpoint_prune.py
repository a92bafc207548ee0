"""Checkpoint rotation keeps the newest checkpoints that load; files that do not are set aside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from charlm.checkpoint import (
    DAMAGED_DIR,
    load_checkpoint,
    prune,
    save_checkpoint,
    step_checkpoints,
    step_name,
)


def write_good(folder: Path, step: int) -> Path:
    path = folder / step_name(step)
    save_checkpoint(path, {"model/w": torch.full((3,), float(step))}, {"step": step})
    return path


def write_damaged(folder: Path, step: int) -> Path:
    """A real checkpoint whose last payload byte changed after it was written."""
    path = write_good(folder, step)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def write_foreign(folder: Path, step: int) -> Path:
    """A valid safetensors file that is not a charlm checkpoint."""
    path = folder / step_name(step)
    save_file({"x": torch.zeros(2)}, str(path))
    return path


def write_garbage(folder: Path, step: int) -> Path:
    path = folder / step_name(step)
    path.write_bytes(b"not a checkpoint at all")
    return path


def test_garbage_with_higher_steps_is_set_aside_and_never_counted(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        write_good(tmp_path, step)
    bad = [write_damaged(tmp_path, 50), write_foreign(tmp_path, 60), write_garbage(tmp_path, 70)]
    contents = {p.name: p.read_bytes() for p in bad}

    set_aside = prune(tmp_path, keep_last=2)

    assert [step for step, _ in step_checkpoints(tmp_path)] == [30, 40]
    for step, path in step_checkpoints(tmp_path):
        assert load_checkpoint(path).step == step
    assert [item.path for item in set_aside] == list(reversed(bad))  # newest first
    for item in set_aside:
        assert not item.path.exists()
        assert item.moved_to == tmp_path / DAMAGED_DIR / item.path.name
        assert item.moved_to.read_bytes() == contents[item.path.name]  # moved, not rewritten
        assert "\n" not in item.reason and item.path.name in item.reason
    assert "damaged checkpoint" in set_aside[-1].reason
    assert "without charlm metadata" in set_aside[1].reason


def test_a_good_checkpoint_older_than_the_garbage_is_kept(tmp_path: Path) -> None:
    """The resume case: training went back to step 5 after damaged steps 8 and 9."""
    write_good(tmp_path, 4)
    write_garbage(tmp_path, 8)
    write_damaged(tmp_path, 9)
    write_good(tmp_path, 5)
    set_aside = prune(tmp_path, keep_last=1)
    assert [step for step, _ in step_checkpoints(tmp_path)] == [5]
    assert sorted(p.name for p in (tmp_path / DAMAGED_DIR).iterdir()) == [
        step_name(8),
        step_name(9),
    ]
    assert len(set_aside) == 2


def test_only_good_files_rotate_as_before(tmp_path: Path) -> None:
    for step in range(1, 6):
        write_good(tmp_path, step)
    assert prune(tmp_path, keep_last=3) == []
    assert [step for step, _ in step_checkpoints(tmp_path)] == [3, 4, 5]
    assert not (tmp_path / DAMAGED_DIR).exists()


def test_a_second_damaged_file_of_the_same_name_does_not_replace_the_first(
    tmp_path: Path,
) -> None:
    write_good(tmp_path, 1)
    first = write_garbage(tmp_path, 7).read_bytes()
    prune(tmp_path, keep_last=1)
    (tmp_path / step_name(7)).write_bytes(b"other garbage")
    (again,) = prune(tmp_path, keep_last=1)
    assert again.moved_to.name == f"{Path(step_name(7)).stem}.1.safetensors"
    assert again.moved_to.read_bytes() == b"other garbage"
    assert (tmp_path / DAMAGED_DIR / step_name(7)).read_bytes() == first
    assert [step for step, _ in step_checkpoints(tmp_path)] == [1]


def test_keep_last_below_one_is_refused(tmp_path: Path) -> None:
    write_good(tmp_path, 1)
    with pytest.raises(ValueError, match="keep_last"):
        prune(tmp_path, keep_last=0)
    assert [step for step, _ in step_checkpoints(tmp_path)] == [1]


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every full load `prune` makes from now on."""
    from charlm import checkpoint

    loads: list[Path] = []
    real = checkpoint.load_checkpoint

    def counted(path: Path, warn: bool = True) -> checkpoint.Checkpoint:
        loads.append(Path(path))
        return real(path, warn)

    monkeypatch.setattr(checkpoint, "load_checkpoint", counted)
    return loads


def test_a_save_in_a_steady_run_loads_only_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2, 3):
        write_good(tmp_path, step)
    loads = count_loads(monkeypatch)
    prune(tmp_path, keep_last=3)
    assert sorted(p.name for p in loads) == [step_name(s) for s in (1, 2, 3)]  # first: all
    for step in (4, 5, 6):
        loads.clear()
        newest = write_good(tmp_path, step)
        assert prune(tmp_path, keep_last=3) == []
        assert loads == [newest]  # the others passed before and have not changed
        assert [s for s, _ in step_checkpoints(tmp_path)] == [step - 2, step - 1, step]


def test_a_file_changed_after_it_passed_is_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for step in (1, 2, 3, 4):
        write_good(tmp_path, step)
    prune(tmp_path, keep_last=3)
    loads = count_loads(monkeypatch)
    (tmp_path / step_name(4)).write_bytes(b"replaced by garbage")  # size, mtime and ctime change
    (moved,) = prune(tmp_path, keep_last=3)
    assert moved.path.name == step_name(4) and [p.name for p in loads] == [step_name(4)]
    assert [s for s, _ in step_checkpoints(tmp_path)] == [2, 3]
