"""Windowed scoring: fresh state per window, first character context only, windows tiled."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.config import ModelConfig
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_ids, evaluate_windows
from charlm.model import CharLM

VOCAB = 9


def tiny_model(cell: str = "lstm") -> CharLM:
    torch.manual_seed(0)
    return CharLM(ModelConfig(cell=cell, embedding_dim=6, hidden_size=8, num_layers=2), VOCAB)


def random_ids(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, n).astype(np.int64)


def by_hand(model: CharLM, ids: np.ndarray, window: int) -> tuple[float, int]:
    """Each full window alone from a zero state; -log p of its characters 2..window."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - window + 1, window):
            chars = torch.as_tensor(ids[start : start + window])
            logits, _ = model(chars[None, :-1])
            logp = torch.log_softmax(logits[0].double(), dim=-1)
            for k in range(window - 1):
                nll -= float(logp[k, chars[k + 1]])
                count += 1
    return nll / count, count


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch", [1, 2, 64])
def test_windows_score_as_computed_by_hand(cell: str, batch: int) -> None:
    model = tiny_model(cell)
    ids = random_ids(47)  # 5 windows of 9 and 2 characters left over
    expected, count = by_hand(model, ids, 9)
    result = evaluate_windows(model, ids, 9, batch=batch, chunk_len=4)
    assert result.chars == count == 5 * 8
    assert result.streams == 5
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.bpc == pytest.approx(expected / math.log(2), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)


def test_state_is_reset_between_windows() -> None:
    model = tiny_model()
    ids = random_ids(60)
    windowed = evaluate_windows(model, ids, 6)
    # The same windows in another order: with the state reset, nothing before a window counts.
    rotated = np.concatenate([ids[30:], ids[:30]])
    assert evaluate_windows(model, rotated, 6).loss == pytest.approx(windowed.loss, rel=1e-6)
    # And the rotation would show a carried state: this model's outputs depend on it.
    with torch.no_grad():
        x = torch.as_tensor(ids)[None]
        _, state = model(x[:, :6])
        carried, _ = model(x[:, 6:11], state)
        fresh, _ = model(x[:, 6:11])
    assert not torch.allclose(carried, fresh, atol=1e-4)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_window_over_the_whole_text_is_the_single_stream_score(cell: str) -> None:
    model = tiny_model(cell)
    ids = random_ids(300)
    whole = evaluate_windows(model, ids, len(ids), chunk_len=64)
    single = evaluate_ids(model, ids, streams=1, chunk_len=64)
    assert whole.chars == single.chars == len(ids) - 1
    assert whole.loss == pytest.approx(single.loss, rel=1e-12, abs=1e-12)


def test_windows_through_the_sampling_steps_match_the_forward() -> None:
    model = tiny_model("gru")
    ids = random_ids(40)
    stepped = evaluate_windows(model, ids, 8, batch=3, precision="fp32")
    assert stepped.loss == pytest.approx(evaluate_windows(model, ids, 8).loss, rel=1e-5)


def test_model_mode_is_restored() -> None:
    model = tiny_model()
    model.train()
    evaluate_windows(model, random_ids(20), 5)
    assert model.training


@pytest.mark.parametrize(
    ("window", "batch", "message"),
    [
        (1, 4, "window 1: too short; need at least 2"),
        (0, 4, "window 0: too short"),
        (31, 4, r"window 31: longer than the text \(30 characters\)"),
        (5, 0, "batch 0: need at least 1"),
    ],
)
def test_bad_window_is_a_one_line_error(window: int, batch: int, message: str) -> None:
    with pytest.raises(CharlmError, match=message) as info:
        evaluate_windows(tiny_model(), random_ids(30), window, batch=batch)
    assert "\n" not in str(info.value)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(CharlmError, match="--precision 'auto'"):
        evaluate_windows(tiny_model(), random_ids(30), 5, precision="auto")


def test_eval_window_on_a_run_and_on_the_command_line(trained_run: Path) -> None:
    import json

    from typer.testing import CliRunner

    from charlm.checkpoint import load_model
    from charlm.cli import app
    from charlm.evaluate import evaluate_run
    from charlm.training import prepare_data

    loaded = load_model(trained_run, "cpu")
    data = prepare_data(loaded.config)
    expected = evaluate_windows(loaded.model, data.splits.val, 64)
    result = evaluate_run(trained_run, split="val", device="cpu", window=64)
    assert result.loss == pytest.approx(expected.loss, rel=1e-9)
    assert result.chars == expected.chars == (len(data.splits.val) // 64) * 63
    runner = CliRunner()
    shown = runner.invoke(
        app, ["eval", str(trained_run), "--device", "cpu", "--window", "64", "--json"]
    )
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["loss"] == pytest.approx(expected.loss, rel=1e-9)
    assert record["scored"] == "val split, fresh 64-character windows"
    folder = runner.invoke(
        app, ["eval", str(trained_run), "--window", "64", "--corpus", str(trained_run)]
    )
    assert folder.exit_code == 1 and "--window 64: scores one text" in folder.output
