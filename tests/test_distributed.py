"""The pure parts of data-parallel training, in one process: shards, batch split, the launcher."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from charlm import distributed
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.distributed import Dist
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_ids
from charlm.model import CharLM

runner = CliRunner()


@pytest.mark.parametrize(("batch", "world"), [(8, 1), (8, 2), (8, 4), (12, 3)])
def test_shards_split_the_global_batch_into_equal_disjoint_rows(batch: int, world: int) -> None:
    rows = [list(range(batch))[Dist(rank=r, world_size=world).shard(batch)] for r in range(world)]
    assert [i for part in rows for i in part] == list(range(batch))  # in order, each row once
    assert {len(part) for part in rows} == {batch // world}
    assert Dist(rank=0, world_size=world).local_batch(batch) == batch // world


def test_a_batch_that_does_not_split_is_a_clear_error() -> None:
    with pytest.raises(CharlmError) as info:
        Dist(rank=1, world_size=3).shard(8)
    message = str(info.value)
    assert "train.batch_size=8" in message and "3 processes" in message
    assert "multiple of 3" in message


@pytest.mark.parametrize(("count", "world"), [(5, 2), (3, 4), (20, 3), (1, 2)])
def test_eval_rows_cover_any_count_once(count: int, world: int) -> None:
    rows = [list(range(count))[Dist(rank=r, world_size=world).rows(count)] for r in range(world)]
    assert [i for part in rows for i in part] == list(range(count))
    sizes = [len(part) for part in rows]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_eval_sums_to_the_single_process_score() -> None:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(embedding_dim=8, hidden_size=16, num_layers=1), vocab_size=11)
    ids = np.random.default_rng(0).integers(0, 11, size=997)
    whole = evaluate_ids(model, ids, streams=5, chunk_len=64)
    total = 0.0
    for rank in range(3):  # 5 segments over 3 processes: 1, 2 and 2 rows
        part = evaluate_ids(
            model, ids, streams=5, chunk_len=64, rows=Dist(rank=rank, world_size=3).rows
        )
        assert (part.chars, part.streams) == (whole.chars, whole.streams)
        total += part.loss * part.chars
    assert total / whole.chars == pytest.approx(whole.loss, rel=1e-6)
    reduced = evaluate_ids(model, ids, streams=5, chunk_len=64, reduce=lambda t: t * 2)
    assert reduced.loss == pytest.approx(2 * whole.loss, rel=1e-12)


def test_one_process_agrees_with_itself() -> None:
    solo = Dist()
    assert not solo.enabled and solo.is_main
    assert distributed.agree_max([1.5, 0.0, 1.0], solo) == [1.5, 0.0, 1.0]
    t = torch.arange(6.0).reshape(1, 6)
    assert distributed.gather_rows(t, solo, dim=1) is t
    assert distributed.together(solo, lambda: 7) == 7
    with pytest.raises(CharlmError, match="bad value"):
        distributed.together(solo, lambda: (_ for _ in ()).throw(CharlmError("bad value")))


def test_launch_command_reruns_train_under_torchrun() -> None:
    command = distributed.launch_command(4, ["cfg.yaml", "train.lr=0.01", "--out", "runs/x"])
    assert command[:3] == [sys.executable, "-m", "charlm.distributed"]
    assert command[3:] == [
        "--standalone",
        "--nproc_per_node",
        "4",
        "-m",
        "charlm",
        "train",
        "cfg.yaml",
        "train.lr=0.01",
        "--out",
        "runs/x",
    ]


def test_nproc_inside_torchrun_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--nproc", "2", "--out", str(tmp_path / "run")], env={"WORLD_SIZE": "2"}
    )
    assert result.exit_code == 1
    assert "already running under torchrun" in result.output
    assert not (tmp_path / "run").exists()


def test_nproc_below_one_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--nproc", "0", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "--nproc 0" in result.output
    assert "Traceback" not in result.output
