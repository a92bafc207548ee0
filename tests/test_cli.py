"""The command-line contract, end to end, through Typer's runner and a real process."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHAKESPEARE, tiny_overrides
from typer.testing import CliRunner

from charlm.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_train_sample_eval_end_to_end(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *tiny_overrides(corpus_file), "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert "Traceback" not in result.output

    sample = runner.invoke(
        app, ["sample", str(run), "--prime", "The ", "--length", "120", "--seed", "3"]
    )
    assert sample.exit_code == 0, sample.output
    assert sample.stdout.startswith("The ") and len(sample.stdout) == 4 + 120
    again = runner.invoke(
        app, ["sample", str(run), "--prime", "The ", "--length", "120", "--seed", "3"]
    )
    assert again.stdout == sample.stdout
    greedy = runner.invoke(app, ["sample", str(run), "--length", "50", "--temperature", "0"])
    assert len(greedy.stdout) == 50

    evaluated = runner.invoke(app, ["eval", str(run), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    record = json.loads(evaluated.stdout)
    assert {"loss", "bpc", "perplexity", "chars"} <= record.keys()
    assert record["bpc"] == pytest.approx(record["loss"] / math.log(2))
    assert record["perplexity"] == pytest.approx(math.exp(record["loss"]))
    table = runner.invoke(app, ["eval", str(run)])
    assert table.exit_code == 0 and "bpc" in table.stdout

    other = tmp_path / "other.txt"
    other.write_text("The cat sees the ball.\n" * 20)
    scored = json.loads(
        runner.invoke(app, ["eval", str(run), "--corpus", str(other), "--json"]).stdout
    )
    assert scored["chars"] == len(other.read_text()) - 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["train", "data.corpus=/nonexistent/corpus.txt", "--out", "{tmp}/r"], "corpus not found"),
        (["train", "data.corpus={empty}", "--out", "{tmp}/r"], "empty"),
        (["train", "data.corpus={latin1}", "--out", "{tmp}/r"], "byte offset"),
        (["train", "model.celll=gru", "--out", "{tmp}/r"], "did you mean model.cell"),
        (["train", "train.lr=0", "--out", "{tmp}/r"], "train.lr"),
        (["sample", "{tmp}/no-run"], "no such run"),
        (["eval", "{tmp}"], "holds no checkpoint"),
    ],
)
def test_user_errors_are_one_line_exit_1(tmp_path: Path, args: list[str], words: str) -> None:
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    subs = {"tmp": tmp_path, "empty": tmp_path / "empty.txt", "latin1": tmp_path / "latin1.txt"}
    result = runner.invoke(app, [a.format(**subs) for a in args])
    assert result.exit_code == 1
    assert words in result.stderr
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_bad_sample_options(trained_run: Path) -> None:
    for args, words in [
        (["--length", "0"], "--length"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-p", "1.5"], "--top-p"),
        (["--top-k", "0"], "--top-k"),
        (["--prime", "€"], "not in the model's vocabulary"),
    ]:
        result = runner.invoke(app, ["sample", str(trained_run), *args])
        assert result.exit_code == 1, args
        assert words in result.stderr and result.stdout == ""


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from charlm.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_the_issue_commands_on_tiny_shakespeare(tmp_path: Path) -> None:
    """The acceptance commands, run as a user would (a real process per command)."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent (the shared Tiny Shakespeare copy)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "charlm"]
    run = tmp_path / "r"
    trained = subprocess.run(
        [*cmd, "train", str(REPO / "configs/tiny.yaml"), f"data.corpus={SHAKESPEARE}",
         "train.max_steps=150", "--out", str(run)],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    sampled = subprocess.run(
        [*cmd, "sample", str(run), "--prime", "ROMEO:", "--length", "300", "--seed", "3"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert sampled.returncode == 0 and sampled.stdout.startswith("ROMEO:")
    assert len(sampled.stdout) == len("ROMEO:") + 300
    evaluated = subprocess.run(
        [*cmd, "eval", str(run), "--json"], capture_output=True, text=True, env=env
    )
    record = json.loads(evaluated.stdout)
    assert record["bpc"] < 4.0  # uniform over 65 symbols is 6.02 bits


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["sample", "x", "--length", "abc"], "--length"),
        (["sample"], "Missing argument"),
        (["frobnicate"], "No such command"),
        (["train", "--no-such-option"], "--no-such-option"),
    ],
)
def test_usage_mistakes_are_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], words: str
) -> None:
    from charlm.cli import main

    monkeypatch.setattr(sys, "argv", ["charlm", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bare_charlm_shows_help_and_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from charlm.cli import main

    monkeypatch.setattr(sys, "argv", ["charlm"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert capsys.readouterr().out.count("Usage") == 1  # shown once, not twice


@pytest.mark.parametrize(("eval_interval", "shown"), [(5, True), (20, False)])
def test_the_end_table_names_a_best_interval_eval_only_when_one_ran(
    tmp_path: Path, corpus_file: Path, eval_interval: int, shown: bool
) -> None:
    run = tmp_path / "run"
    overrides = tiny_overrides(
        corpus_file, **{"train.max_steps": 10, "train.eval_interval": eval_interval}
    )
    result = runner.invoke(app, ["train", *overrides, "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    assert ("(interval evals)" in result.stderr) is shown
    assert "final val bpc" in result.stderr
    assert "final eval on all" in result.stderr  # the plain log says the run is finishing
