"""Fine-tuning (`train.init_from`, `charlm train --init-from`): weights, vocabulary and model
keys from the source, everything else fresh, one-line errors, the source recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_text, tiny_config
from typer.testing import CliRunner

from charlm.cache import split_sizes
from charlm.checkpoint import load_checkpoint, load_model
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_run
from charlm.info import describe
from charlm.training import Trainer, train
from charlm.training.init_from import resolve_config

runner = CliRunner()


@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Other sentences over fewer characters than the source's corpus (no capitals)."""
    path = tmp_path_factory.mktemp("finetune") / "new.txt"
    path.write_text(make_text(12_000, seed=7).lower(), encoding="utf-8")
    return path


def fine_tune_config(source: Path, corpus: Path, **extra: object) -> object:
    return tiny_config(corpus, **{"train.init_from": str(source), **extra})


def test_first_val_loss_is_the_sources_and_fine_tuning_lowers_it(
    trained_run: Path, new_corpus: Path, tmp_path: Path
) -> None:
    config = resolve_config(
        fine_tune_config(trained_run, new_corpus, **{"train.max_steps": 30, "train.lr": 0.003})
    )
    text = new_corpus.read_text(encoding="utf-8")
    n_train, n_val, _ = split_sizes(len(text), config.data.val_fraction, 0.0)
    (tmp_path / "val.txt").write_text(text[n_train:], encoding="utf-8")
    streams = config.train.eval_streams
    source_loss = evaluate_run(trained_run, tmp_path / "val.txt", device="cpu", streams=streams)
    source_loss = source_loss.loss
    before = Trainer(config, tmp_path / "unused").evaluate(full=True)
    assert before.chars == n_val - 1
    assert before.loss == pytest.approx(source_loss, abs=1e-6)
    result = train(config, tmp_path / "ft")
    assert result.steps == 30  # a fresh step count, not the source's 60 + 30
    assert result.final_val.loss < source_loss - 0.01
    tuned = load_model(tmp_path / "ft", "cpu")
    source = load_model(trained_run, "cpu")
    assert tuned.vocab == source.vocab  # the source's, not the new corpus's smaller one
    assert tuned.config.model == source.config.model


def test_weights_come_from_the_source_and_the_rest_starts_fresh(
    trained_run: Path, new_corpus: Path, tmp_path: Path
) -> None:
    config = resolve_config(fine_tune_config(trained_run, new_corpus))
    trainer = Trainer(config, tmp_path / "unused")
    source = load_model(trained_run, "cpu").model
    for (name, mine), theirs in zip(
        trainer.model.state_dict().items(), source.state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    assert trainer.step == 0 and trainer.batcher.state_dict() != {}
    assert not trainer.step_fn.optimizer.state  # no moments carried over


def test_the_run_records_its_source(trained_run: Path, new_corpus: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["train", *_overrides(new_corpus), "--init-from", str(trained_run), "--out",
         str(tmp_path / "ft"), "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    best = load_checkpoint(trained_run / "checkpoints" / "best.safetensors").path.absolute()
    record = load_checkpoint(tmp_path / "ft" / "checkpoints" / "best.safetensors").record
    assert record["config"]["train"]["init_from"] == str(best)
    assert describe(tmp_path / "ft")["summary"]["init_from"] == str(best)
    assert f"  init_from: {best}\n" in (tmp_path / "ft" / "config.yaml").read_text()
    shown = runner.invoke(app, ["info", str(tmp_path / "ft")])
    assert f"train.init_from = {best}" in " ".join(shown.output.split())


def _overrides(corpus: Path) -> list[str]:
    return [f"data.corpus={corpus}", "train.max_steps=10", "train.eval_interval=10",
            "train.checkpoint_interval=10", "train.batch_size=8", "train.seq_len=32",
            "train.device=cpu"]  # fmt: skip


def test_a_different_shape_is_one_line_naming_the_key(
    trained_run: Path, new_corpus: Path, tmp_path: Path
) -> None:
    for key, value in (("model.hidden_size", 64), ("model.cell", "gru")):
        with pytest.raises(CharlmError, match=rf"^{key}: .* has .*drop {key}\)$"):
            resolve_config(fine_tune_config(trained_run, new_corpus, **{key: value}))
    kept = resolve_config(fine_tune_config(trained_run, new_corpus, **{"model.dropout": 0.1}))
    assert kept.model.dropout == 0.1 and kept.model.hidden_size == 32
    result = runner.invoke(
        app, ["train", *_overrides(new_corpus), "model.num_layers=3", "--init-from",
              str(trained_run), "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert result.exit_code == 1 and "error: model.num_layers: 3, but" in result.output
    assert not (tmp_path / "x").exists()


def test_characters_outside_the_vocabulary(
    trained_run: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    odd = tmp_path / "odd.txt"
    odd.write_text(make_text(12_000, seed=3).replace("cat", "c\u00e4t").replace("dog", "d\u00f6g"))
    count = odd.read_text().count("\u00e4")
    message = rf"2 character\(s\) not in the vocabulary .*'ä' x{count}"
    with pytest.raises(CharlmError, match=message):
        train(resolve_config(fine_tune_config(trained_run, odd)), tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
    # A source trained with an unknown symbol takes them.
    corpus = tmp_path / "base.txt"
    corpus.write_text(make_text(12_000) + "\u00df", encoding="utf-8")
    source = tmp_path / "source"
    train(tiny_config(corpus, **{"data.min_char_count": 2, "train.max_steps": 10}), source)
    result = train(resolve_config(fine_tune_config(source, odd, **{"train.max_steps": 10})),
                   tmp_path / "ft2")  # fmt: skip
    assert result.steps == 10
    assert load_model(tmp_path / "ft2", "cpu").vocab.unknown_char == "\ufffd"


def test_a_missing_source_is_one_line(new_corpus: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", *_overrides(new_corpus), "--init-from", str(tmp_path / "none")]
    )
    assert result.exit_code == 1
    assert "error: train.init_from: " in result.output and "Traceback" not in result.output
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CharlmError, match=r"train.init_from: .*not a valid charlm checkpoint"):
        resolve_config(fine_tune_config(tmp_path / "junk.safetensors", new_corpus))
    with pytest.raises(CharlmError, match=r"train\.init_from"):
        tiny_config(new_corpus, **{"train.init_from": "bad\0path"})
