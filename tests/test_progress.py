"""Training progress on stderr: the bar between metrics lines, its fit to the terminal's width,
unwrapped log lines, the order of a run's last lines; and what `charlm info` offers next and the
end of interactive sampling."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_config
from rich.console import Console
from typer.testing import CliRunner

from charlm import events as ev
from charlm.cli import app
from charlm.cli.progress import (
    ProgressView,
    Shown,
    SweepView,
    bar_line,
    clock_time,
    fields,
    layout,
    start_line,
)
from charlm.cli.sample import prompt_loop
from charlm.errors import CharlmError
from charlm.info import describe
from charlm.training import resume, train
from charlm.training.ticks import ProgressTicks

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

BUSY = Shown(
    max_steps=100_000, max_time=3600.0, step=12_345, loss=1.2345, val_bpc=1.789,
    chars_per_s=1_234_567.0, elapsed_s=83.0, at=0.0, steps_per_s=150.0,
)  # fmt: skip


def started(run_dir: str = "runs/x", step: int = 0, elapsed_s: float = 0.0) -> ev.Started:
    return ev.Started(
        run_dir=run_dir, device="cpu", precision="fp32", precision_probe=None,
        parameters=7_772, vocab_size=28, train_chars=36_000, val_chars=4_000,
        max_steps=100, max_time=None, step=step, elapsed_s=elapsed_s,
    )  # fmt: skip


def terminal(width: int) -> Console:
    return Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)


def physical_lines(console: Console) -> list[str]:
    """What a terminal shows, frame after frame: control codes out, one entry per line."""
    text = ANSI.sub("", console.file.getvalue())  # type: ignore[attr-defined]
    return [line for line in re.split(r"[\r\n]", text) if line]


class FakeClock:
    def __init__(self, tick: float = 0.0) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


# -- 1. the bar moves between metrics lines --------------------------------------------------------
def test_ticks_report_once_a_second_with_the_speed_outside_evals() -> None:
    ticks = ProgressTicks(chars_per_step=100, now=10.0, step=0, eval_s=0.0)
    assert ticks.next_at == 11.0
    event = ticks.event(now=12.0, elapsed=2.0, step=30, eval_s=0.5)  # 30 steps in 1.5 s of 2
    assert event == ev.Progress(step=30, elapsed_s=2.0, chars_per_s=2000.0)
    assert ticks.next_at == 13.0
    assert ticks.event(now=13.0, elapsed=3.0, step=30, eval_s=0.5).chars_per_s is None
    assert ProgressTicks(100, now=0.0, step=0, eval_s=0.0, enabled=False).next_at == float("inf")


def test_the_loop_reports_progress_every_second_between_lines(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock that moves 0.25 s at each reading, with no metrics line before the last step."""
    from charlm.training import loop

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=FakeClock(0.25)))
    events: list[ev.Event] = []
    extra = {"train.max_steps": 16, "train.log_interval": 100, "train.eval_interval": 100}
    train(tiny_config(corpus_file, **extra), tmp_path / "run", events.append)
    ticks = [e for e in events if isinstance(e, ev.Progress)]
    assert len(ticks) >= 3
    times = [0.0] + [e.elapsed_s for e in ticks]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(1.0 <= gap <= 1.5 for gap in gaps), gaps  # once a second, give or take a step
    assert [e.step for e in ticks] == sorted({e.step for e in ticks})
    assert all(e.chars_per_s is not None and e.chars_per_s > 0 for e in ticks)
    assert not any(isinstance(e, ev.Logged) for e in events[: events.index(ticks[-1])])


def test_the_bar_moves_between_metrics_lines() -> None:
    clock = FakeClock()
    console = terminal(120)
    view = ProgressView(plain=False, console=console, clock=clock)  # not entered: no Live
    view.handle(started())
    assert "starting" in bar_line(view.shown, clock.now, console, 120).plain
    clock.now = 1.0
    view.handle(ev.Progress(step=7, elapsed_s=1.0, chars_per_s=1_792.0))
    line = bar_line(view.shown, clock.now, console, 120).plain
    assert "step 7 |" in line and "1,792 chars/s" in line and "0:00:01" in line
    assert "left 0:00:13" in line  # 93 steps to go at 7 a second
    clock.now = 6.0  # no event for five seconds: the clock still moves
    assert "0:00:06" in bar_line(view.shown, clock.now, console, 120).plain
    view.handle(ev.Progress(step=42, elapsed_s=6.0, chars_per_s=2_000.0))
    assert "step 42 |" in bar_line(view.shown, clock.now, console, 120).plain


# -- 2. the bar fits the terminal, numbers whole --------------------------------------------------
@pytest.mark.parametrize("width", [60, 80, 120, 160])
def test_the_bar_fits_the_width_without_cutting_a_number(width: int) -> None:
    console = terminal(width)
    console.print(bar_line(BUSY, 0.0, console, width))
    (line,) = physical_lines(console)
    assert len(line) <= width and "…" not in line
    _, _, texts = layout(fields(BUSY, 0.0), width)
    assert line.endswith(" | ".join(texts))  # every field kept is there whole
    assert "step 12,345" in line and "0:01:23" in line
    if width >= 80:
        assert "val bpc 1.789" in line and "1,234,567 chars/s" in line
    if width >= 120:
        assert "loss 1.234" in line and "left 0:09:44" in line and line.startswith("train ━")


@pytest.mark.parametrize("width", [60, 80, 160])
def test_the_live_view_fits_the_width_from_start_to_end(width: int) -> None:
    console = terminal(width)
    with ProgressView(plain=False, console=console) as view:
        view.handle(started(run_dir="runs/short"))
        view.handle(ev.Progress(step=12_345, elapsed_s=83.0, chars_per_s=1_234_567.0))
        view.handle(ev.Logged(12_345, 83.0, {"train_loss": 1.2, "val_bpc": 1.7}))
        view.handle(ev.FinalEvalStarted(step=12_345, chars=1_115_394))
        view.handle(ev.FinalEvalFinished(step=12_345, seconds=2.0, loss=1.1, bpc=1.6))
    shown = physical_lines(console)
    assert shown[0] == start_line(started(run_dir="runs/short"))  # a log line: never wrapped
    assert all(len(line) <= width and "…" not in line for line in shown[1:])
    assert any("step 12,345 | final eval" in line for line in shown)
    assert "step 12,345 | final val bpc 1.6000 |" in shown[-1]


def test_clock_time_is_whole_seconds() -> None:
    assert [clock_time(s) for s in (0.4, 83.9, 3725.0)] == ["0:00:00", "0:01:23", "1:02:05"]


# -- 3. log lines are never wrapped ---------------------------------------------------------------
def test_plain_lines_are_one_physical_line_each_at_80_columns() -> None:
    console = Console(file=io.StringIO(), width=80)
    assert not console.is_terminal
    long_dir = "runs/" + "a-rather-long-experiment-name/" * 3 + "run"
    view = ProgressView(plain=True, console=console)
    view.handle(started(run_dir=long_dir))
    view.handle(ev.Progress(step=3, elapsed_s=1.0, chars_per_s=10.0))  # plain: no line
    view.handle(ev.Logged(10, 1.5, {"train_loss": 3.2, "chars_per_s": 41_509.0}))
    view.handle(ev.Warned("x " * 60))
    sweep = SweepView(plain=True, console=console)
    sweep.handle(ev.SweepMoved(name="cell=gru", moved_to=long_dir))
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines[0] == start_line(started(run_dir=long_dir)) and len(lines[0]) > 80
    assert lines[1] == "step 10 | loss 3.200 | val bpc - | 41,509 chars/s | 1.5s"
    assert lines[2].startswith("warning: x x") and len(lines[2]) > 80
    assert lines[3] == f"  kept the unfinished run as {long_dir}; starting it again"
    assert len(lines) == 4


# -- 6. a run's last lines, in order --------------------------------------------------------------
def test_the_last_steps_line_comes_before_the_final_eval(tmp_path: Path, corpus_file: Path) -> None:
    console = Console(file=io.StringIO(), width=80)
    view = ProgressView(plain=True, console=console)
    extra = {"train.max_steps": 10, "train.eval_chars": 100}
    train(tiny_config(corpus_file, **extra), tmp_path / "run", view.handle)
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    last = next(i for i, line in enumerate(lines) if line.startswith("step 10 | loss"))
    final = next(i for i, line in enumerate(lines) if line.startswith("final eval on all"))
    assert last < final and lines[final + 1].startswith("final val bpc")
    assert lines[final + 2].startswith("step 10 | val bpc")  # the last step's own eval
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and {"train_loss", "val_bpc", "final_val_bpc"} <= rows[-1].keys()
    assert [r["step"] for r in rows].count(10) == 1  # one line on disk


# -- 4. `charlm info` offers a command that runs ---------------------------------------------------
def test_info_offers_training_further_for_a_finished_run(trained_run: Path) -> None:
    report = describe(trained_run)
    further = f"charlm train --resume {trained_run} train.max_steps=120"
    assert report["resume"] is None and report["train_further"] == further
    result = runner.invoke(app, ["info", str(trained_run)], env={"COLUMNS": "300"})
    assert result.exit_code == 0 and "train further" in result.stdout
    assert further in result.stdout and "│ resume" not in result.stdout
    with pytest.raises(CharlmError, match=r"train\.max_steps=120"):
        resume(trained_run)  # what was offered before: refused


def test_info_offers_resume_when_it_runs(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "summary.json").unlink()  # cut off before its summary: a resume finishes it
    report = describe(run)
    assert report["resume"] == f"charlm train --resume {run}" and report["train_further"] is None
    result = runner.invoke(app, ["info", str(run)], env={"COLUMNS": "300"})
    assert f"│ resume               │ charlm train --resume {run}" in result.stdout
    assert "train further" not in result.stdout


def test_a_time_budget_is_raised_past_the_time_trained(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    extra = {"train.max_steps": None, "train.max_time": 0.2, "train.eval_interval": 1000}
    result = train(tiny_config(corpus_file, **extra), run)
    further = describe(run)["train_further"]
    seconds = int(further.rpartition("train.max_time=")[2])
    assert further.startswith(f"charlm train --resume {run} train.max_time=")
    assert seconds > result.elapsed_s and "max_steps" not in further
    assert resume(run, [f"train.max_time={seconds}"]).elapsed_s >= seconds


# -- 5. Ctrl-D at the interactive prompt ----------------------------------------------------------
class Typed(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("typed", ["", "The"])
def test_end_of_input_at_the_prompt_ends_the_line(
    typed: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", Typed(typed))
    prompt_loop(lambda prime, echo_prime: sys.stdout.write(f"[{prime}]"))
    out, err = capsys.readouterr()
    assert out == ("[The]\n" if typed else "")
    assert err.endswith("> \n")  # the shell's prompt starts a line of its own


def test_piped_primes_without_a_last_newline_end_with_one(trained_run: Path) -> None:
    args = ["sample", str(trained_run), "-i", "-n", "5", "-s", "1"]
    result = runner.invoke(app, args, input="The")
    assert result.exit_code == 0 and result.stdout.endswith("\n") and len(result.stdout) == 6
    empty = runner.invoke(app, args, input="")
    assert empty.exit_code == 0 and empty.stdout == ""
