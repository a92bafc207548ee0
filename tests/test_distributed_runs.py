"""Data-parallel training end to end: 2 processes under torchrun (gloo, CPU) against 1 process.

Every process and this test use one torch thread, so the two sides compute comparable floats.
Each torchrun launch costs several seconds of start-up, so the launches are shared by fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config, tiny_overrides
from typer.testing import CliRunner

from charlm.checkpoint import load_checkpoint, step_checkpoints
from charlm.cli import app
from charlm.evaluate import evaluate_run
from charlm.runs import read_metrics
from charlm.training import resume, train

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
# Global batch 8: 4 streams per process with 2 processes. Dropout 0, so 2 processes are exact.
SMALL = {
    "train.batch_size": 8,
    "train.max_steps": 6,
    "train.eval_interval": 3,
    "train.log_interval": 3,
    "train.checkpoint_interval": 3,
    "train.keep_last": 5,
    "train.warmup_steps": 2,
}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def nproc_train(corpus: Path, extra: dict[str, object], run: Path) -> list[str]:
    """`charlm train ... --nproc 2`: the launcher that starts torchrun for the user."""
    args = [*tiny_overrides(corpus, **extra), "--out", str(run), "--quiet", "--nproc", "2"]
    return [sys.executable, "-m", "charlm", "train", *args]


def torchrun_train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, "-m", "charlm", "train", *args, "--quiet"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(step_checkpoints(run / "checkpoints")[-1][1]).group("model")


def assert_close_weights(ours: Path, theirs: Path) -> None:
    a, b = final_weights(ours), final_weights(theirs)
    assert a.keys() == b.keys()
    for name in b:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=1e-6), name


@pytest.fixture(scope="module")
def single_run(corpus: Path) -> Path:
    run = corpus.parent / "single"
    train(tiny_config(corpus, **SMALL), run)
    return run


@pytest.fixture(scope="module")
def ddp_run(corpus: Path) -> Path:
    run = corpus.parent / "ddp"
    done = torchrun_train(*tiny_overrides(corpus, **SMALL), "--out", str(run))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("charlm train") == 1  # one summary table: rank 0 reports
    return run


def test_two_processes_match_one_process_with_the_global_batch(
    ddp_run: Path, single_run: Path
) -> None:
    assert_close_weights(ddp_run, single_run)
    ours = load_checkpoint(ddp_run / "checkpoints" / "step-00000006.safetensors")
    theirs = load_checkpoint(single_run / "checkpoints" / "step-00000006.safetensors")
    # The same layout: the hidden state of all 8 streams, gathered from both processes.
    assert {k: v.shape for k, v in ours.tensors.items()} == {
        k: v.shape for k, v in theirs.tensors.items()
    }
    assert ours.group("state")["0"].shape[1] == 8
    assert torch.allclose(ours.group("state")["0"], theirs.group("state")["0"], atol=1e-5)
    assert ours.record["batcher"] == theirs.record["batcher"]
    rows = [(r["step"], r.get("train_loss")) for r in read_metrics(ddp_run)]
    base = [(r["step"], r.get("train_loss")) for r in read_metrics(single_run)]
    assert [s for s, _ in rows] == [s for s, _ in base] == [3, 6]  # rank 0 alone writes
    for (_, a), (_, b) in zip(rows, base, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_ddp_validation_equals_a_single_process_eval(ddp_run: Path) -> None:
    by_step = {r["step"]: r["val_loss"] for r in read_metrics(ddp_run)}
    for step in (3, 6):
        ckpt = ddp_run / "checkpoints" / f"step-{step:08d}.safetensors"
        single = evaluate_run(ckpt, device="cpu")
        assert by_step[step] == pytest.approx(single.loss, rel=1e-6)
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["final_val"]["loss"] == pytest.approx(by_step[6], rel=1e-12)


def test_ddp_checkpoint_samples_evaluates_and_resumes_in_one_process(
    ddp_run: Path, single_run: Path, tmp_path: Path
) -> None:
    sample = CliRunner().invoke(app, ["sample", str(ddp_run), "-n", "40", "--seed", "1"])
    assert sample.exit_code == 0, sample.output
    assert len(sample.stdout) == 40
    evaluated = CliRunner().invoke(app, ["eval", str(ddp_run), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["chars"] > 0

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(ddp_run, ours)
    shutil.copytree(single_run, theirs)
    assert resume(ours, ["train.max_steps=9"]).steps == 9
    assert resume(theirs, ["train.max_steps=9"]).steps == 9
    assert_close_weights(ours, theirs)


def test_single_process_checkpoint_resumes_under_ddp(single_run: Path, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    shutil.copytree(single_run, ours)
    shutil.copytree(single_run, theirs)
    done = torchrun_train("--resume", str(ours), "train.max_steps=9")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming from") == 1
    resume(theirs, ["train.max_steps=9"])
    assert step_checkpoints(ours / "checkpoints")[-1][0] == 9
    assert [r["step"] for r in read_metrics(ours)] == [3, 6, 9]
    assert_close_weights(ours, theirs)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in read_metrics(run)):
        if proc.poll() is not None:
            pytest.fail(f"launcher exited early ({proc.returncode}): {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for training steps")
        time.sleep(0.05)


def test_sigterm_to_the_launcher_leaves_a_checkpoint_one_process_resumes(
    corpus: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    long = {**SMALL, "train.max_steps": 1_000_000, "train.checkpoint_interval": 1_000_000}
    long["train.eval_interval"] = 1_000_000
    proc = subprocess.Popen(
        nproc_train(corpus, long, run),
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run, 6, proc)
    proc.send_signal(signal.SIGTERM)
    _, errs = proc.communicate(timeout=120)
    assert proc.returncode == 143, errs[-3000:]
    assert errs.count(f"resume with: charlm train --resume {run}") == 1
    assert "Traceback" not in errs
    [(step, path)] = step_checkpoints(run / "checkpoints")  # one consistent checkpoint
    assert step >= 6 and load_checkpoint(path).step == step
    assert load_checkpoint(path).group("state")["0"].shape[1] == 8
    assert not [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"

    result = resume(run, [f"train.max_steps={step + 2}"])
    assert result.steps == step + 2
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_mistake_stops_every_process_with_one_line(corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    done = subprocess.run(
        nproc_train(corpus, SMALL, run),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stderr.count("error:") == 1
    assert f"error: {run}: already holds files" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
