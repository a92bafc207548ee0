"""`charlm sample --precision auto`: the fastest sampling precision, timed, and only by a margin."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import charlm.stepper as stepper_module
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_ids
from charlm.model import CharLM
from charlm.precision import MIN_SPEEDUP, hardware_bf16, pick_precision
from charlm.sample import beam_search, generate, sample_batch
from charlm.sample_options import SampleOptions
from charlm.stepper import auto_precision
from charlm.vocab import Vocab

VOCAB = Vocab(tuple("\nabcdefg"))
runner = CliRunner()


def tiny_model(cell: str = "gru") -> CharLM:
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=16, num_layers=2)
    return CharLM(config, len(VOCAB)).eval()


@pytest.mark.parametrize(
    ("timings", "expected"),
    [
        ({"fp32": 1.0}, "fp32"),
        ({"fp32": 1.0, "bf16": 0.95}, "fp32"),  # 1.05x: not worth moving the probabilities
        ({"fp32": 1.0, "bf16": 1 / MIN_SPEEDUP}, "bf16"),  # exactly the margin
        ({"fp32": 1.0, "bf16": 0.95, "int8": 0.5}, "int8"),
        ({"fp32": 1.0, "bf16": 0.8, "int8": 0.85}, "bf16"),  # the fastest, not the narrowest
        ({"fp32": 1.0, "bf16": 2.0, "int8": math.inf}, "fp32"),
    ],
)
def test_pick_precision_takes_the_fastest_only_by_a_margin(
    timings: dict[str, float], expected: str
) -> None:
    assert pick_precision(timings) == expected


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_choose_precision_times_what_the_device_runs_and_leaves_the_model_alone(
    cell: str,
) -> None:
    model = tiny_model(cell)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    chosen, timings = auto_precision(model, batch=3)
    assert "fp32" in timings and chosen in timings
    assert all(0 < t < 1 for t in timings.values())  # seconds per step of a 2x16 model
    assert chosen == pick_precision(timings)
    assert set(timings) <= {"fp32", "bf16", "int8"}
    if not hardware_bf16(torch.device("cpu")):
        assert "bf16" not in timings
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_choose_precision_skips_what_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no int8 kernels, int8's stepper fails to build: auto leaves it out rather than fail.
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no int8 kernels in this build")

    monkeypatch.setattr(stepper_module.torch, "quantize_per_channel", refuse)
    chosen, timings = auto_precision(tiny_model("lstm"))
    assert "int8" not in timings and chosen in timings
    # A model the fast path does not read never gets int8.
    _, timings = auto_precision(tiny_model("lstm"), fast=False)
    assert "int8" not in timings


@pytest.mark.parametrize("pick", ["fp32", "int8"])
def test_auto_samples_exactly_as_the_precision_it_picks(
    monkeypatch: pytest.MonkeyPatch, pick: str
) -> None:
    model = tiny_model("lstm")
    batches: list[int] = []

    def fixed(model: object, batch: int = 1, fast: bool = True) -> tuple[str, dict[str, float]]:
        batches.append(batch)
        return pick, {"fp32": 1.0, pick: 0.5}

    monkeypatch.setattr(stepper_module, "auto_precision", fixed)
    auto = sample_batch(
        model, VOCAB, "ab", SampleOptions(length=40, seed=5, num_samples=3, precision="auto")
    )
    named = sample_batch(
        model, VOCAB, "ab", SampleOptions(length=40, seed=5, num_samples=3, precision=pick)
    )
    assert [s.text for s in auto] == [s.text for s in named]
    assert [s.logprob for s in auto] == [s.logprob for s in named]
    one = "".join(generate(model, VOCAB, "ab", SampleOptions(length=40, seed=5, precision="auto")))
    assert one == "".join(
        generate(model, VOCAB, "ab", SampleOptions(length=40, seed=5, precision=pick))
    )
    beams = beam_search(model, VOCAB, "ab", SampleOptions(length=20, beam=4, precision="auto"))
    assert beams == beam_search(
        model, VOCAB, "ab", SampleOptions(length=20, beam=4, precision=pick)
    )
    assert batches == [3, 1, 4]  # timed at the batch each decoder steps


def test_cli_sample_auto_names_its_pick_and_eval_refuses_auto(trained_run: Path) -> None:
    run = str(trained_run)
    done = runner.invoke(
        app, ["sample", run, "-p", "The ", "-n", "50", "-s", "4", "--precision", "auto"]
    )
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("The ") and len(done.stdout) == 4 + 50
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("precision: ")]
    chosen = line.split()[1]
    assert chosen in ("fp32", "bf16", "int8")
    assert "(auto: a step of 1 took " in line and f" in {chosen}" in line
    # The pick's own text: auto adds only the choice.
    named = runner.invoke(
        app, ["sample", run, "-p", "The ", "-n", "50", "-s", "4", "--precision", chosen]
    )
    assert named.stdout == done.stdout
    ids = np.arange(200) % len(VOCAB)
    with pytest.raises(
        CharlmError, match=r"^--precision 'auto': expected one of fp32, bf16, int8$"
    ):
        evaluate_ids(tiny_model(), ids, 2, precision="auto")  # the library refuses it too
    bad = runner.invoke(app, ["eval", run, "--precision", "auto"])
    assert bad.exit_code == 1 and "Traceback" not in bad.stderr
    assert "--precision 'auto': expected one of fp32, bf16, int8" in bad.stderr
    bad = runner.invoke(app, ["sample", run, "--precision", "fastest"])
    assert bad.exit_code == 1
    assert "--precision 'fastest': expected one of fp32, bf16, int8, auto" in bad.stderr
