"""`train.precision`: autocast to bf16 / fp16, refused up front where the device cannot do it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from charlm.checkpoint import load_checkpoint
from charlm.errors import CharlmError
from charlm.precision import autocast, set_matmul_precision
from charlm.training import Trainer, resume, train


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp16_without_cuda_is_refused_before_anything_is_written(
    tmp_path: Path, corpus_file: Path
) -> None:
    with pytest.raises(CharlmError, match=r"train\.precision: 'fp16' needs a CUDA GPU"):
        train(tiny_config(corpus_file, **{"train.precision": "fp16"}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bf16_reference_cells_train_and_record_the_precision(
    tmp_path: Path, corpus_file: Path
) -> None:
    extra = {"train.precision": "bf16", "model.impl": "reference", "train.max_steps": 12}
    result = train(tiny_config(corpus_file, **extra), tmp_path / "run")
    assert result.final_val.loss < 3.3  # below the uniform level (~3.4 nats for this corpus)
    record = load_checkpoint(result.best_checkpoint).record
    assert record["config"]["train"]["precision"] == "bf16"
    assert record["grad_scaler"] is None


def test_bf16_forward_really_runs_in_bf16(tmp_path: Path, corpus_file: Path) -> None:
    config = tiny_config(corpus_file, **{"train.precision": "bf16", "model.impl": "reference"})
    trainer = Trainer(config, tmp_path)
    x = torch.zeros(2, 4, dtype=torch.long)
    with autocast(trainer.precision.name, trainer.device):
        logits, _ = trainer.model(x)
    assert logits.dtype == torch.bfloat16
    plain = Trainer(tiny_config(corpus_file), tmp_path)
    with autocast(plain.precision.name, plain.device):
        logits, _ = trainer.model(x)
    assert logits.dtype == torch.float32


def test_bf16_on_the_fused_lstm_trains_or_says_why(tmp_path: Path, corpus_file: Path) -> None:
    """oneDNN's bf16 LSTM needs AVX-512 BF16: where it is missing, one clear error up front."""
    try:
        result = train(tiny_config(corpus_file, **{"train.precision": "bf16"}), tmp_path / "r")
    except CharlmError as e:
        assert "AVX-512 BF16" in str(e) and "model.impl=reference" in str(e)
        assert not (tmp_path / "r").exists()
    else:
        assert result.steps == 40


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_the_hardware_and_is_recorded(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    import charlm.precision as precision_module

    monkeypatch.setattr(precision_module, "native_bf16", lambda device, model: native)
    monkeypatch.setattr(
        precision_module, "time_train_step", lambda *args: {"fp32": 2.0, "bf16": 1.0}
    )
    extra = {"train.precision": "auto", "train.max_steps": 10, "train.eval_interval": 10}
    result = train(tiny_config(corpus_file, **extra), tmp_path / "run")
    want = "bf16" if native else "fp32"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    record = load_checkpoint(result.best_checkpoint).record
    assert (summary["precision"], record["precision"]) == (want, want)
    assert record["config"]["train"]["precision"] == "auto"  # what the user asked for stays
    assert record["grad_scaler"] is None  # auto never picks fp16


@pytest.mark.parametrize("bf16_s", [0.5, 0.95])
def test_auto_on_the_cpu_is_bf16_where_onednn_has_it_and_it_times_faster(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch, bf16_s: float
) -> None:
    """A flag is not a speed-up: bf16 only where a timed step (fp32 1.0 s here) wins by 1.1x."""
    import charlm.precision as precision_module

    monkeypatch.setattr(
        precision_module, "time_train_step", lambda *args: {"fp32": 1.0, "bf16": bf16_s}
    )
    config = tiny_config(corpus_file, **{"train.precision": "auto"})
    trainer = Trainer(config, tmp_path)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bf16_s == 0.5
    assert trainer.precision.name == ("bf16" if native else "fp32")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert trainer.precision.probe == {"fp32_step_s": 1.0, "bf16_step_s": bf16_s}
    x = torch.zeros(2, 4, dtype=torch.long)
    with autocast(trainer.precision.name, trainer.device):
        logits, _ = trainer.model(x)
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)


def test_auto_keeps_fp32_where_the_bf16_forward_fails(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU that reports bf16 but whose kernel refuses it still trains, in fp32."""
    import charlm.precision as precision_module

    monkeypatch.setattr(precision_module, "hardware_bf16", lambda device: True)
    monkeypatch.setattr(precision_module, "bf16_forward_runs", lambda config, device: False)
    trainer = Trainer(tiny_config(corpus_file, **{"train.precision": "auto"}), tmp_path)
    assert trainer.precision.name == "fp32"


def test_the_timed_probe_gives_each_precision_a_step_time(corpus_file: Path) -> None:
    """Real timings, on a throwaway model: both positive, and the run's random streams kept."""
    from charlm.precision import time_train_step

    config = tiny_config(corpus_file)
    before = torch.get_rng_state()
    if not bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        pytest.skip("this CPU has no AVX-512 BF16: auto never times bf16 here")
    timings = time_train_step(config.model, 12, 4, 16, torch.device("cpu"))
    assert set(timings) == {"fp32", "bf16"} and all(0 < s < 10 for s in timings.values())
    once = time_train_step(config.model, 12, 4, 16, torch.device("cpu"), budget_s=0.0)
    assert all(0 < s < 10 for s in once.values())  # a spent budget still times each precision once
    assert torch.equal(torch.get_rng_state(), before)


def test_resolving_auto_leaves_the_random_streams_alone(tmp_path: Path, corpus_file: Path) -> None:
    """The probe model auto builds must not shift dropout or sampling randomness."""
    Trainer(tiny_config(corpus_file, **{"train.precision": "fp32"}), tmp_path / "a")
    after_fp32 = torch.get_rng_state()
    Trainer(tiny_config(corpus_file, **{"train.precision": "auto"}), tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), after_fp32)


def _probe(monkeypatch: pytest.MonkeyPatch, answers: list[dict[str, float]]) -> list[int]:
    """Make `auto` see bf16 hardware and time steps as `answers` say, in turn; -> the calls."""
    import charlm.precision as precision_module

    calls: list[int] = []

    def timed(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(len(calls))
        return answers[(len(calls) - 1) % len(answers)]

    monkeypatch.setattr(precision_module, "native_bf16", lambda device, model: True)
    monkeypatch.setattr(precision_module, "time_train_step", timed)
    return calls


def test_a_resumed_auto_run_keeps_its_precision_and_is_never_timed_again(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    calls = _probe(monkeypatch, [{"fp32": 2.0, "bf16": 1.0}, {"fp32": 1.0, "bf16": 2.0}])
    extra = {"train.precision": "auto", "model.impl": "reference", "train.max_steps": 10}
    train(tiny_config(corpus_file, **{**extra, "train.checkpoint_interval": 10}), run)
    assert calls == [0]
    head = (run / "config.yaml").read_text().splitlines()[0]
    assert head == "# train.precision: auto resolved to bf16 for this run"
    result = resume(run, ["train.max_steps=20"])
    assert calls == [0]  # a fresh probe would have said fp32; the resume did not ask
    record = load_checkpoint(result.last_checkpoint).record
    assert record["step"] == 20 and record["precision"] == "bf16"
    assert record["precision_probe"] == {"fp32_step_s": 2.0, "bf16_step_s": 1.0}
    assert json.loads((run / "summary.json").read_text())["precision"] == "bf16"
    assert (run / "config.yaml").read_text().splitlines()[0] == head


def test_the_carried_state_stays_fp32_under_bf16(tmp_path: Path, corpus_file: Path) -> None:
    """The hidden state carried between batches (and checkpointed) is fp32 whatever autocast
    computes in, so a bf16 run resumes on a CPU in fp32 without feeding bf16 to the LSTM."""
    extra = {"train.precision": "bf16", "model.impl": "reference", "train.max_steps": 6}
    result = train(tiny_config(corpus_file, **extra), tmp_path / "run")
    saved = load_checkpoint(result.last_checkpoint).group("state")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
    # The fused LSTM under autocast returns its state in the low dtype (where oneDNN has it);
    # a stand-in that does so everywhere shows what the step carries on.
    trainer = Trainer(tiny_config(corpus_file, **extra), tmp_path / "other")
    model = trainer.model

    class LowState(torch.nn.Module):
        def forward(self, x: torch.Tensor, state: Any) -> Any:
            logits, new = model(x, state)
            return logits, tuple(s.to(torch.bfloat16) for s in new)

    trainer.step_fn.net = LowState()
    x = torch.zeros(8, 32, dtype=torch.long)
    done = trainer.step_fn.backward(x, x, trainer.hidden.state)
    assert all(s.dtype == torch.float32 for s in done.state)


@pytest.mark.parametrize(
    ("precision", "tf32"), [("fp32", False), ("tf32", True), ("bf16", True), ("fp16", True)]
)
def test_fp32_on_a_gpu_turns_tf32_off(precision: str, tf32: bool) -> None:
    """The switches are plain flags, so this holds without a GPU; on the CPU nothing changes."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = not tf32
        set_matmul_precision(precision, torch.device("cpu"))
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (not tf32, not tf32)
        set_matmul_precision(precision, torch.device("cuda"))
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (tf32, tf32)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


@pytest.mark.parametrize(
    ("device", "timings", "expected"),
    [
        ("cuda", {"tf32": 1.0, "bf16": 0.95}, "tf32"),  # not 1.1x faster: TF32 stays
        ("cuda", {"tf32": 1.0, "bf16": 0.5}, "bf16"),
        ("cpu", {"fp32": 1.0, "bf16": 0.95}, "fp32"),
        ("cpu", {"fp32": 1.0, "bf16": 0.5}, "bf16"),
    ],
)
def test_auto_times_bf16_against_fp32_on_a_cpu_and_tf32_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch, device: str, timings: dict[str, float], expected: str
) -> None:
    import charlm.precision as precision_module
    from charlm.config import ModelConfig

    monkeypatch.setattr(precision_module, "native_bf16", lambda device, model: True)
    monkeypatch.setattr(precision_module, "time_train_step", lambda *args: timings)
    resolved = precision_module.resolve_train_precision(
        "auto", ModelConfig(), 10, 2, 8, torch.device(device)
    )
    assert resolved.name == expected
    assert resolved.probe == {f"{name}_step_s": t for name, t in timings.items()}


def test_auto_without_hardware_bf16_takes_tf32_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import charlm.precision as precision_module
    from charlm.config import ModelConfig

    monkeypatch.setattr(precision_module, "native_bf16", lambda device, model: False)
    found = precision_module.resolve_train_precision(
        "auto", ModelConfig(), 10, 2, 8, torch.device("cuda")
    )
    assert found.name == "tf32" and found.probe is None


def test_tf32_trains_on_a_cpu_as_fp32(tmp_path: Path, corpus_file: Path) -> None:
    runs = {}
    for precision in ("fp32", "tf32"):
        config = tiny_config(corpus_file, **{"train.precision": precision, "train.max_steps": 4})
        runs[precision] = train(config, tmp_path / precision)
    assert runs["fp32"].final_val.loss == runs["tf32"].final_val.loss
    assert runs["tf32"].precision == "tf32"
