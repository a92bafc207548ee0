"""The end of a run and the disk under it: finishing a run cut after its last checkpoint, stop
signals after the last step, repeated Ctrl-C, and writes that fail on a full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config, tiny_overrides
from typer.testing import CliRunner

from charlm import events as ev
from charlm import files
from charlm.checkpoint import latest_intact, load_checkpoint, step_name
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.experiment import load_experiment
from charlm.info import describe
from charlm.rundir import rollback_metrics
from charlm.runs import read_metrics, read_summary
from charlm.sweep import run_sweep
from charlm.training import TrainingInterrupted, resume, train

REPO_ROOT = Path(__file__).resolve().parents[1]
# 20 steps, an eval and a checkpoint at 10 and 20; the final eval scores the whole split.
SHORT = {"train.max_steps": 20, "train.eval_interval": 10, "train.checkpoint_interval": 10}
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def leftovers(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp" in p.name]


def val_rows(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["val_loss"]) for r in read_metrics(run) if "val_loss" in r]


@pytest.fixture(scope="module")
def finished(corpus: Path) -> Path:
    """A run that ended normally: what every finished-later run must equal."""
    run = corpus.parent / "finished"
    train(tiny_config(corpus, **SHORT), run)
    return run


def signal_at(kind: type[ev.Event], sig: int = signal.SIGINT) -> Callable[[ev.Event], None]:
    def on_event(event: ev.Event) -> None:
        if isinstance(event, kind):
            os.kill(os.getpid(), sig)

    return on_event


# -- item 2: a run cut after its last checkpoint is finished by a resume ------------------------
def test_resume_finishes_a_run_killed_before_its_summary(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()  # killed after the last checkpoint, before the summary
    (run / "curves.png").unlink()
    (run / ".summary.json.tmp-4242").write_text("{")  # and mid-write of summary.json
    assert describe(run)["resume"] == f"charlm train --resume {run}"
    events: list[ev.Event] = []
    result = resume(run, on_event=events.append)
    assert not any(isinstance(e, ev.FinalEvalStarted | ev.Logged) for e in events)  # nothing redone
    summary = read_summary(run)
    assert summary is not None and summary.status == "finished" and summary.steps == 20
    before = read_summary(finished)
    assert before is not None and summary.final_val == before.final_val
    assert result.final_val.loss == before.final_val["loss"]  # type: ignore[index]
    assert read_metrics(run) == read_metrics(finished)
    assert (run / "curves.png").is_file() and leftovers(run) == []


def test_resume_of_a_finished_run_is_still_refused(finished: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    with pytest.raises(CharlmError, match="already finished at step 20; pass a larger"):
        resume(run)
    with pytest.raises(CharlmError, match=r"beyond train\.max_steps=15"):
        resume(run, ["train.max_steps=15"])


def test_a_sweep_moves_on_past_a_run_killed_before_its_summary(
    corpus: Path, tmp_path: Path
) -> None:
    pairs = (item.split("=", 1) for item in tiny_overrides(corpus, **SHORT))
    path = tmp_path / "exp.yaml"
    body = {"set": dict(pairs), "grid": {"model.cell": ["lstm", "gru"]}}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    out = tmp_path / "out"
    run_sweep(load_experiment(path), out)
    (out / "cell=gru" / "summary.json").unlink()
    events: list[ev.Event] = []
    result = run_sweep(load_experiment(path), out, on_event=events.append)
    actions = [e.action for e in events if isinstance(e, ev.SweepRun)]
    assert actions == ["skip", "continue"]
    assert not any(isinstance(e, ev.Logged) for e in events)  # finished, not trained again
    assert [run.status for run in result.runs] == ["finished", "finished"]
    assert not list(out.glob("*.interrupted-*"))  # finished in place, not moved aside


# -- item 3: a stop signal after the last step --------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_final_eval_stops_and_a_resume_finishes(
    corpus: Path, finished: Path, tmp_path: Path, sig: int, code: int
) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(corpus, **SHORT), run, signal_at(ev.FinalEvalStarted, sig))
    assert (stopped.value.step, stopped.value.exit_code) == (20, code)
    summary = read_summary(run)
    assert summary is not None and summary.status == "interrupted"
    checkpoint, _ = latest_intact(run / "checkpoints")
    assert checkpoint is not None and checkpoint.step == 20
    assert checkpoint.record["final"] is False  # saved without the evals of its step
    assert val_rows(run) == val_rows(finished)[:-1]
    events: list[ev.Event] = []
    result = resume(run, on_event=events.append)
    assert sum(isinstance(e, ev.FinalEvalStarted) for e in events) == 1
    assert val_rows(run) == val_rows(finished)  # the same scores, as if it never stopped
    expected = read_summary(finished)
    assert expected is not None and expected.final_val is not None
    assert result.final_val.loss == expected.final_val["loss"]
    assert load_checkpoint(run / "checkpoints" / step_name(20)).record["final"] is True


@pytest.mark.parametrize("when", ["summary", "curves"])
def test_a_signal_while_the_run_ends_stops_it_and_a_resume_finishes(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    run = tmp_path / "run"

    def after_the_last_save(event: ev.Event) -> None:  # its evals done, then the summary
        if isinstance(event, ev.CheckpointSaved) and event.path.endswith(step_name(20)):
            os.kill(os.getpid(), signal.SIGTERM)

    on_event = after_the_last_save if when == "summary" else None
    if when == "curves":
        monkeypatch.setattr("charlm.plots.plot_curves", lambda *a: os.kill(os.getpid(), 15))
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny_config(corpus, **SHORT), run, on_event)
    assert stopped.value.exit_code == 143
    summary = read_summary(run)
    assert summary is not None and summary.status == "interrupted" and summary.steps == 20
    monkeypatch.undo()
    events: list[ev.Event] = []
    resume(run, on_event=events.append)
    assert not any(isinstance(e, ev.FinalEvalStarted) for e in events)  # its evals were done
    summary = read_summary(run)
    assert summary is not None and summary.status == "finished"
    assert (run / "curves.png").is_file()


def test_a_sweep_stopped_during_a_final_eval_does_not_start_the_next_run(
    corpus: Path, tmp_path: Path
) -> None:
    pairs = (item.split("=", 1) for item in tiny_overrides(corpus, **SHORT))
    path = tmp_path / "exp.yaml"
    body = {"set": dict(pairs), "grid": {"model.cell": ["lstm", "gru"]}}
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(TrainingInterrupted):
        run_sweep(load_experiment(path), out, signal_at(ev.FinalEvalStarted, signal.SIGTERM))
    assert not (out / "cell=gru").exists()
    result = run_sweep(load_experiment(path), out)
    assert [run.status for run in result.runs] == ["finished", "finished"]


# The CLI in a child, with a stop signal sent at a chosen moment (and a Ctrl-C during its exit).
SIGNAL_CLI = """
import atexit, os, signal, sys
from charlm.training import loop
when, signum = sys.argv[1], int(sys.argv[2])
def kill(times=1):
    for _ in range(times):
        os.kill(os.getpid(), signum)
if when == "final-eval":
    real_final = loop.Trainer.final_eval
    def final_eval(self):
        kill()
        return real_final(self)
    loop.Trainer.final_eval = final_eval
elif when == "repeated":  # Ctrl-C three times in a step, then once more during the exit
    real_step = loop.Trainer.train_step
    def train_step(self):
        if self.step == 3:
            kill(3)
        return real_step(self)
    loop.Trainer.train_step = train_step
    atexit.register(kill)
elif when == "before":  # twice while the data is read, before training starts
    real_prepare = loop.prepare_data
    def prepare(config):
        kill(2)
        return real_prepare(config)
    loop.prepare_data = prepare
    atexit.register(kill)
from charlm.cli import main
sys.argv = ["charlm", *sys.argv[3:]]
main()
"""


def run_cli(when: str, sig: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", SIGNAL_CLI, when, str(int(sig)), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env(), timeout=300)


@pytest.mark.slow
def test_cli_sigterm_during_the_final_eval_stops_with_143_then_resume_finishes(
    corpus: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["train", *tiny_overrides(corpus, **SHORT), "--out", str(run), "-q"]
    done = run_cli("final-eval", signal.SIGTERM, *args)
    assert done.returncode == 143, done.stderr
    assert "stopped by SIGTERM after step 20" in done.stderr
    assert f"resume with: charlm train --resume {run}" in done.stderr
    code, out = cli("train", "--resume", str(run), "-q")
    assert code == 0, out
    summary = read_summary(run)
    assert summary is not None and summary.status == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("when", ["repeated", "before"])
def test_repeated_ctrl_c_exits_130_without_a_traceback(
    corpus: Path, tmp_path: Path, when: str
) -> None:
    run = tmp_path / "run"
    extra = {**SHORT, "train.max_steps": 1000}
    done = run_cli(when, signal.SIGINT, "train", *tiny_overrides(corpus, **extra), "-o", str(run))
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    if when == "repeated":
        assert "stopped by SIGINT after step 4" in done.stderr
        assert load_checkpoint(run / "checkpoints" / step_name(4)).step == 4
    else:
        assert "interrupted before training started; nothing was saved" in done.stderr


# -- item 4: a full disk --------------------------------------------------------------------------
def full_disk(monkeypatch: pytest.MonkeyPatch, names: Callable[[str], bool], err: int) -> None:
    """Make every whole-file write whose target name passes `names` fail with `err` after part
    of the data has landed in its temporary file."""
    real_open = open

    class Failing:
        def __init__(self, path: str, mode: str) -> None:
            self.f = real_open(path, mode)

        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(bytes(data)[:10])
            raise OSError(err, os.strerror(err))

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

    def fake_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        target = Path(str(path)).name.removeprefix(".").rsplit(".tmp-", 1)[0]
        if "w" in mode and names(target):
            return Failing(str(path), mode)
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(files, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    ("failing", "code", "named"),
    [
        ("summary.json", errno.ENOSPC, "summary.json: could not write summary.json"),
        ("step-00000020.safetensors", errno.ENOSPC, "step-00000020.safetensors: could not write"),
        ("*", errno.ENOSPC, "best.safetensors: could not write the checkpoint"),
        ("config.yaml", errno.EROFS, "config.yaml: could not write config.yaml"),
        ("best.safetensors", errno.EACCES, "best.safetensors: could not write the checkpoint"),
    ],
)
def test_every_failed_write_is_one_error_line_and_leaves_the_last_checkpoint(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, code: int,
    named: str,
) -> None:  # fmt: skip
    run = tmp_path / "run"
    # "*": the disk fills after the start, so every checkpoint and summary.json write fails.
    everything = (".safetensors", ".json")
    full_disk(
        monkeypatch, lambda n: n == failing or (failing == "*" and n.endswith(everything)), code
    )
    status, out = cli("train", *tiny_overrides(corpus, **SHORT), "--out", str(run), "-q")
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert status == 1 and len(lines) == 1, out
    assert named in lines[0] and os.strerror(code) in lines[0]
    assert leftovers(run) == []
    checkpoint, skipped = latest_intact(run / "checkpoints")
    assert skipped == []
    if failing == "summary.json":  # the run itself is complete: a resume only writes it
        assert checkpoint is not None and checkpoint.step == 20
        monkeypatch.undo()
        assert cli("train", "--resume", str(run), "-q")[0] == 0
        summary = read_summary(run)
        assert summary is not None and summary.status == "finished"
    elif failing == "*":
        assert checkpoint is None and read_summary(run) is None  # and no second error
    elif failing == "step-00000020.safetensors":
        assert checkpoint is not None and checkpoint.step == 10
        summary = read_summary(run)  # the failure is recorded when the disk allows it
        assert summary is not None and summary.status == "failed"
        assert summary.error is not None and "step-00000020" in summary.error


def test_rollback_on_a_full_disk_keeps_the_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s, "elapsed_s": 0.1}) + "\n" for s in (5, 10, 15))
    metrics.write_text(text)
    full_disk(monkeypatch, lambda name: True, errno.ENOSPC)
    with pytest.raises(CharlmError, match=r"metrics.jsonl: could not write metrics.jsonl \(No sp"):
        rollback_metrics(tmp_path, 10)
    assert metrics.read_text() == text and leftovers(tmp_path) == []


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    files.atomic_write_text(path, "old")
    with pytest.raises(KeyboardInterrupt), files.atomic_open(path) as f:
        f.write(b"new, half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and leftovers(tmp_path) == []
    files.atomic_write_bytes(path, b"new")
    assert path.read_text() == "new" and leftovers(tmp_path) == []
