"""`charlm.load` and its Model: the same text as `charlm sample`, the same errors, the docs run;
`charlm sample --prime-file`; long streams and closed pipes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

import charlm
from charlm.cli import app
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli_sample(run: Path, *args: str) -> str:
    result = runner.invoke(app, ["sample", str(run), "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def python_blocks(doc: str) -> list[str]:
    text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture(scope="module")
def model(trained_run: Path) -> charlm.Model:
    return charlm.load(trained_run, device="cpu")


def test_generate_is_what_charlm_sample_prints(trained_run: Path, model: charlm.Model) -> None:
    for options in (
        {"seed": 3, "temperature": 0.9},
        {"seed": 4, "top_k": 5},
        {"seed": 5, "top_p": 0.8, "temperature": 1.2},
        {"temperature": 0.0},
    ):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        printed = cli_sample(trained_run, "--prime", "The ", "--length", "80", *flags)
        assert printed == "The " + model.generate("The ", length=80, **options)
    stopped = model.generate("The ", length=300, seed=2, stop=".")
    assert stopped.endswith(".") and stopped.count(".") == 1
    assert cli_sample(trained_run, "-p", "The ", "-n", "300", "-s", "2", "--stop", ".") == (
        "The " + stopped
    )


def test_stream_gives_generate_one_character_at_a_time(model: charlm.Model) -> None:
    stream = model.stream("A ", length=120, seed=9)
    assert not isinstance(stream, str)
    chars = list(stream)
    assert all(len(c) == 1 for c in chars)
    assert "".join(chars) == model.generate("A ", length=120, seed=9)


def test_stream_memory_does_not_grow_with_the_length(model: charlm.Model) -> None:
    def peak(length: int) -> int:
        tracemalloc.start()
        for _ in model.stream("T", length=length, seed=1):
            pass
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    short, long = peak(2_000), peak(40_000)
    assert long < short + 200_000  # 20x the characters: no per-character allocation kept


def test_batch_beam_and_score(trained_run: Path, model: charlm.Model, tmp_path: Path) -> None:
    batch = model.generate_batch("The ", num_samples=3, length=40, seed=7)
    assert [s.text for s in batch][1] == model.generate("The ", length=40, seed=8)
    assert all(s.logprob < 0 for s in batch)
    best = model.beam("The ", width=3, length=20)
    assert cli_sample(trained_run, "-p", "The ", "-n", "20", "--beam", "3") == "The " + best[0].text
    text = "The cat sees the ball.\nA dog likes his hat.\n" * 20
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    scored = model.score(text)
    whole = evaluate_run(trained_run, tmp_path / "t.txt", streams=1)
    assert scored.loss == pytest.approx(whole.loss)
    assert scored.bpc == pytest.approx(scored.loss / 0.6931471805599453)
    assert len(model.vocab) == model.module.vocab_size
    assert model.config.model.hidden_size == 32


def test_bad_arguments_raise_what_the_cli_prints(trained_run: Path, model: charlm.Model) -> None:
    for kwargs, flags in (
        ({"temperature": -1.0}, ["--temperature", "-1"]),
        ({"top_k": 0}, ["--top-k", "0"]),
        ({"length": 0}, ["--length", "0"]),
        ({"unknown": "keep"}, ["--unknown", "keep"]),
    ):
        with pytest.raises(CharlmError) as caught:
            model.generate("The ", **kwargs)
        result = runner.invoke(app, ["sample", str(trained_run), *flags])
        assert result.exit_code == 1
        assert f"error: {caught.value}" in " ".join(result.output.split())
    with pytest.raises(CharlmError, match="not in the model's vocabulary"):
        model.stream("\u2603")  # the prime is checked before the first character is asked for
    with pytest.raises(CharlmError, match="no such run folder"):
        charlm.load(trained_run / "missing")
    (trained_run.parent / "not.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CharlmError, match="not a valid charlm checkpoint"):
        charlm.load(trained_run.parent / "not.safetensors")
    with pytest.raises(CharlmError, match="--device 'tpu'"):
        charlm.load(trained_run, device="tpu")


def test_repr_is_one_line(model: charlm.Model) -> None:
    shown = repr(model)
    assert "\n" not in shown and shown.startswith("<charlm.Model lstm 1x32,")
    assert "step 60" in shown


def test_docs_api_example_runs(trained_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = python_blocks("api.md")[0].replace("runs/demo", str(trained_run))
    exec(compile(example, "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out
    assert printed.startswith("<charlm.Model lstm 1x32") and printed.rstrip().endswith(" 32")


def test_import_stays_light_and_types_ship() -> None:
    code = "import sys, charlm; charlm.load; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False", out.stderr
    assert (ROOT / "charlm" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_prime_file(trained_run: Path, tmp_path: Path) -> None:
    prime = tmp_path / "prime.txt"
    prime.write_bytes(b"The cat\r\nsees ")
    from_file = cli_sample(trained_run, "--prime-file", str(prime), "-n", "40", "-s", "1")
    assert from_file == cli_sample(trained_run, "-p", "The cat\nsees ", "-n", "40", "-s", "1")
    prime.write_text("The \u2603cat", encoding="utf-8")
    refused = runner.invoke(app, ["sample", str(trained_run), "--prime-file", str(prime)])
    assert refused.exit_code == 1 and "not in the model's vocabulary" in refused.output
    skipped = cli_sample(trained_run, "--prime-file", str(prime), "--unknown", "skip", "-n", "5")
    assert skipped.startswith("The \u2603cat")
    for args, message in (
        (["--prime-file", str(tmp_path / "none.txt")], "cannot read it"),
        (["--prime-file", str(prime), "--prime", "x"], "give the prime one way"),
    ):
        result = runner.invoke(app, ["sample", str(trained_run), *args])
        assert result.exit_code == 1 and message in result.output
    prime.write_bytes(b"\xff\xfe bad")
    result = runner.invoke(app, ["sample", str(trained_run), "--prime-file", str(prime)])
    assert result.exit_code == 1 and "not UTF-8" in result.output


def test_a_closed_pipe_ends_sampling_quietly(trained_run: Path) -> None:
    cmd = [sys.executable, "-m", "charlm", "sample", str(trained_run), "-n", "10000000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(200)
    proc.stdout.close()  # as `| head -c 200` does
    code = proc.wait(timeout=120)
    assert len(head) == 200
    assert code == 141 and proc.stderr.read() == b""


def test_ctrl_c_stops_a_long_sample_cleanly(trained_run: Path) -> None:
    cmd = [sys.executable, "-m", "charlm", "sample", str(trained_run), "-n", "10000000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert len(proc.stdout.read(200)) == 200
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and b"Traceback" not in stderr
