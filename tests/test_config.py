"""Config loading: defaults, YAML, dotted overrides, type conversion and rejection of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from charlm.config import Config, all_keys, config_from_dict, config_to_dict, dump_yaml, load_config
from charlm.errors import CharlmError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_defaults_without_a_file() -> None:
    config = load_config()
    assert config == Config()
    assert config.model.cell == "lstm"
    assert config.data.corpus is None


def test_yaml_then_overrides_win(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  cell: gru\n  hidden_size: 64\ntrain:\n  lr: 3e-4\n")
    config = load_config(
        path, ["model.hidden_size=96", "train.max_time=60", "train.max_steps=null"]
    )
    assert config.model.cell == "gru"
    assert config.model.hidden_size == 96
    assert config.train.lr == pytest.approx(3e-4)  # PyYAML alone would give the string "3e-4"
    assert config.train.max_time == 60.0
    assert config.train.max_steps is None


def test_override_types_are_converted_by_declaration() -> None:
    config = load_config(None, ["train.lr=1e-3", "train.batch_size=1e2", "model.cell=GRU"])
    assert isinstance(config.train.lr, float) and config.train.lr == 1e-3
    assert config.train.batch_size == 100 and isinstance(config.train.batch_size, int)
    assert config.model.cell == "gru"


def test_resolved_config_round_trips() -> None:
    config = load_config(None, ["model.dropout=0.2", "data.test_fraction=0.05"])
    assert config_from_dict(config_to_dict(config)) == config
    assert "dropout: 0.2" in dump_yaml(config)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.lrr=1", ["train.lrr", "did you mean train.lr"]),
        ("lr=1", ["unknown config key lr", "train.lr"]),
        ("model.cell=rnn", ["model.cell", "'rnn'", "lstm, gru"]),
        ("model.hidden_size=0", ["model.hidden_size", "positive"]),
        ("model.hidden_size=1.5", ["model.hidden_size", "whole number"]),
        ("model.dropout=1", ["model.dropout", "[0, 1)"]),
        ("data.val_fraction=0", ["data.val_fraction", "(0, 1)"]),
        ("train.lr=-1", ["train.lr", "> 0"]),
        ("train.lr=abc", ["train.lr", "'abc'", "number"]),
        ("train.device=tpu", ["train.device", "auto, cpu, cuda"]),
        ("data.encoding=klingon", ["data.encoding", "klingon"]),
        ("novalue", ["KEY=VALUE"]),
    ],
)
def test_bad_overrides_name_the_key(override: str, words: list[str]) -> None:
    with pytest.raises(CharlmError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_no_budget_is_an_error() -> None:
    with pytest.raises(CharlmError, match=r"max_steps and train\.max_time"):
        load_config(None, ["train.max_steps=null"])


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model:\n  celll: gru\n", ["unknown config key model.celll", "model.cell"]),
        ("modle:\n  cell: gru\n", ["unknown config section", "model"]),
        ("- 1\n- 2\n", ["mapping"]),
        ("", ["empty"]),
        ("model: [1, 2\n", ["line 2, column 1"]),
        ("model:\n  cell: gru\n   bad: 1\n", ["line 3", "column"]),
        ("model: !!python/object/apply:os.system ['true']\n", ["YAML error"]),
        ("model: 3\n", ["section 'model' must be a mapping"]),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CharlmError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(CharlmError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    """Each file in configs/ is a valid config (experiment files are checked by their loader)."""
    if "experiments" in path.parts:
        pytest.skip("experiment files are validated by the sweep tests")
    config = load_config(path)
    assert config.train.max_steps or config.train.max_time


def test_fixed_key_names_exist() -> None:
    """The key names scripts rely on, word for word."""
    keys = set(all_keys())
    for key in [
        "data.corpus", "data.val_fraction", "data.test_fraction", "model.cell",
        "model.embedding_dim", "model.hidden_size", "model.num_layers", "model.dropout",
        "train.batch_size", "train.seq_len", "train.lr", "train.max_steps", "train.max_time",
        "train.eval_interval", "train.checkpoint_interval", "train.grad_clip", "train.seed",
        "train.device",
    ]:  # fmt: skip
        assert key in keys


def test_readme_documents_every_key() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [key for key in all_keys() if f"`{key}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"
