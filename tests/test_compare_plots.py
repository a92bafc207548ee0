"""Reading runs back: `charlm runs`, `compare`, the PNGs and failed runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_text, tiny_config
from matplotlib import image
from typer.testing import CliRunner

from charlm import events as ev
from charlm.cli import app
from charlm.plots import comparison_figure, curves_figure, scores_line
from charlm.runs import collect_runs, compare_runs, find_runs, read_run, read_summary
from charlm.training import train

REPO_ROOT = Path(__file__).resolve().parents[1]
TEN_STEPS = {"train.max_steps": 10, "train.eval_interval": 5}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two finished tiny runs that differ in model.cell and train.lr only."""
    root = tmp_path_factory.mktemp("compare")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(8000), encoding="utf-8")
    runs = root / "runs"
    train(tiny_config(corpus, **TEN_STEPS), runs / "small-lstm")
    train(tiny_config(corpus, **TEN_STEPS, **{"model.cell": "gru", "train.lr": 0.02}), runs / "gru")
    return runs


@pytest.fixture(scope="module")
def subset_run(two_runs: Path) -> Path:
    """A run whose interval evals score the first 500 of 800 val chars; its final eval, all."""
    run = two_runs.parent / "subset"
    train(
        tiny_config(two_runs.parent / "corpus.txt", **TEN_STEPS, **{"train.eval_chars": 500}), run
    )
    return run


def color_pixels(png: Path, rgb: tuple[float, float, float]) -> int:
    pixels = image.imread(png)[..., :3]
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) < 0.08).sum())


TAB_BLUE, TAB_ORANGE = (0.122, 0.467, 0.706), (1.0, 0.498, 0.055)


def test_compare_lists_exactly_the_keys_that_differ(two_runs: Path) -> None:
    comparison = compare_runs(collect_runs([two_runs / "small-lstm", two_runs / "gru"]))
    assert comparison.differing == ["model.cell", "train.lr"]
    lstm, gru = comparison.runs
    assert (lstm.name, gru.name) == ("small-lstm", "gru")
    assert lstm.parameters and gru.parameters and lstm.parameters > gru.parameters
    assert lstm.best_val_bpc is not None and lstm.best_val_bpc <= lstm.val_points[0]["val_bpc"]


def test_cli_compare_json_table_and_plot(two_runs: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["compare", str(two_runs / "small-lstm"), str(two_runs / "gru")]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    assert data["differing_keys"] == ["model.cell", "train.lr"]
    assert [run["config"] for run in data["runs"]] == [
        {"model.cell": "lstm", "train.lr": 0.01},
        {"model.cell": "gru", "train.lr": 0.02},
    ]
    assert all(run["status"] == "finished" and run["final_val_bpc"] for run in data["runs"])

    plot = tmp_path / "both.png"
    table = runner.invoke(app, [*args, "--plot", str(plot)])
    assert table.exit_code == 0, table.output
    assert "model.cell" in table.stdout and "train.lr" in table.stdout
    assert "model.hidden_size" not in table.stdout
    assert image.imread(plot).shape == (500, 1300, 4)
    assert color_pixels(plot, TAB_BLUE) > 100 and color_pixels(plot, TAB_ORANGE) > 100

    bad = runner.invoke(app, [*args, "--plot", str(tmp_path / "both.jpg")])
    assert bad.exit_code == 1 and "expected a file name ending in .png" in bad.output


def test_every_run_has_a_curves_png_that_is_not_blank(two_runs: Path) -> None:
    for run in ("small-lstm", "gru"):
        png = two_runs / run / "curves.png"
        pixels = image.imread(png)
        assert pixels.shape == (450, 800, 4)
        assert (pixels[..., :3] < 0.9).any(axis=-1).mean() > 0.01  # not an empty white canvas
        assert color_pixels(png, TAB_BLUE) > 100  # the train curve
        assert color_pixels(png, TAB_ORANGE) > 100  # the val curve


def test_curves_quote_the_final_whole_split_score_and_say_which_is_which(
    subset_run: Path, two_runs: Path
) -> None:
    run = read_run(subset_run)
    final, best = run.final_whole_bpc, run.best_val_bpc
    assert final is not None and best is not None
    assert final != run.val_points[-1]["val_bpc"]  # the last interval eval scored a subset
    (ax,) = curves_figure(run).axes
    title = ax.get_title()
    assert f"final val {final:.3f} bpc (whole split)" in title
    assert f"best eval {best:.3f} (first 500 val chars)" in title
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["train", "val evals (first 500 val chars)",
                      f"final val {final:.3f} (whole split)"]  # fmt: skip
    whole = read_run(two_runs / "gru")  # no train.eval_chars: every eval scored the whole split
    assert scores_line(whole).endswith(f"best eval {whole.best_val_bpc:.3f} (whole split)")


def test_comparison_plot_draws_train_beside_val_and_quotes_final_scores(
    two_runs: Path, subset_run: Path
) -> None:
    runs = collect_runs([two_runs / "small-lstm", two_runs / "gru", subset_run])
    by_step, by_time = comparison_figure(runs).axes
    for ax in (by_step, by_time):
        assert ax.get_xscale() == "linear"
        assert len(ax.lines) == 3 * len(runs)  # per run: train, val, final star
        for i in range(len(runs)):
            train_line, val_line, star = ax.lines[3 * i : 3 * i + 3]
            assert train_line.get_color() == val_line.get_color() == star.get_color()
            assert (train_line.get_alpha() or 1.0) < 0.5 and val_line.get_alpha() is None
            assert star.get_marker() == "*"
    legend = [t.get_text() for t in by_time.get_legend().get_texts()]
    for run, label in zip(runs, legend, strict=True):
        assert label.startswith(f"{run.name}: final {run.final_whole_bpc:.3f}, best")
    assert "(first 500 val chars)" in legend[2] and "(whole split)" in legend[0]
    log = comparison_figure(runs, log_x=True).axes
    assert [ax.get_xscale() for ax in log] == ["log", "log"]


def test_cli_compare_log_x(two_runs: Path, tmp_path: Path) -> None:
    args = ["compare", str(two_runs / "small-lstm"), str(two_runs / "gru"), "--log-x"]
    plot = tmp_path / "log.png"
    result = CliRunner().invoke(app, [*args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert image.imread(plot).shape == (500, 1300, 4)
    alone = CliRunner().invoke(app, args)
    assert alone.exit_code == 1 and "--log-x: only changes the plot" in alone.output


def test_runs_lists_finished_failed_and_interrupted_runs(
    two_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = two_runs.parent / "corpus.txt"
    folder = tmp_path / "runs"
    (folder / "sweep").mkdir(parents=True)
    for name in ("small-lstm", "gru"):
        shutil.copytree(two_runs / name, folder / "sweep" / name)

    def boom(self: Any, full: bool) -> Any:
        raise RuntimeError("boom at the first eval")

    monkeypatch.setattr("charlm.training.loop.Trainer.evaluate", boom)
    with pytest.raises(RuntimeError):
        train(tiny_config(corpus, **TEN_STEPS), folder / "broken")
    summary = read_summary(folder / "broken")
    assert summary is not None and summary.status == "failed"
    assert summary.error is not None and "boom at the first eval" in summary.error
    assert summary.steps == 5
    (folder / "cut").mkdir()
    (folder / "cut" / "config.yaml").write_text("model: {cell: gru}\n", encoding="utf-8")

    found = {run.name: run for run in find_runs(folder)}
    assert {name: run.status for name, run in found.items()} == {
        "broken": "failed",
        "cut": "interrupted",
        "sweep/gru": "finished",
        "sweep/small-lstm": "finished",
    }
    result = CliRunner().invoke(app, ["runs", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["sweep/gru"]["cell"] == "gru" and rows["sweep/gru"]["steps"] == 10
    assert rows["broken"]["error"].startswith("RuntimeError: boom")
    table = CliRunner().invoke(app, ["runs", str(folder)])
    assert table.exit_code == 0
    for word in ("sweep/small-lstm", "failed", "interrupted", "finished", "lstm"):
        assert word in table.stdout
    missing = CliRunner().invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such folder" in missing.output


def test_a_plotting_failure_is_a_warning_not_a_lost_run(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_plot(run_dir: Path) -> Path:
        raise RuntimeError("no fonts today")

    monkeypatch.setattr("charlm.plots.plot_curves", broken_plot)
    events: list[ev.Event] = []
    result = train(tiny_config(corpus_file, **TEN_STEPS), tmp_path / "run", events.append)
    assert result.steps == 10
    summary = read_summary(tmp_path / "run")
    assert summary is not None and summary.status == "finished"
    warnings = [e.message for e in events if isinstance(e, ev.Warned)]
    assert warnings == ["could not draw curves.png: no fonts today"]


def test_help_loads_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from charlm.cli import app\n"
        "for cmd in (['--help'], ['sweep', '--help'], ['runs', '--help'], ['compare', '--help']):\n"
        "    assert CliRunner().invoke(app, cmd).exit_code == 0\n"
        "print('torch' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["False", "False"]
