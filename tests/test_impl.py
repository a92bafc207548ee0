"""`model.impl` and `model.gru_reset`: the reference cells inside the language model.

Same weights, same numbers: a checkpoint trained on one implementation evaluates and samples to
the same loss on the other, and a reset-before GRU is never run as the reset-after one.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from charlm import events as ev
from charlm.checkpoint import load_checkpoint, load_model
from charlm.config import load_config
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_run
from charlm.model import CharLM
from charlm.runs import read_metrics
from charlm.sample import generate
from charlm.sample_options import SampleOptions
from charlm.training import TrainingInterrupted, resume, train


def test_fused_with_reset_before_is_a_config_error() -> None:
    with pytest.raises(CharlmError, match=r"model\.impl: 'fused'.*gru_reset"):
        load_config(None, ["model.cell=gru", "model.gru_reset=before"])
    config = load_config(None, ["model.cell=gru", "model.gru_reset=before", "model.impl=reference"])
    assert config.model.impl == "reference" and config.model.gru_reset == "before"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_same_weights_same_logits_across_implementations(cell: str) -> None:
    fused_cfg = load_config(
        None, [f"model.cell={cell}", "model.num_layers=2", "model.hidden_size=24"]
    )
    ref_cfg = load_config(
        None,
        [
            f"model.cell={cell}",
            "model.num_layers=2",
            "model.hidden_size=24",
            "model.impl=reference",
        ],
    )
    fused, reference = CharLM(fused_cfg.model, 17), CharLM(ref_cfg.model, 17)
    reference.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 17, (3, 40))
    with torch.no_grad():
        a, state_a = fused(ids)
        b, state_b = reference(ids)
    assert torch.allclose(a, b, atol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(state_a, state_b, strict=True))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_trained_checkpoint_scores_the_same_on_either_impl(
    tmp_path: Path, corpus_file: Path, cell: str
) -> None:
    run = tmp_path / "run"
    train(tiny_config(corpus_file, **{"model.cell": cell, "train.max_steps": 20}), run)
    fused = evaluate_run(run, device="cpu")
    reference = evaluate_run(run, device="cpu", impl="reference")
    assert reference.loss == pytest.approx(fused.loss, rel=1e-5)
    assert type(load_model(run, "cpu", impl="reference").model.rnn).__name__.startswith("Reference")
    a = "".join(
        generate(
            load_model(run, "cpu").model,
            load_model(run, "cpu").vocab,
            "T",
            SampleOptions(length=40, seed=1),
        )
    )
    ref = load_model(run, "cpu", impl="reference")
    b = "".join(generate(ref.model, ref.vocab, "T", SampleOptions(length=40, seed=1)))
    assert a == b


def test_reference_training_end_to_end_and_resume(tmp_path: Path, corpus_file: Path) -> None:
    """Train a reset-before GRU on the reference cells, stop it, resume it: the same losses."""
    extra = {
        "model.cell": "gru",
        "model.impl": "reference",
        "model.gru_reset": "before",
        "train.max_steps": 16,
        "train.log_interval": 1,
        "train.eval_interval": 8,
        "train.checkpoint_interval": 8,
    }
    config = tiny_config(corpus_file, **extra)
    whole = tmp_path / "whole"
    result = train(config, whole)
    assert result.final_val.loss < 3.0  # learned something (uniform is ~3.3 nats here)
    record = load_checkpoint(whole / "checkpoints" / "best.safetensors").record
    assert record["config"]["model"]["impl"] == "reference"
    assert record["config"]["model"]["gru_reset"] == "before"
    with pytest.raises(CharlmError, match="reset-before GRU"):
        load_model(whole, "cpu", impl="fused")
    assert evaluate_run(whole, device="cpu").loss == pytest.approx(result.best_val_loss, rel=1e-6)

    part = tmp_path / "part"

    def stop_at_10(event: ev.Event) -> None:
        if isinstance(event, ev.Logged) and event.step == 10:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config, part, on_event=stop_at_10)
    resume(part)
    losses = [(r["step"], r["train_loss"]) for r in read_metrics(part) if "train_loss" in r]
    expected = [(r["step"], r["train_loss"]) for r in read_metrics(whole) if "train_loss" in r]
    assert losses == expected


def test_sampling_runs_the_reference_cells_themselves(tmp_path: Path, corpus_file: Path) -> None:
    """A reset-before GRU samples through its own forward, never the reset-after fast path."""
    from charlm.stepper import ModelStepper, make_stepper

    extra = {"model.cell": "gru", "model.impl": "reference", "model.gru_reset": "before"}
    run = tmp_path / "run"
    train(tiny_config(corpus_file, **{**extra, "train.max_steps": 10}), run)
    loaded = load_model(run, "cpu")
    assert isinstance(make_stepper(loaded.model), ModelStepper)
    greedy = "".join(
        generate(loaded.model, loaded.vocab, "The", SampleOptions(length=25, temperature=0.0))
    )
    text = "The"
    with torch.no_grad():
        for _ in range(25):
            ids = torch.tensor(loaded.vocab.encode(text), dtype=torch.long)[None]
            text += loaded.vocab.chars[int(loaded.model(ids)[0][0, -1].argmax())]
    assert greedy == text[3:]


def test_cli_impl_flag_gives_the_same_loss_and_refuses_fused_for_reset_before(
    tmp_path: Path, corpus_file: Path
) -> None:
    import json

    from conftest import tiny_overrides
    from typer.testing import CliRunner

    from charlm.cli import app

    runner = CliRunner()
    run = tmp_path / "lstm"
    assert (
        runner.invoke(
            app, ["train", *tiny_overrides(corpus_file), "--out", str(run), "-q"]
        ).exit_code
        == 0
    )
    fused = json.loads(runner.invoke(app, ["eval", str(run), "--json"]).stdout)
    ref = json.loads(runner.invoke(app, ["eval", str(run), "--json", "--impl", "reference"]).stdout)
    assert ref["loss"] == pytest.approx(fused["loss"], rel=1e-5)
    a = runner.invoke(app, ["sample", str(run), "-n", "30", "--seed", "2"]).stdout
    b = runner.invoke(
        app, ["sample", str(run), "-n", "30", "--seed", "2", "--impl", "reference"]
    ).stdout
    assert a == b and len(a) == 30

    before = tmp_path / "before"
    extra = {"model.cell": "gru", "model.impl": "reference", "model.gru_reset": "before"}
    args = ["train", *tiny_overrides(corpus_file, **extra), "--out", str(before), "-q"]
    assert runner.invoke(app, args).exit_code == 0
    for command in (["eval", str(before)], ["sample", str(before), "-n", "5"]):
        refused = runner.invoke(app, [*command, "--impl", "fused"])
        assert refused.exit_code == 1 and "reset-before GRU" in refused.stderr
