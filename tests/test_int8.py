"""int8 sampling steps (`--precision int8`): close to the fp32 model, clear errors where they
cannot run, and `charlm eval --precision` to measure what they cost a model. (Reproducibility is
tested with bf16's in test_sampling.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlm.cpu.packed as packed
from charlm.cli import app
from charlm.config import ModelConfig
from charlm.cpu.packed import Int8Weight
from charlm.errors import CharlmError
from charlm.evaluate import evaluate_ids, evaluate_run
from charlm.model import CharLM
from charlm.sample import beam_search, generate
from charlm.sample_options import SampleOptions
from charlm.stepper import GRUStepper, LSTMStepper, make_stepper
from charlm.vocab import Vocab

VOCAB = Vocab(tuple("\nabcdefg"))
runner = CliRunner()


def model_with_weights(cell: str, hidden: int = 32, seed: int = 0) -> CharLM:
    """A random model whose weights are large enough for every gate to matter."""
    torch.manual_seed(seed)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=hidden, num_layers=2)
    model = CharLM(config, len(VOCAB)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("batch", [1, 6])
def test_int8_product_is_close_to_fp32_even_at_the_extremes(batch: int) -> None:
    # Inputs at +-1 with weights at the largest int8 value everywhere are the case where 8-bit
    # kernels without 32-bit sums would saturate (Int8Weight picks 7-bit inputs there).
    gen = torch.Generator().manual_seed(0)
    for w in (torch.randn(64, 48, generator=gen), torch.ones(64, 48).mul_(0.5)):
        b = torch.randn(48, generator=gen)
        x = torch.randint(0, 2, (batch, 64), generator=gen).float() * 2 - 1
        got = Int8Weight(w, b).addmm(b, x)
        expected = torch.addmm(b, x, w)
        # Each output sums 64 products; int8 keeps each weight to 1/254 of its column's largest
        # and each input to 1/255 of its range, so the sum stays well within 0.5% of its scale.
        scale = float(w.abs().max()) * 64
        assert float((got - expected).abs().max()) < 0.005 * scale
        assert not torch.equal(got, expected)  # int8 really ran


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_int8_steps_stay_close_to_the_model(cell: str) -> None:
    model = model_with_weights(cell)
    ids = torch.randint(0, len(VOCAB), (4, 60), generator=torch.Generator().manual_seed(1))
    stepper = make_stepper(model, precision="int8")
    assert isinstance(stepper, LSTMStepper if cell == "lstm" else GRUStepper)
    exact = evaluate_ids(model, ids.view(-1).numpy(), streams=4)
    steps = evaluate_ids(model, ids.view(-1).numpy(), streams=4, precision="fp32")
    low = evaluate_ids(model, ids.view(-1).numpy(), streams=4, precision="int8")
    assert steps.loss == pytest.approx(exact.loss, abs=1e-5)  # the fp32 steps are the model
    # Random weights this large make logits of ~5; int8 moves the mean loss by well under 0.2%.
    assert abs(low.loss - exact.loss) < 0.002 * exact.loss
    assert low.loss != steps.loss


def test_int8_costs_a_trained_model_little(trained_run: Path) -> None:
    forward = evaluate_run(trained_run)
    low = evaluate_run(trained_run, precision="int8")
    assert low.chars == forward.chars
    assert abs(low.loss - forward.loss) < 0.01
    assert low.loss != forward.loss


def test_int8_without_the_fast_path_or_the_kernels_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = model_with_weights("lstm")
    with pytest.raises(CharlmError, match=r"^--precision int8: only plain LSTM and GRU models"):
        make_stepper(model, fast=False, precision="int8")

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no int8 kernels in this build\nmore detail")

    monkeypatch.setattr(packed.torch, "quantize_per_channel", refuse)
    with pytest.raises(
        CharlmError,
        match=r"^--precision int8: no int8 kernels in this build; use --precision fp32$",
    ):
        list(generate(model, VOCAB, "a", SampleOptions(length=5, precision="int8")))


def test_cli_sample_and_eval_in_int8(trained_run: Path) -> None:
    run = str(trained_run)
    result = runner.invoke(app, ["sample", run, "-p", "The ", "-n", "60", "-s", "2"])
    low = runner.invoke(
        app, ["sample", run, "-p", "The ", "-n", "60", "-s", "2", "--precision", "int8"]
    )
    assert result.exit_code == 0 and low.exit_code == 0, low.output
    assert low.stdout.startswith("The ") and len(low.stdout) == 4 + 60
    scores = {}
    for args in ([], ["--precision", "fp32"], ["--precision", "int8"]):
        done = runner.invoke(app, ["eval", run, "--json", *args])
        assert done.exit_code == 0, done.output
        scores[tuple(args)] = json.loads(done.stdout)["loss"]
    assert scores[("--precision", "fp32")] == pytest.approx(scores[()], abs=1e-5)
    assert abs(scores[("--precision", "int8")] - scores[()]) < 0.01
    bad = runner.invoke(app, ["eval", run, "--precision", "fp16"])
    assert bad.exit_code == 1 and "Traceback" not in bad.stderr
    assert "--precision 'fp16': expected one of fp32, bf16, int8" in bad.stderr


def test_int8_beam_of_one_is_int8_greedy() -> None:
    # Beam search reorders the int8 steppers' states; with one beam it must follow greedy.
    model = model_with_weights("lstm", seed=3)
    (best,) = beam_search(model, VOCAB, "ab", SampleOptions(length=30, beam=1, precision="int8"))
    greedy = "".join(
        generate(model, VOCAB, "ab", SampleOptions(length=30, temperature=0, precision="int8"))
    )
    assert best.text == greedy
    wide = beam_search(
        model, VOCAB, "ab", SampleOptions(length=30, beam=4, num_samples=4, precision="int8")
    )
    assert wide[0].logprob >= best.logprob - 1e-6  # here the wider beam finds no worse a text
    assert len({s.text for s in wide}) == 4


def test_eval_on_auto_device_scores_int8_on_the_cpu() -> None:
    from charlm.evaluate import eval_device

    assert eval_device("auto", "int8") == "cpu"  # int8 steps exist only on the CPU
    assert eval_device("auto", None) == "auto" and eval_device("auto", "bf16") == "auto"
    assert eval_device("cuda", "int8") == "cuda"  # asked for: refused later with its message
