"""Exact resume, stop signals and up-front checks (issue: checkpoints you can trust).

The exactness tests compare a run that never stopped with one that stopped (Ctrl-C, SIGKILL) and
was resumed: per-step train losses and final weights must be equal bit for bit on the CPU.
Both sides use one torch thread, so a subprocess and this process compute the same floats.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_overrides
from safetensors.torch import save as safetensors_save
from typer.testing import CliRunner

from charlm import events as ev
from charlm.checkpoint import (
    FORMAT,
    VERSION,
    load_checkpoint,
    step_checkpoints,
    tensor_digest,
)
from charlm.cli import app
from charlm.errors import CharlmError, CharlmWarning
from charlm.runs import read_metrics
from charlm.training import TrainingInterrupted, resume, train

REPO_ROOT = Path(__file__).resolve().parents[1]
# Two layers with dropout, so the torch RNG stream matters; a log line every step.
EXACT = {
    "model.num_layers": 2,
    "model.dropout": 0.2,
    "train.max_steps": 30,
    "train.log_interval": 1,
    "train.eval_interval": 10,
    "train.checkpoint_interval": 10,
}
# A child that runs the CLI with each batch slowed down (and each save, when asked), so a test
# can signal it mid-run. Sleeping changes no arithmetic.
SLOW_CLI = """
import sys, time
from charlm import batches, checkpoint
step_delay, save_delay, marker = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
real_next, real_save = batches.StreamBatcher.next, checkpoint.save_checkpoint
def slow_next(self):
    time.sleep(step_delay)
    return real_next(self)
def slow_save(*args, **kwargs):
    open(marker, "a").close()
    time.sleep(save_delay)
    return real_save(*args, **kwargs)
batches.StreamBatcher.next = slow_next
checkpoint.save_checkpoint = slow_save
from charlm.cli import main
sys.argv = ["charlm", *sys.argv[4:]]
main()
"""


@pytest.fixture(scope="module")
def baseline(corpus: Path) -> Path:
    """The uninterrupted run every resumed one must match."""
    run = corpus.parent / "baseline"
    train(tiny_config(corpus, **EXACT), run)
    return run


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in read_metrics(run) if "train_loss" in r]


def assert_same_run(run: Path, baseline: Path) -> None:
    assert losses(run) == losses(baseline)
    assert [r["step"] for r in read_metrics(run)] == [r["step"] for r in read_metrics(baseline)]
    final = step_checkpoints(baseline / "checkpoints")[-1][1].name
    ours = load_checkpoint(run / "checkpoints" / final).group("model")
    theirs = load_checkpoint(baseline / "checkpoints" / final).group("model")
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name


def wait_for(check: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None:
            _, errs = proc.communicate()
            pytest.fail(f"child exited early ({proc.returncode}): {errs[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the child")
        time.sleep(0.02)


def last_step(run: Path) -> int:
    rows = read_metrics(run)
    return rows[-1]["step"] if rows else 0


def slow_child(
    run: Path, corpus: Path, extra: dict[str, object], step_delay: float, save_delay: float = 0.0
) -> subprocess.Popen[str]:
    args = ["train", *tiny_overrides(corpus, **extra), "--out", str(run), "--quiet"]
    marker = str(run.parent / f"{run.name}.saving")
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(step_delay), str(save_delay), marker, *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- exact resume --------------------------------------------------------------------------
@pytest.mark.slow
def test_stop_then_resume_in_a_new_process_matches_uninterrupted(
    corpus: Path, baseline: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"

    def stop_at_13(event: ev.Event) -> None:
        if isinstance(event, ev.Logged) and event.step == 13:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(tiny_config(corpus, **EXACT), run, on_event=stop_at_13)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    stop = info.value
    assert (stop.step, stop.exit_code, stop.signal_name) == (13, 130, "SIGINT")
    assert stop.checkpoint == run / "checkpoints" / "step-00000013.safetensors"
    assert load_checkpoint(stop.checkpoint).step == 13
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"

    done = subprocess.run(
        [sys.executable, "-m", "charlm", "train", "--resume", str(run), "--quiet"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    assert_same_run(run, baseline)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_sigkill_between_checkpoints_resumes_from_the_last_one(
    corpus: Path, baseline: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    proc = slow_child(run, corpus, EXACT, step_delay=0.1)
    wait_for(lambda: last_step(run) >= 14, proc)
    proc.kill()
    proc.wait()
    killed_at = last_step(run)
    assert 14 <= killed_at < 30
    newest = step_checkpoints(run / "checkpoints")[-1][0]
    assert newest < killed_at  # some logged steps are lost and must be redone

    events: list[ev.Event] = []
    resume(run, on_event=events.append)
    path = str(run / "checkpoints" / f"step-{newest:08d}.safetensors")
    assert ev.Resumed(path=path, step=newest) in events
    assert_same_run(run, baseline)  # also: each step logged once, lost lines dropped


def test_resume_rolls_metrics_back_and_removes_temp_files(
    corpus: Path, baseline: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    for step, path in step_checkpoints(run / "checkpoints"):
        if step > 10:
            path.unlink()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 31, "train_l')  # a line cut short by a crash
    leftover = run / "checkpoints" / ".step-00000020.safetensors.tmp-99999"
    leftover.write_bytes(b"half a checkpoint")
    resume(run)
    assert not leftover.exists()
    assert_same_run(run, baseline)


# -- stop signals through the real CLI ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_after_a_checkpoint_and_prints_resume(
    corpus: Path, tmp_path: Path, sig: int, code: int
) -> None:
    run = tmp_path / "run"
    extra = {**EXACT, "train.max_steps": 1000, "train.checkpoint_interval": 500}
    proc = slow_child(run, corpus, extra, step_delay=0.05)
    wait_for(lambda: last_step(run) >= 3, proc)
    proc.send_signal(sig)
    _, errs = proc.communicate(timeout=120)
    assert proc.returncode == code, errs
    assert f"resume with: charlm train --resume {run}" in errs
    assert "Traceback" not in errs
    (step, path), *_ = step_checkpoints(run / "checkpoints")
    assert step >= 3
    assert load_checkpoint(path).step == step
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
def test_second_ctrl_c_during_the_save_corrupts_nothing(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    marker = tmp_path / "run.saving"
    extra = {
        **EXACT,
        "train.max_steps": 1000,
        "train.checkpoint_interval": 500,
        "train.eval_interval": 500,
    }
    proc = slow_child(run, corpus, extra, step_delay=0.05, save_delay=1.5)
    wait_for(lambda: last_step(run) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    wait_for(marker.exists, proc)  # the stop checkpoint is being written now
    proc.send_signal(signal.SIGINT)
    _, errs = proc.communicate(timeout=120)
    assert proc.returncode == 130, errs
    (step, path), *_ = step_checkpoints(run / "checkpoints")
    assert load_checkpoint(path).step == step >= 3
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_signal_handlers_only_in_the_main_thread(corpus: Path, tmp_path: Path) -> None:
    failures: list[BaseException] = []

    def work() -> None:
        try:
            train(tiny_config(corpus, **{"train.max_steps": 3}), tmp_path / "run")
        except BaseException as e:
            failures.append(e)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert failures == []
    assert (tmp_path / "run" / "summary.json").is_file()


# -- resume rules and up-front checks ---------------------------------------------------
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_resume_refuses_config_changes(baseline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    code, out = cli("train", "--resume", str(run), "train.lr=0.5")
    assert code == 1 and "only train.max_steps, train.max_time, train.device" in out
    code, out = cli("train", "--resume", str(run), "configs/tiny.yaml")
    assert code == 1 and "uses the config recorded in it" in out
    code, out = cli("train", "--resume", str(run), "--out", str(tmp_path / "other"))
    assert code == 1 and "drop --out" in out
    code, out = cli("train", "--resume", str(run))
    assert code == 1 and "pass a larger train.max_steps" in out
    assert "Traceback" not in out


def test_resume_with_a_larger_budget_continues(baseline: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    code, out = cli("train", "--resume", str(run), "train.max_steps=33", "--quiet")
    assert code == 0, out
    assert [r["step"] for r in read_metrics(run)][-4:] == [30, 31, 32, 33]
    assert load_checkpoint(run / "checkpoints" / "step-00000033.safetensors").step == 33


def test_existing_out_without_resume_is_refused(baseline: Path, corpus: Path) -> None:
    before = sorted(p.name for p in (baseline / "checkpoints").iterdir())
    code, out = cli("train", *tiny_overrides(corpus), "--out", str(baseline))
    assert code == 1 and "already holds files" in out
    assert sorted(p.name for p in (baseline / "checkpoints").iterdir()) == before


def _no_data(*args: object, **kwargs: object) -> None:
    raise AssertionError("the data was loaded before the up-front checks")


def test_missing_resume_target_is_reported_before_loading_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("charlm.training.loop.prepare_data", _no_data)
    code, out = cli("train", "--resume", str(tmp_path / "nope"))
    assert code == 1 and "no such run folder to resume" in out
    (tmp_path / "empty").mkdir()
    code, out = cli("train", "--resume", str(tmp_path / "empty"))
    assert code == 1 and "not a charlm run folder" in out
    with pytest.raises(CharlmError, match="no complete checkpoint"):
        (tmp_path / "empty" / "checkpoints").mkdir()
        resume(tmp_path / "empty")


def test_unwritable_folders_are_reported_before_loading_data(
    corpus: Path, baseline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("charlm.training.loop.prepare_data", _no_data)
    locked = tmp_path / "locked"
    locked.mkdir()
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    read_only = {locked, run / "checkpoints"}
    real_access = os.access
    # Simulated, so the test also means something when it runs as root.
    monkeypatch.setattr(
        "charlm.rundir.os.access",
        lambda path, mode: False if Path(path) in read_only else real_access(path, mode),
    )
    code, out = cli("train", *tiny_overrides(corpus), "--out", str(locked / "run"))
    assert code == 1 and "is not writable" in out
    code, out = cli("train", "--resume", str(run), "train.max_steps=40")
    assert code == 1 and "is not writable" in out


def test_a_checkpoint_from_before_fused_adamw_resumes_exactly_with_it(
    baseline: Path, tmp_path: Path
) -> None:
    """Runs train with AdamW's fused kernel; an older checkpoint (no fused flag) still resumes
    bit for bit into the same run, because the resumed optimizer keeps the kernel."""
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    steps = step_checkpoints(run / "checkpoints")
    for _, later in steps[1:]:
        later.unlink()
    old = load_checkpoint(steps[0][1])
    assert all(g["fused"] is True for g in old.record["optimizer"]["param_groups"])
    record = {k: v for k, v in old.record.items() if k not in ("format", "version")}
    for group in record["optimizer"]["param_groups"]:
        group["fused"] = None  # as torch wrote it before charlm asked for the fused kernel
    save_old_format(steps[0][1], old.tensors, record)
    with pytest.warns(CharlmWarning, match="written by an older charlm"):
        resume(run)
    final = load_checkpoint(run / "checkpoints" / steps[-1][1].name)
    assert all(g["fused"] is True for g in final.record["optimizer"]["param_groups"])
    assert_same_run(run, baseline)


def save_old_format(
    path: Path, tensors: dict[str, torch.Tensor], record: dict[str, object]
) -> None:
    """Write a checkpoint as charlm did before the record had a checksum: the tensors' only."""
    record = {k: v for k, v in record.items() if k not in ("record_sha256", "tensors_sha256")}
    meta = {
        **record,
        "format": FORMAT,
        "version": VERSION,
        "tensors_sha256": tensor_digest(tensors),
    }
    path.write_bytes(safetensors_save(tensors, metadata={"charlm": json.dumps(meta)}))


def test_a_run_of_older_checkpoints_resumes_with_a_warning(baseline: Path, tmp_path: Path) -> None:
    """Every file of the run in the older format: resume says so once and goes on; the files it
    writes carry both checksums."""
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    for path in (run / "checkpoints").iterdir():
        old = load_checkpoint(path)
        save_old_format(path, old.tensors, old.record)
        assert load_checkpoint(path, warn=False).unverified is not None
    newest = step_checkpoints(run / "checkpoints")[-1][1]
    code, out = cli("train", "--resume", str(run), "train.max_steps=33", "--quiet")
    assert code == 0, out
    assert f"warning: {newest}: its metadata has no checksum (written by an older charlm)" in out
    written = load_checkpoint(run / "checkpoints" / "step-00000033.safetensors")
    assert written.unverified is None and "record_sha256" in written.record
    code, out = cli("sample", str(newest), "-n", "5", "--seed", "1")
    assert code == 0 and "warning:" in out
