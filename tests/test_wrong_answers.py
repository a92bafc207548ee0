"""Inputs that used to give a wrong answer quietly: a greedy `inf` temperature, a minimum length
that was twice the true one, silently skipped files, sizes that overflow a seed or the machine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from charlm import machine
from charlm.batches import RandomBatcher, StreamBatcher, min_train_chars
from charlm.coerce import parse_yaml
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.corpus import CorpusWarning, resolve_files
from charlm.errors import CharlmError
from charlm.sample_options import MIN_TEMPERATURE, SampleOptions
from charlm.sample_setup import check_threads


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_estimate_is_the_model_count(cell: str, layers: int) -> None:
    from charlm.model import CharLM

    model = ModelConfig(cell=cell, num_layers=layers, hidden_size=24, embedding_dim=10)
    assert machine.model_parameters(model, 37) == CharLM(model, 37).num_parameters()


@pytest.mark.parametrize(
    ("on_gpu", "ema", "per"), [(False, None, 16), (False, 0.99, 20), (True, None, 4)]
)
def test_model_memory_check_counts_what_training_holds(
    monkeypatch: pytest.MonkeyPatch, on_gpu: bool, ema: float | None, per: int
) -> None:
    config = Config(model=ModelConfig(hidden_size=64), train=TrainConfig(ema_decay=ema))
    need = machine.model_parameters(config.model, 50) * per
    monkeypatch.setattr(machine, "available_memory", lambda: need)
    machine.check_model_fits(config, 50, on_gpu)  # exactly fits
    monkeypatch.setattr(machine, "available_memory", lambda: need - 1)
    with pytest.raises(CharlmError, match=f"model.hidden_size=64.*{per} bytes each"):
        machine.check_model_fits(config, 50, on_gpu)


def test_available_memory_is_plausible() -> None:
    free = machine.available_memory()
    assert free is None or 10**7 < free < 10**15
    assert machine.cpu_count() >= 1


@pytest.mark.parametrize(("batch", "seq_len"), [(16, 32), (8, 32), (1, 1), (3, 7)])
def test_the_stated_minimum_is_the_true_one(batch: int, seq_len: int) -> None:
    need = min_train_chars(batch, seq_len, "stream")
    assert need == batch * (seq_len + 1) + seq_len
    StreamBatcher(np.zeros(need, np.uint8), batch, seq_len).next()
    with pytest.raises(CharlmError, match=f"need at least {need:,}"):
        StreamBatcher(np.zeros(need - 1, np.uint8), batch, seq_len)
    need = min_train_chars(batch, seq_len, "random")
    RandomBatcher(np.zeros(need, np.uint8), batch, seq_len).next()
    with pytest.raises(CharlmError, match=f"need at least {need:,}"):
        RandomBatcher(np.zeros(need - 1, np.uint8), batch, seq_len)


def test_stream_offsets_take_any_valid_seed() -> None:
    ids = np.arange(400, dtype=np.uint8)
    for seed in (0, 12345, 2**63 - 1):
        batcher = StreamBatcher(ids, 2, 8, seed=seed)
        for _ in range(batcher.steps_per_epoch * 3):  # three epochs: three offsets
            x, _, _ = batcher.next()
            assert x.shape == (2, 8)
    import torch

    small = StreamBatcher(ids, 2, 8, seed=7)  # below 2**64 the offsets are what they always were
    for epoch in range(1, 5):
        gen = torch.Generator().manual_seed(7 * 1_000_003 + epoch)
        assert small._offset(epoch) == int(torch.randint(0, 8, (1,), generator=gen))


def test_skipped_binary_files_are_named_in_one_warning(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")
    for i in range(12):
        (tmp_path / f"blob{i:02}.bin").write_bytes(b"\x00\x01" * 10)
    with pytest.warns(CorpusWarning) as caught:
        files = resolve_files(str(tmp_path))
    assert files == [tmp_path / "a.txt"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 12 binary file(s)" in message and "blob00.bin" in message
    assert "blob09.bin" in message and "blob10.bin" not in message and "and 2 more" in message


def test_a_folder_of_text_warns_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_files(str(tmp_path)) == [tmp_path / "a.txt"]


def test_the_cli_shows_a_charlm_warning_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from charlm.cli import views

    views.show_warning(
        CorpusWarning("corpus: skipped 1 binary file(s): b.bin"), CorpusWarning, "x", 1
    )
    assert capsys.readouterr().err == "warning: corpus: skipped 1 binary file(s): b.bin\n"


@pytest.mark.parametrize("temperature", [0.0, MIN_TEMPERATURE, 0.8, 1e300])
def test_temperatures_that_decode(temperature: float) -> None:
    assert SampleOptions(temperature=temperature).temperature == temperature


@pytest.mark.parametrize("temperature", [float("inf"), 1e-320, 1e-7, float("nan"), -1.0])
def test_temperatures_refused(temperature: float) -> None:
    with pytest.raises(CharlmError, match="--temperature"):
        SampleOptions(temperature=temperature)


def test_huge_temperature_samples_every_symbol(trained_run: Path) -> None:
    """1/T underflows towards 0: the noise alone decides, so the text is close to uniform."""
    from charlm.checkpoint import load_model
    from charlm.sample import decode

    loaded = load_model(trained_run, "cpu")
    options = SampleOptions(length=3000, temperature=1e300, seed=3)
    text = "".join(c for (c,) in decode(loaded.model, loaded.vocab, "", options))
    assert len(set(text)) == len(loaded.vocab)


def test_threads_bounded_by_the_cpus() -> None:
    check_threads(machine.cpu_count())
    with pytest.raises(CharlmError, match=f"from 1 to {machine.cpu_count()}"):
        check_threads(machine.cpu_count() + 1)


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = "base: &b {cell: gru}\nmodel:\n  <<: *b\n  cell: lstm\n"
    assert parse_yaml(text)["model"] == {"cell": "lstm"}
