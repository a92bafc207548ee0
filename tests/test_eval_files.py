"""`charlm eval --corpus FOLDER`: per-file scores that match scoring each file alone, a total
weighted by characters, and JSON that keeps the single-object contract's top-level keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_text
from typer.testing import CliRunner

from charlm.cli import app
from charlm.errors import CharlmError
from charlm.evaluate import EvalResult, combine, evaluate_files, evaluate_run

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(make_text(1500, seed=1), encoding="utf-8")
    (root / "sub" / "b.txt").write_text(make_text(4000, seed=2), encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    return root


def test_each_file_scores_as_it_would_alone(trained_run: Path, folder: Path) -> None:
    found = evaluate_files(trained_run, folder, device="cpu")
    names = [Path(name).relative_to(folder).as_posix() for name, _ in found.files]
    assert names == ["a.txt", "sub/b.txt"]
    assert found.skipped == (str(folder / "empty.txt"),)
    for name, result in found.files:
        alone = evaluate_run(trained_run, corpus=name, device="cpu")
        assert result.loss == pytest.approx(alone.loss, rel=1e-9)
        assert result.chars == alone.chars == len(Path(name).read_text()) - 1
    total = found.total
    assert total.chars == sum(r.chars for _, r in found.files)
    weighted = sum(r.loss * r.chars for _, r in found.files) / total.chars
    assert total.loss == pytest.approx(weighted)


def test_combine_weights_by_characters() -> None:
    a = EvalResult(loss=1.0, bpc=0, perplexity=0, chars=100, streams=1, seconds=1.0)
    b = EvalResult(loss=2.0, bpc=0, perplexity=0, chars=300, streams=4, seconds=3.0)
    total = combine([a, b])
    assert total.loss == pytest.approx(1.75) and total.chars == 400
    assert total.bpc == pytest.approx(1.75 / math.log(2))
    assert total.perplexity == pytest.approx(math.exp(1.75))
    assert total.chars_per_s == pytest.approx(100.0)


def test_cli_folder_json_keeps_top_level_numbers(trained_run: Path, folder: Path) -> None:
    result = runner.invoke(app, ["eval", str(trained_run), "--corpus", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in ("loss", "bpc", "perplexity", "chars", "chars_per_s"):
        assert key in data and all(key in f for f in data["files"])
    assert [Path(f["file"]).name for f in data["files"]] == ["a.txt", "b.txt"]
    assert data["chars"] == sum(f["chars"] for f in data["files"])
    assert "skipped" in result.stderr and "empty.txt" in result.stderr
    one = runner.invoke(
        app, ["eval", str(trained_run), "--corpus", str(folder / "a.txt"), "--json"]
    )
    single = json.loads(one.stdout)
    assert "files" not in single  # a single file keeps the one-object contract
    assert single["loss"] == pytest.approx(data["files"][0]["loss"])


def test_cli_folder_table_has_a_row_per_file_and_a_total(trained_run: Path, folder: Path) -> None:
    result = runner.invoke(app, ["eval", str(trained_run), "--corpus", str(folder)])
    assert result.exit_code == 0, result.output
    for word in ("a.txt", "b.txt", "total", "chars/s"):
        assert word in result.stdout


def test_a_file_with_unknown_characters_is_named(trained_run: Path, folder: Path) -> None:
    (folder / "z.txt").write_text("snow \u2603 man", encoding="utf-8")
    with pytest.raises(CharlmError, match=r"z\.txt"):
        evaluate_files(trained_run, folder, device="cpu")
    result = runner.invoke(app, ["eval", str(trained_run), "--corpus", str(folder)])
    assert result.exit_code == 1 and "z.txt" in result.stderr
