"""`charlm export`: weights-only files that load everywhere a checkpoint does, ONNX and
TorchScript steps that decode the same text as `charlm sample`, and refusals that write nothing."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

import charlm
from charlm import export as ex
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_run
from charlm.training import train

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
GREEDY = 200


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def greedy_text(run: Path) -> str:
    result = runner.invoke(
        app, ["sample", str(run), "-p", "The ", "-n", str(GREEDY), "-t", "0", "--device", "cpu"]
    )
    assert result.exit_code == 0
    return result.stdout.removeprefix("The ")


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


def test_weights_file_is_small_and_loads_everywhere(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    code, shown = cli("export", str(trained_run), "--format", "weights", "--out", str(out))
    assert code == 0 and f"wrote {out} (weights): " in shown and " MB; the checkpoint " in shown
    checkpoint = trained_run / "checkpoints" / "best.safetensors"
    assert out.stat().st_size < checkpoint.stat().st_size / 3
    exported, original = charlm.load(out), charlm.load(trained_run)
    assert exported.generate("The ", 60, seed=4) == original.generate("The ", 60, seed=4)
    assert greedy_text(out) == greedy_text(trained_run)
    assert evaluate_run(out).loss == pytest.approx(evaluate_run(trained_run).loss, abs=1e-7)
    code, shown = cli("info", str(out))
    assert code == 0 and "step" in shown
    half = tmp_path / "w16.safetensors"
    assert ex.export(trained_run, "weights", half, dtype="bf16").bytes < out.stat().st_size * 0.6
    bf16 = charlm.load(half)
    assert bf16.score("The cat sees the ball.\n" * 10).loss == pytest.approx(
        original.score("The cat sees the ball.\n" * 10).loss, abs=0.02
    )


def test_torchscript_step_decodes_as_charlm_sample(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "step.pt"
    done = ex.export(trained_run, "torchscript", out)
    assert done.max_diff is not None and done.max_diff < ex.TOLERANCE
    extra = {"charlm.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        step = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["charlm.json"])
    chars = meta["vocab"]["chars"]
    layers, _, hidden = meta["state_shape"]
    state = [torch.zeros(layers, 1, hidden) for _ in meta["inputs"][1:]]
    with torch.no_grad():
        for char in "The ":
            logits, *state = step(torch.tensor([chars.index(char)]), *state)
        text = []
        for _ in range(GREEDY):
            i = int(logits[0].argmax())
            text.append(chars[i])
            logits, *state = step(torch.tensor([i]), *state)
    assert "".join(text) == greedy_text(trained_run)


def onnx_example() -> str:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    return next(b for b in blocks if "onnxruntime" in b)


def test_onnx_step_and_the_docs_numpy_example(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo.onnx"
    code, shown = cli("export", str(trained_run), "-f", "onnx", "-o", str(out))
    assert code == 0, shown
    found = re.search(r"max logit difference from PyTorch (\S+) over a 64-step probe", shown)
    assert found and float(found.group(1)) < 1e-4
    example = onnx_example()
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(example))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert imported == {"json", "numpy", "onnxruntime"}  # no charlm, no torch
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.removesuffix("\n") == greedy_text(trained_run)


def test_refusals_write_nothing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"keep me")
    run = str(trained_run)
    for args, message in (
        (["-f", "weights", "-o", str(out)], f"error: {out}: already exists; pass --force"),
        (["-f", "tflite", "-o", str(tmp_path / "x")], "error: --format 'tflite': expected one of"),
        (["-f", "onnx", "--dtype", "bf16", "-o", str(tmp_path / "x")], "only --format weights"),
        (["-f", "weights", "--dtype", "int4", "-o", str(tmp_path / "x")], "--dtype 'int4'"),
        (["-f", "weights", "-o", str(tmp_path / "no" / "x")], "no such folder for --out"),
        (["-f", "weights", "-o", str(tmp_path)], "is a folder"),
    ):
        code, shown = cli("export", run, *args)
        assert code == 1 and message in shown, shown
    code, shown = cli("export", str(tmp_path / "none"), "-f", "weights", "-o", str(tmp_path / "y"))
    assert code == 1 and "no such run folder or checkpoint file" in shown
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert cli("export", run, "-f", "weights", "-o", str(out), "--force")[0] == 0
    assert charlm.load(out).generate("The ", 5, seed=1)
    # A step that fails its check is not kept, and its temporary file is gone.
    monkeypatch.setattr(ex, "TOLERANCE", -1.0)
    with pytest.raises(CharlmError, match=r"differs from PyTorch's .* nothing was written"):
        ex.export(trained_run, "torchscript", tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists() and not leftovers(tmp_path)


def test_an_unwritable_output_and_a_missing_extra(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    code, shown = cli("export", str(trained_run), "-f", "weights", "-o", str(tmp_path / "w"))
    assert code == 1 and "cannot write the export (No space left on device)" in shown
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    code, shown = cli("export", str(trained_run), "-f", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "pip install -e '.[export]' in the charlm checkout" in shown


def test_a_gru_step_has_one_state(tmp_path: Path, corpus_file: Path) -> None:
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    run = tmp_path / "gru"
    train(tiny_config(corpus_file, **{"model.cell": "gru", "train.max_steps": 5}), run)
    for fmt in ("onnx", "torchscript"):
        done = ex.export(run, fmt, tmp_path / f"step.{fmt}")
        assert done.max_diff is not None and done.max_diff < ex.TOLERANCE
    session = ort.InferenceSession(str(tmp_path / "step.onnx"))
    assert [i.name for i in session.get_inputs()] == ["ids", "h"]
    assert [o.name for o in session.get_outputs()] == ["logits", "h_out"]
    meta = json.loads(session.get_modelmeta().custom_metadata_map["charlm"])
    assert meta["inputs"] == ["ids", "h"] and meta["state_shape"] == [1, "batch", 32]
