"""Crash-safe saves, the divergence guard, safe loading and `charlm info` (checkpoints you can
trust). Every damaged or hostile file must give a clear error naming it, never a traceback, and
never run code from the file."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config, tiny_overrides
from safetensors.torch import save_file
from typer.testing import CliRunner

from charlm import checkpoint as ckpt
from charlm import files
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.training import Trainer, TrainingDiverged, resume, train
from charlm.training.step import DeferredCheck, TrainStep

runner = CliRunner()
SHORT = {"train.max_steps": 25, "train.checkpoint_interval": 10, "train.eval_interval": 10}


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(run: Path) -> list[Path]:
    return [p for p in (run / "checkpoints").iterdir() if ".tmp-" in p.name]


# -- crash-safe saves ----------------------------------------------------------------------------
def _fail_save_of_step_20(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Make the write of step-00000020 fail: in the rename (EIO) or in the write (disk full)."""
    real_replace, real_open = os.replace, open
    target = ckpt.step_name(20)

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)).name == target:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)  # type: ignore[arg-type]

    class FullDisk(io.RawIOBase):
        def __init__(self, path: object) -> None:
            self.f = real_open(path, "wb")  # type: ignore[call-overload]

        def write(self, data: object) -> int:
            self.f.write(bytes(data)[:100])  # part of it lands, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fileno(self) -> int:
            return self.f.fileno()

        def close(self) -> None:
            self.f.close()
            super().close()

    def fake_open(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if target in str(path) and "w" in mode:
            return FullDisk(path)
        return real_open(path, mode, *args, **kwargs)  # type: ignore[call-overload]

    if how == "rename":
        monkeypatch.setattr(ckpt.os, "replace", replace)
    else:
        monkeypatch.setattr(files, "open", fake_open, raising=False)


@pytest.mark.parametrize(
    ("how", "reason"), [("rename", "Input/output error"), ("full-disk", "No space left on device")]
)
def test_failed_save_keeps_the_previous_checkpoint(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, reason: str
) -> None:
    run = tmp_path / "run"
    _fail_save_of_step_20(monkeypatch, how)
    code, out = cli("train", *tiny_overrides(corpus_file, **SHORT), "--out", str(run), "-q")
    assert code == 1
    assert f"error: {run / 'checkpoints' / ckpt.step_name(20)}: could not write" in out
    assert reason in out and "the previous checkpoint is intact" in out
    assert not (run / "checkpoints" / ckpt.step_name(20)).exists()
    assert temp_files(run) == []
    assert ckpt.load_checkpoint(run / "checkpoints" / ckpt.step_name(10)).step == 10
    monkeypatch.undo()
    resume(run)  # and training carries on from it
    assert ckpt.load_checkpoint(run / "checkpoints" / ckpt.step_name(25)).step == 25


def test_exception_between_write_and_rename_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ckpt.step_name(1)
    ckpt.save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    before = digest(path)

    def boom(src: object, dst: object) -> None:
        raise RuntimeError("crash before the rename")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(RuntimeError, match="crash before the rename"):
        ckpt.save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    assert digest(path) == before
    assert ckpt.load_checkpoint(path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# -- divergence guard ----------------------------------------------------------------------------
def _poison(
    monkeypatch: pytest.MonkeyPatch, at_step: int, kind: str, seen: dict[str, torch.Tensor]
) -> None:
    """From step `at_step` on, return a NaN loss, or a finite loss with NaN gradients."""
    real = TrainStep.compute_loss
    calls = [0]

    def compute_loss(self: TrainStep, x: torch.Tensor, y: torch.Tensor, state: Any) -> Any:
        loss, state = real(self, x, y, state)
        calls[0] += 1  # one forward per step: this is step calls[0]
        if calls[0] < at_step:
            return loss, state
        seen.update({k: v.clone() for k, v in self.model.state_dict().items()})
        if kind == "loss":
            return loss * float("nan"), state
        weight = self.model.head.weight
        return loss + torch.sqrt((weight * 0).abs().sum()), state  # value 0, gradient NaN

    monkeypatch.setattr(TrainStep, "compute_loss", compute_loss)


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_non_finite_step_is_not_applied_and_nothing_is_overwritten(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    run = tmp_path / "run"
    seen: dict[str, torch.Tensor] = {}
    _poison(monkeypatch, 15, kind, seen)
    trainers: list[Trainer] = []
    real_run = Trainer.run
    monkeypatch.setattr(Trainer, "run", lambda self: trainers.append(self) or real_run(self))
    last_good = run / "checkpoints" / ckpt.step_name(10)
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(corpus_file, **SHORT), run)
    assert info.value.step == 15 and info.value.last_checkpoint == last_good
    assert "diverged at step 15" in str(info.value) and str(last_good) in str(info.value)
    after = trainers[0].model.state_dict()
    assert all(torch.equal(after[k], seen[k]) for k in seen)  # the bad step was not applied
    assert all(torch.isfinite(v).all() for v in after.values())
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.safetensors", ckpt.step_name(10)]
    loaded = ckpt.load_checkpoint(last_good)
    assert all(torch.isfinite(v).all() for v in loaded.group("model").values())
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_deferred_check_without_per_step_sync_stops_before_anything_bad_is_saved(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The GPU's way (first bad step kept on the device, read at logs and saves), run on the CPU."""
    real_init = Trainer.__init__

    def init(self: Trainer, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.deferred = DeferredCheck(self.device)

    monkeypatch.setattr(Trainer, "__init__", init)
    _poison(monkeypatch, 13, kind, {})
    run = tmp_path / "run"
    overrides = {**SHORT, "train.log_interval": 5}
    with pytest.raises(TrainingDiverged) as info:
        train(tiny_config(corpus_file, **overrides), run)
    last_good = run / "checkpoints" / ckpt.step_name(10)
    assert info.value.step == 13 and info.value.last_checkpoint == last_good
    assert "diverged at step 13" in str(info.value) and "noticed at step 15" in str(info.value)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.safetensors", ckpt.step_name(10)]
    for name in names:
        loaded = ckpt.load_checkpoint(run / "checkpoints" / name)
        assert all(torch.isfinite(v).all() for v in loaded.group("model").values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["step"] == 13
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r.get("train_loss", 0.0)) for r in lines)
    assert max(r.get("step", 0) for r in lines) == 10


def test_divergence_through_the_cli_is_one_line_and_exit_1(
    corpus_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _poison(monkeypatch, 12, "loss", {})
    run = tmp_path / "run"
    code, out = cli("train", *tiny_overrides(corpus_file, **SHORT), "--out", str(run), "-q")
    assert code == 1
    assert "error: training diverged at step 12" in out
    assert str(run / "checkpoints" / ckpt.step_name(10)) in out


# -- safe loading --------------------------------------------------------------------------------
class _Payload:
    """Unpickling this creates the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove there is no fallback to pickle-based loading anywhere."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unsafe loading was attempted")

    for target in ("pickle.load", "pickle.loads", "torch.load"):
        monkeypatch.setattr(target, refuse)


def _hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["pickle"] = folder / "step-00000001.safetensors"
    files["pickle"].write_bytes(pickle.dumps(_Payload(marker)))
    files["torch.save"] = folder / "step-00000002.safetensors"
    torch.save({"model": torch.ones(2), "evil": _Payload(marker)}, files["torch.save"])
    return files


def test_pickle_payloads_never_run(tmp_path: Path, no_unpickling: None) -> None:
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    files = _hostile_files(run / "checkpoints", marker)
    for path in files.values():
        with pytest.raises(CharlmError, match="not a valid charlm checkpoint") as info:
            ckpt.load_checkpoint(path)
        assert str(path) in str(info.value)
        code, out = cli("sample", str(path), "-n", "5")
        assert code == 1 and "not a valid charlm checkpoint" in out
    code, out = cli("info", str(run))
    assert code == 1 and out.count("damaged") >= 2
    code, out = cli("train", "--resume", str(run))
    assert code == 1 and "no complete checkpoint" in out
    assert not marker.exists()


def test_damaged_and_foreign_files_name_the_file(trained_run: Path, tmp_path: Path) -> None:
    good = ckpt.find_checkpoint(trained_run)
    data = good.read_bytes()
    cases = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "header-only": data[:8],
        "random": os.urandom(4096),
        "text": b"hello, I am not a checkpoint\n" * 10,
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(CharlmError, match="not a valid charlm checkpoint") as info:
            ckpt.load_checkpoint(path)
        assert str(path) in str(info.value), name
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(CharlmError, match="without charlm metadata"):
        ckpt.load_checkpoint(foreign)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF  # one bit-rotted byte inside the tensor payload
    bad = tmp_path / "bitrot.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CharlmError, match="damaged checkpoint") as info:
        ckpt.load_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_cuda_trained_checkpoint_loads_on_a_cpu_machine(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    newest = ckpt.step_checkpoints(run / "checkpoints")[-1][1]
    for path in [newest, run / "checkpoints" / ckpt.BEST_NAME]:
        loaded = ckpt.load_checkpoint(path)
        record = dict(loaded.record)
        record["device"] = "cuda:0"
        record["config"]["train"]["device"] = "cuda"
        tensors = {**loaded.tensors, "rng/cuda0": torch.zeros(16, dtype=torch.uint8)}
        ckpt.save_checkpoint(path, tensors, record)
    model = ckpt.load_model(run, device="cpu").model
    assert next(model.parameters()).device.type == "cpu"
    code, out = cli("sample", str(run), "-n", "5", "--seed", "1", "--device", "cpu")
    assert code == 0
    if not torch.cuda.is_available():
        code, out = cli("train", "--resume", str(run), "train.max_steps=62")
        assert code == 1 and "no CUDA GPU is available" in out
    code, out = cli("train", "--resume", str(run), "train.max_steps=62", "train.device=cpu", "-q")
    assert code == 0, out
    assert ckpt.load_checkpoint(run / "checkpoints" / ckpt.step_name(62)).record["device"] == "cpu"


# -- charlm info ---------------------------------------------------------------------------------
def test_info_json_reports_the_run(trained_run: Path) -> None:
    code, out = cli("info", str(trained_run), "--json")
    assert code == 0
    report = json.loads(out)
    summary = report["summary"]
    newest = ckpt.step_checkpoints(trained_run / "checkpoints")[-1][1]
    record = ckpt.load_checkpoint(newest).record
    assert summary["checkpoint"] == str(newest)
    assert summary["step"] == 60 and summary["elapsed_s"] == record["elapsed_s"]
    assert summary["parameters"] == record["parameters"] > 0
    assert summary["vocab_size"] == len(record["vocab"]["chars"])
    assert summary["best_val_bpc"] == pytest.approx(record["best_val_loss"] / 0.6931471805599453)
    assert summary["last_val_bpc"] == record["last_val"]["bpc"]
    assert summary["config"]["train"]["max_steps"] == 60
    assert summary["precision"] == record["precision"] == "fp32"
    assert report["resume"] is None  # finished: a resume would be refused
    assert report["train_further"] == f"charlm train --resume {trained_run} train.max_steps=120"
    files = {Path(e["file"]).name: e for e in report["checkpoints"]}
    assert "best.safetensors" in files and newest.name in files
    assert all(e["intact"] and e["status"] == "ok" for e in files.values())


def test_info_reports_damage_instead_of_crashing(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    steps = ckpt.step_checkpoints(run / "checkpoints")
    newest = steps[-1][1]
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))
    (run / "checkpoints" / ".step-00000070.safetensors.tmp-4242").write_bytes(b"partial")
    code, out = cli("info", str(run), "--json")
    assert code == 0
    report = json.loads(out)
    status = {Path(e["file"]).name: (e["intact"], e["status"]) for e in report["checkpoints"]}
    assert status[newest.name] == (False, "damaged")
    assert status[".step-00000070.safetensors.tmp-4242"] == (False, "incomplete")
    assert report["summary"]["checkpoint"] == str(steps[-2][1])  # the newest intact one
    code, out = cli("info", str(newest))
    assert code == 1 and "damaged" in out
    code, out = cli("info", str(tmp_path / "missing"))
    assert code == 1 and "no such run folder or checkpoint file" in out
    # Resume skips the damaged newest checkpoint and goes on from the one before it.
    code, out = cli("train", "--resume", str(run), "-q")
    assert code == 0, out
    assert f"skipping {newest.name}" in out
    assert ckpt.load_checkpoint(newest).step == 60  # rewritten, intact again
