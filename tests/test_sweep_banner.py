"""The line `charlm sweep` starts with: the runs and the budget each one actually gets."""

from __future__ import annotations

from pathlib import Path

from conftest import make_text
from typer.testing import CliRunner

from charlm.cli import app
from charlm.cli.train import sweep_banner
from charlm.experiment import load_experiment

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_sweep_banner_gives_the_budget_each_run_gets() -> None:
    experiment = REPO_ROOT / "configs" / "experiments" / "lstm-vs-gru.yaml"
    as_written = sweep_banner(load_experiment(experiment), Path("runs/x"), [])
    first, description = as_written.splitlines()
    assert first == f"sweep {experiment}: 2 runs into runs/x, 5 min each: cell=lstm, cell=gru"
    assert "five minutes" in description
    short = ["train.max_time=20"]
    banner = sweep_banner(load_experiment(experiment, short), Path("runs/x"), short)
    assert banner == f"sweep {experiment}: 2 runs into runs/x, 20 s each: cell=lstm, cell=gru"
    both = ["train.max_steps=1500", "train.max_time=90.5"]
    banner = sweep_banner(load_experiment(experiment, both), Path("runs/x"), both)
    assert "1,500 steps or 90.5 s each, whichever comes first:" in banner
    by_name = sweep_banner(load_experiment(experiment, short), Path("runs/x"), short, "lstm-vs-gru")
    assert by_name.startswith("sweep lstm-vs-gru: 2 runs into runs/x, 20 s each")


def test_cli_sweep_starts_with_the_budget(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(8000), encoding="utf-8")
    path = tmp_path / "exp.yaml"
    path.write_text(
        "description: two cells, an hour each\n"
        f"set: {{data.corpus: {corpus}, model.hidden_size: 16, model.embedding_dim: 8,"
        " train.batch_size: 4, train.seq_len: 16, train.max_time: 3600, train.max_steps: null,"
        " train.eval_interval: 4, train.device: cpu}\n"
        "grid: {model.cell: [lstm, gru]}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["sweep", str(path), "train.max_steps=4", "-q",
                                      "--out", str(tmp_path / "runs")])  # fmt: skip
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.endswith("4 steps or 60 min each, whichever comes first: cell=lstm, cell=gru")
    assert "an hour each" not in result.stderr
