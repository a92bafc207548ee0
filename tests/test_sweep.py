"""Experiments: expanding an experiment file into runs, names, validation, skip and restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import make_text, tiny_overrides
from typer.testing import CliRunner

from charlm import events as ev
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.experiment import load_experiment
from charlm.runs import find_runs, is_running, read_summary
from charlm.sweep import run_sweep
from charlm.training import TrainingInterrupted

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_set(corpus: Path, **extra: object) -> dict[str, Any]:
    """The conftest's tiny settings as an experiment's `set:` mapping, cut to 10 steps."""
    pairs = (item.split("=", 1) for item in tiny_overrides(corpus, **extra))
    base = {key: value for key, value in pairs}
    base.update({"train.max_steps": "10", "train.eval_interval": "5"})
    base.update({k: str(v) for k, v in extra.items()})
    return base


def write_experiment(folder: Path, body: dict[str, Any], name: str = "exp.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(8000), encoding="utf-8")
    return path


# -- expansion and names -------------------------------------------------------------------------
def test_grid_expands_to_every_combination_with_shared_and_cli_overrides(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(
        "model: {num_layers: 3, embedding_dim: 8}\ntrain: {batch_size: 4}\n", encoding="utf-8"
    )
    path = write_experiment(
        tmp_path / "configs" / "experiments",
        {
            "base": "../base.yaml",  # relative to the experiment file, not to the cwd
            "set": {"train.max_time": 30, "train.max_steps": None},
            "grid": {"model.cell": ["lstm", "gru"], "model.hidden_size": [16, 32]},
        },
    )
    experiment = load_experiment(path, ["train.lr=0.02"])
    assert [run.name for run in experiment.runs] == [
        "cell=lstm,hidden_size=16",
        "cell=lstm,hidden_size=32",
        "cell=gru,hidden_size=16",
        "cell=gru,hidden_size=32",
    ]
    resolved = {(r.config.model.cell, r.config.model.hidden_size) for r in experiment.runs}
    assert resolved == {("lstm", 16), ("lstm", 32), ("gru", 16), ("gru", 32)}
    for run in experiment.runs:
        assert run.config.model.num_layers == 3  # from the base
        assert run.config.train.batch_size == 4
        assert run.config.train.max_time == 30.0  # from set:
        assert run.config.train.max_steps is None
        assert run.config.train.lr == 0.02  # from the command line, on every run


def test_runs_list_multiplies_with_the_grid(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        {
            "runs": [{"model.num_layers": 1}, {"model.num_layers": 2, "model.dropout": 0.1}],
            "grid": {"model.cell": ["lstm", "gru"]},
        },
    )
    experiment = load_experiment(path)
    assert experiment.swept == ["model.num_layers", "model.dropout", "model.cell"]
    assert [run.name for run in experiment.runs] == [
        "num_layers=1,dropout=0.0,cell=lstm",
        "num_layers=1,dropout=0.0,cell=gru",
        "num_layers=2,dropout=0.1,cell=lstm",
        "num_layers=2,dropout=0.1,cell=gru",
    ]


def test_names_are_stable_readable_and_filesystem_safe(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        {
            "grid": {
                "data.corpus": ["texts/a b.txt", "other/a b.txt"],
                "train.lr": ["3e-4", 0.003],
            }
        },
    )
    names = [run.name for run in load_experiment(path).runs]
    assert names == [
        "corpus=texts-a-b.txt,lr=0.0003",
        "corpus=texts-a-b.txt,lr=0.003",
        "corpus=other-a-b.txt,lr=0.0003",
        "corpus=other-a-b.txt,lr=0.003",
    ]
    assert [run.name for run in load_experiment(path).runs] == names
    for name in names:
        assert "/" not in name and " " not in name
        (tmp_path / "made" / name).mkdir(parents=True)  # a real folder can carry the name


def test_the_shipped_experiment_compares_the_two_cells_under_one_budget() -> None:
    experiment = load_experiment(REPO_ROOT / "configs" / "experiments" / "lstm-vs-gru.yaml")
    assert [run.name for run in experiment.runs] == ["cell=lstm", "cell=gru"]
    lstm, gru = (run.config for run in experiment.runs)
    assert (lstm.model.cell, gru.model.cell) == ("lstm", "gru")
    assert lstm.train == gru.train and lstm.data == gru.data
    assert lstm.model.hidden_size == gru.model.hidden_size
    assert lstm.train.max_time is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"grd": {"model.cell": ["gru"]}}, "unknown key 'grd' (did you mean grid?)"),
        (
            {"grid": {"model.cel": ["gru"]}},
            "unknown config key model.cel (did you mean model.cell?)",
        ),
        ({"grid": {"cell": ["gru"]}}, "did you mean model.cell?"),
        ({"grid": {"model.cell": ["lstm", "rnn"]}}, "'rnn' is not accepted; expected one of"),
        ({"grid": {"model.hidden_size": [16, "big"]}}, "model.hidden_size: 'big' is not a valid"),
        ({"grid": {}}, "grid: expected a non-empty mapping"),
        ({"grid": {"model.cell": []}}, "grid model.cell: the list is empty"),
        ({"grid": {"model.cell": "gru"}}, "expected a list of values"),
        ({"set": {"train.max_time": 60}}, "nothing to sweep"),
        ({"runs": []}, "runs: expected a non-empty list"),
        ({"runs": [{"model.cell": "gru"}, "lstm"]}, "runs[1]: expected a mapping"),
        ({"grid": {"train.max_steps": [10, 20]}}, "train.max_steps is the budget every run shares"),
        ({"grid": {"model.cell": ["gru", "gru"]}}, "have the same config"),
        (
            {"set": {"model.cell": "gru"}, "grid": {"model.cell": ["lstm"]}},
            "model.cell is both under set: and swept",
        ),
        ({"base": "nowhere.yaml", "grid": {"model.cell": ["gru"]}}, "relative to the experiment"),
        ({"set": {"train.lr": -1}, "grid": {"model.cell": ["gru"]}}, "train.lr: -1.0 is out of"),
    ],
)
def test_bad_experiment_files_are_rejected_with_a_clear_message(
    tmp_path: Path, body: dict[str, Any], message: str
) -> None:
    path = write_experiment(tmp_path, body)
    with pytest.raises(CharlmError) as info:
        load_experiment(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_a_command_line_override_of_a_swept_key_is_refused(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, {"grid": {"model.cell": ["lstm", "gru"]}})
    with pytest.raises(CharlmError, match=r"model\.cell is what .* sweeps"):
        load_experiment(path, ["model.cell=gru"])
    with pytest.raises(CharlmError, match=r"unknown config key train\.lrr"):
        load_experiment(path, ["train.lrr=0.1"])


# -- running, skipping, restarting ---------------------------------------------------------------
def status(run: Path) -> str | None:
    summary = read_summary(run)
    return summary.status if summary is not None else None


class Interrupt:
    """An on_event callback that presses Ctrl-C at the first log line of one run."""

    def __init__(self, at_run: str) -> None:
        self.at_run = at_run
        self.current = ""
        self.run_dir = Path()
        self.was_running = False

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.SweepRun):
            self.current = event.name
        if isinstance(event, ev.Started):
            self.run_dir = Path(event.run_dir)
        if isinstance(event, ev.Logged) and self.current == self.at_run:
            self.was_running = is_running(self.run_dir)
            raise KeyboardInterrupt


def test_a_sweep_cut_before_a_checkpoint_skips_finished_runs_and_restarts_the_cut_one(
    tmp_path: Path, small_corpus: Path
) -> None:
    path = write_experiment(
        tmp_path, {"set": tiny_set(small_corpus), "grid": {"model.cell": ["lstm", "gru"]}}
    )
    out = tmp_path / "out"
    experiment = load_experiment(path)
    stop = Interrupt(at_run="cell=gru")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(experiment, out, on_event=stop)
    assert stop.was_running  # the lock said "running" while it trained
    first_summary = (out / "cell=lstm" / "summary.json").read_bytes()
    assert status(out / "cell=lstm") == "finished"
    assert read_summary(out / "cell=gru") is None
    statuses = {run.name: run.status for run in find_runs(out)}
    assert statuses == {"cell=lstm": "finished", "cell=gru": "interrupted"}

    events: list[ev.Event] = []
    result = run_sweep(load_experiment(path), out, on_event=events.append)
    actions = [e.action for e in events if isinstance(e, ev.SweepRun)]
    assert actions == ["skip", "continue"]
    assert sum(isinstance(e, ev.Started) for e in events) == 1  # only the cut run trained again
    assert (out / "cell=lstm" / "summary.json").read_bytes() == first_summary
    moved = out / "cell=gru.interrupted-1"
    assert (moved / "config.yaml").is_file() and (moved / "metrics.jsonl").is_file()
    assert [run.status for run in result.runs] == ["finished", "finished"]
    assert result.plot == out / "compare.png" and result.plot.is_file()


def test_a_sweep_stopped_by_ctrl_c_resumes_the_cut_run_from_its_checkpoint(
    tmp_path: Path, small_corpus: Path
) -> None:
    settings = tiny_set(small_corpus, **{"train.checkpoint_interval": 5})
    path = write_experiment(tmp_path, {"set": settings, "grid": {"model.cell": ["lstm", "gru"]}})
    out = tmp_path / "out"
    current = ""

    def press_ctrl_c(event: ev.Event) -> None:
        nonlocal current
        current = event.name if isinstance(event, ev.SweepRun) else current
        if isinstance(event, ev.Logged) and current == "cell=gru" and event.step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer saves a checkpoint and stops

    with pytest.raises(TrainingInterrupted):
        run_sweep(load_experiment(path), out, on_event=press_ctrl_c)
    assert status(out / "cell=gru") == "interrupted"

    events: list[ev.Event] = []
    result = run_sweep(load_experiment(path), out, on_event=events.append)
    assert [e.action for e in events if isinstance(e, ev.SweepRun)] == ["skip", "continue"]
    assert [e.step for e in events if isinstance(e, ev.Resumed)] == [5]
    assert not any(isinstance(e, ev.SweepMoved) for e in events)
    assert not list(out.glob("cell=gru.*"))  # resumed in place, nothing moved aside
    assert [run.status for run in result.runs] == ["finished", "finished"]
    summary = read_summary(out / "cell=gru")
    assert summary is not None and summary.steps == 10
    steps = [row["step"] for row in result.runs[1].metrics]
    assert steps == sorted(set(steps)) and steps[-1] == 10  # one clean log, no repeats


def test_a_finished_run_trained_with_another_config_is_not_taken_as_done(
    tmp_path: Path, small_corpus: Path
) -> None:
    path = write_experiment(tmp_path, {"set": tiny_set(small_corpus), "runs": [{}]})
    out = tmp_path / "out"
    run_sweep(load_experiment(path), out)
    assert status(out / "base") == "finished"
    with pytest.raises(CharlmError, match=r"different config \(train.lr\)"):
        run_sweep(load_experiment(path, ["train.lr=0.5"]), out)

    cells = {"set": tiny_set(small_corpus), "grid": {"model.cell": ["lstm"]}}
    run_sweep(load_experiment(write_experiment(tmp_path, cells), ["train.lr=0.02"]), out)
    cells["grid"] = {"model.cell": ["gru", "lstm"]}  # gru would train first, lstm clashes
    grown = write_experiment(tmp_path, cells)
    with pytest.raises(CharlmError, match=r"cell=lstm: holds a finished run"):
        run_sweep(load_experiment(grown, ["train.lr=0.03"]), out)
    assert not (out / "cell=gru").exists()  # refused before training anything


# -- the command line ----------------------------------------------------------------------------
def test_cli_sweep_runs_then_skips_and_reports_bad_files_in_one_line(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_experiment(
        tmp_path / "experiments",
        {"set": tiny_set(small_corpus), "grid": {"model.cell": ["lstm", "gru"]}},
        name="cells.yaml",
    )
    runner = CliRunner()
    first = runner.invoke(app, ["sweep", str(path), "train.lr=0.02", "-q"])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "runs" / "cells" / "cell=gru" / "curves.png").is_file()
    assert "cell=lstm" in first.stdout and "cell=gru" in first.stdout  # the comparison table
    again = runner.invoke(app, ["sweep", str(path), "train.lr=0.02", "-q"])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished already, skipped") == 2

    bad = write_experiment(tmp_path, {"grid": {"model.cel": ["gru"]}}, name="bad.yaml")
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 1
    assert "error:" in result.output and "did you mean model.cell?" in result.output
    assert "Traceback" not in result.output


def test_every_run_of_a_sweep_trains_in_the_precision_auto_resolved_once(
    tmp_path: Path, small_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A timing per run could pick bf16 for one and fp32 for the next (the probe here alternates);
    the sweep times once and every run uses that pick."""
    import charlm.precision as precision_module

    answers = [{"fp32": 2.0, "bf16": 1.0}, {"fp32": 1.0, "bf16": 2.0}]
    calls: list[int] = []

    def timed(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(1)
        return answers[(len(calls) - 1) % 2]

    monkeypatch.setattr(precision_module, "native_bf16", lambda device, model: True)
    monkeypatch.setattr(precision_module, "time_train_step", timed)
    settings = tiny_set(small_corpus, **{"train.precision": "auto", "model.impl": "reference"})
    path = write_experiment(tmp_path, {"set": settings, "grid": {"model.cell": ["lstm", "gru"]}})
    events: list[ev.Event] = []
    result = run_sweep(load_experiment(path), tmp_path / "out", on_event=events.append)
    assert len(calls) == 1
    assert [e.precision for e in events if isinstance(e, ev.SweepPrecision)] == ["bf16"]
    assert [e.precision for e in events if isinstance(e, ev.Started)] == ["bf16", "bf16"]
    assert [run.summary.precision for run in result.runs if run.summary] == ["bf16", "bf16"]
