"""Decoding beyond the basics: nucleus/top-k sets, Gumbel draws, beam search, stop strings,
batched-equals-single, log-likelihoods, the fast steppers, and the sample CLI's new options."""

from __future__ import annotations

import io
import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typer.testing import CliRunner

from charlm.cli import app
from charlm.cli.sample import prompt_loop
from charlm.config import ModelConfig
from charlm.errors import CharlmError
from charlm.model import CharLM
from charlm.sample import (
    beam_search,
    decode,
    filter_logits,
    generate,
    generate_batch,
    sample_batch,
)
from charlm.sample_options import SampleOptions, parse_stops
from charlm.sample_setup import resolve_precision, sampling_threads
from charlm.stepper import (
    TANH_BY_SIGMOID,
    GRUStepper,
    LSTMStepper,
    ModelStepper,
    make_stepper,
)
from charlm.vocab import Vocab

VOCAB = Vocab(tuple("\nabcdefg"))


class TableModel(nn.Module):
    """A stand-in with the CharLM interface: logits depend only on the last id (a Markov chain).

    The state is the one-hot of the last id, shaped [1, batch, vocab] like a one-layer RNN's.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, ids: torch.Tensor, state: object = None) -> tuple[torch.Tensor, tuple]:
        last = nn.functional.one_hot(ids[:, -1], self.table.shape[0]).float()
        return self.table[ids], (last.unsqueeze(0),)


def fixed_model(logits: list[float]) -> TableModel:
    """The same next-character logits after every character."""
    return TableModel(torch.tensor([logits] * len(logits)))


def random_model(cell: str, layers: int = 2, seed: int = 0) -> CharLM:
    torch.manual_seed(seed)
    model = CharLM(ModelConfig(cell=cell, embedding_dim=8, hidden_size=16, num_layers=layers), 8)
    return model.eval()


# ------------------------------------------------------------------------ top-k, top-p, Gumbel
CRAFTED = [3.0, 2.6, 2.2, 1.0, 0.5, 0.0, -1.0, -2.0]


def nucleus(logits: list[float], top_p: float) -> set[int]:
    """The smallest set of likeliest ids with at least top_p mass, computed independently."""
    weights = [math.exp(x) for x in logits]
    probs = [w / sum(weights) for w in weights]
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        kept.add(i)
        mass += probs[i]
        if mass >= top_p:
            return kept
    return kept


@pytest.mark.parametrize(("top_k", "top_p"), [(3, None), (None, 0.8), (5, 0.6), (1, None)])
def test_top_k_top_p_samples_stay_in_the_kept_set(top_k: int | None, top_p: float | None) -> None:
    temperature = 3.0  # flattens the distribution, so a leaky filter would show at once
    logits = CRAFTED[:-1]  # for ids 1..7; id 0 (the newline) gets -1e9 and is never drawn
    kept = nucleus([x / temperature for x in logits], top_p or 1.0)  # filters act after T
    if top_k is not None:
        kept &= set(range(top_k))
    model = fixed_model([-1e9, *logits])
    text = "".join(
        generate(
            model,
            VOCAB,
            "",
            SampleOptions(length=3000, temperature=temperature, top_k=top_k, top_p=top_p, seed=1),
        )
    )
    emitted = {VOCAB.chars.index(c) - 1 for c in text}
    assert emitted == kept
    assert len(kept) < len(logits)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=2, max_size=30, unique=True),
    st.integers(1, 30),
    st.floats(0.01, 1.0),
)
def test_filter_logits_keeps_exactly_the_defined_sets(
    values: list[float], top_k: int, top_p: float
) -> None:
    logits = torch.tensor([values], dtype=torch.float64)
    kept_k = ~torch.isinf(filter_logits(logits, top_k, None))[0]
    assert int(kept_k.sum()) == min(top_k, len(values))
    assert logits[0][kept_k].min() >= logits[0][~kept_k].max() if (~kept_k).any() else True
    kept_p = ~torch.isinf(filter_logits(logits, None, top_p))[0]
    probs = torch.softmax(logits[0], -1)
    mass = float(probs[kept_p].sum())
    assert mass >= top_p - 1e-9
    if top_p == 1.0:  # keeps everything, even ids whose mass rounds away next to 1
        assert bool(kept_p.all())
    else:
        assert mass - float(probs[kept_p].min()) < top_p  # dropping any kept id falls short


def test_gumbel_draws_follow_the_softmax() -> None:
    logits = [0.0, 1.0, 0.2, -0.5, 0.7, -1.0, 0.3, 0.0]
    model = fixed_model(logits)
    n = 6000
    text = "".join(generate(model, VOCAB, "", SampleOptions(length=n, temperature=0.8, seed=7)))
    probs = torch.softmax(torch.tensor(logits) / 0.8, -1).tolist()
    for i, p in enumerate(probs):
        freq = text.count(VOCAB.chars[i]) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (i, freq, p)


# ------------------------------------------------------------------------------- beam search
def test_beam_finds_the_best_sequence_greedy_misses() -> None:
    # After the start (\n): a 0.6, b 0.4. After a: a uniform next character. After b: c ~0.99.
    v = len(VOCAB)
    table = torch.full((v, v), -1e9)
    table[0, 1], table[0, 2] = math.log(0.6), math.log(0.4)
    table[1, 1:] = 0.0
    table[2:, :] = -20.0
    table[2:, 3] = 0.0
    model = TableModel(table)
    greedy = "".join(generate(model, VOCAB, "", SampleOptions(length=2, temperature=0)))
    assert greedy[0] == "a"
    (best,) = beam_search(model, VOCAB, "", SampleOptions(length=2, beam=2))
    assert best.text == "bc"
    assert best.logprob == pytest.approx(math.log(0.4) + math.log(0.99999), abs=1e-4)
    two = beam_search(model, VOCAB, "", SampleOptions(length=2, beam=2, num_samples=2))
    assert two[0].text == "bc" and two[1].text.startswith("a")
    assert two[0].logprob > two[1].logprob


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_of_one_is_greedy(cell: str) -> None:
    model = random_model(cell)
    greedy = "".join(generate(model, VOCAB, "ab", SampleOptions(length=60, temperature=0)))
    (one,) = beam_search(model, VOCAB, "ab", SampleOptions(length=60, beam=1))
    assert one.text == greedy
    wide = beam_search(model, VOCAB, "ab", SampleOptions(length=60, beam=4))[0]
    # A wider beam never does worse here; the slack is float32's: a product over 4 rows and
    # one over 1 row may round differently.
    assert wide.logprob >= one.logprob - 1e-5


def test_beam_with_stop_ranks_by_log_likelihood_per_character() -> None:
    model = random_model("lstm", seed=3)
    found = beam_search(
        model, VOCAB, "a", SampleOptions(length=40, beam=4, num_samples=4, stops=["c"])
    )
    scores = [s.logprob / s.chars for s in found]
    assert scores == sorted(scores, reverse=True)
    for s in found:
        assert s.stop is None or (s.text.endswith("c") and s.text.count("c") == 1)


def test_beam_rejects_sampling_options() -> None:
    model = random_model("lstm")
    with pytest.raises(CharlmError, match="--num-samples 3 with --beam 2"):
        beam_search(model, VOCAB, "", SampleOptions(length=5, beam=2, num_samples=3))
    with pytest.raises(CharlmError, match="--beam 0"):
        beam_search(model, VOCAB, "", SampleOptions(length=5, beam=0))


# ------------------------------------------------------------------------------ stop strings
def test_parse_stops_understands_escapes() -> None:
    assert parse_stops(["\\n", "a\\tb", "\\\\n", "x\\q"]) == ("\n", "a\tb", "\\n", "x\\q")
    with pytest.raises(CharlmError, match="--stop"):
        parse_stops([""])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stop_strings_cut_exactly_after_the_first_match(seed: int) -> None:
    model = random_model("gru", seed=seed)
    full = "".join(generate(model, VOCAB, "a", SampleOptions(length=300, seed=seed)))
    stops = ["ab", "\n", "gg"]
    cut = min((full.find(s) + len(s) for s in stops if s in full), default=len(full))
    stopped = "".join(
        generate(model, VOCAB, "a", SampleOptions(length=300, seed=seed, stops=stops))
    )
    assert stopped == full[:cut]
    never = "".join(generate(model, VOCAB, "a", SampleOptions(length=300, seed=seed, stops=["zz"])))
    assert never == full  # a stop that never appears: exactly --length characters


def test_stops_end_each_batched_sample_on_its_own() -> None:
    model = random_model("lstm", seed=4)
    samples = sample_batch(
        model, VOCAB, "b", SampleOptions(length=200, seed=11, num_samples=5, stops=["e"])
    )
    for s in samples:
        assert (s.stop == "e") == s.text.endswith("e")
        assert "e" not in s.text[:-1]
    rows = list(
        generate_batch(
            model, VOCAB, "b", SampleOptions(length=200, seed=11, num_samples=5, stops=["e"])
        )
    )
    assert ["".join(col) for col in zip(*rows, strict=True)] == [s.text for s in samples]


# ----------------------------------------------------------------- batches, seeds, likelihoods
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_batched_samples_equal_single_samples_seeded_seed_plus_i(cell: str) -> None:
    model = random_model(cell)
    batch = sample_batch(
        model,
        VOCAB,
        "ca",
        SampleOptions(length=120, temperature=0.9, top_k=6, seed=40, num_samples=4),
    )
    for i, s in enumerate(batch):
        (alone,) = sample_batch(
            model, VOCAB, "ca", SampleOptions(length=120, temperature=0.9, top_k=6, seed=40 + i)
        )
        assert s.text == alone.text
        assert s.logprob == pytest.approx(alone.logprob, rel=1e-5)
    assert len({s.text for s in batch}) == 4


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, None), (0.5, 0.9), (0.0, None)])
def test_logprob_is_the_unmodified_model_likelihood(temperature: float, top_p: float) -> None:
    model = random_model("lstm", seed=5)
    (s,) = sample_batch(
        model, VOCAB, "fa", SampleOptions(length=50, temperature=temperature, top_p=top_p, seed=2)
    )
    ids = torch.from_numpy(VOCAB.encode("fa" + s.text).astype("int64"))[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0][0, 1:-1].double(), -1)
    expected = logp.gather(1, ids[0, 2:, None]).sum().item()
    assert s.logprob == pytest.approx(expected, abs=1e-4)
    assert s.logprob_per_char == pytest.approx(expected / 50, abs=1e-5)


# ----------------------------------------------------------------------------- fast steppers
def run_steps(stepper: Any, ids: torch.Tensor, prime: int) -> tuple[torch.Tensor, Any]:
    """Logits [batch, time - prime + 1, vocab] after the prime and each later id, and the state."""
    with torch.no_grad():
        logits, state = stepper.start(ids[:, :prime])
        steps = [logits]
        for t in range(prime, ids.shape[1]):
            logits, state = stepper.step(ids[:, t], state)
            steps.append(logits)
    return torch.stack(steps, 1), state


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(
    ("layers", "hidden", "batch"), [(1, 16, 5), (3, 16, 5), (2, 16, 1), (2, 128, 40)]
)
def test_fast_step_matches_the_model_forward(
    cell: str, layers: int, hidden: int, batch: int
) -> None:
    torch.manual_seed(layers)
    config = ModelConfig(cell=cell, embedding_dim=8, hidden_size=hidden, num_layers=layers)
    model = CharLM(config, 8).eval()
    with torch.no_grad():  # biases are zero-ish at init; make every term matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    stepper = make_stepper(model)
    assert isinstance(stepper, LSTMStepper if cell == "lstm" else GRUStepper)
    # The wide case computes tanh through sigmoid (charlm.stepper.TANH_BY_SIGMOID).
    assert (batch * hidden >= TANH_BY_SIGMOID) == (hidden == 128)
    ids = torch.randint(0, 8, (batch, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, final = model(ids)
    steps, state = run_steps(stepper, ids, 7)
    tol = 1e-5 if hidden == 16 else 1e-4  # logits reach ~8 in the wide case: fp32 rounds further
    torch.testing.assert_close(steps, expected[:, 6:], rtol=1e-5, atol=tol)
    for mine, theirs in zip(stepper.to_model_state(state), final, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_fast_step_depends_only_on_its_ids_and_state(cell: str) -> None:
    # The steppers keep scratch buffers per batch size (charlm.stepper); no returned state may
    # share memory with them, so an old state stepped again, after steps at other batch sizes,
    # gives what it gave the first time.
    model = random_model(cell, 2, seed=5)
    stepper = make_stepper(model)
    with torch.no_grad():
        _, one = stepper.start(torch.tensor([[1, 2]]))
        kept = stepper.step(torch.tensor([3]), one)
        first = [t.clone() for t in (kept[0], *kept[1])]
        _, five = stepper.start(torch.tensor([[1, 2]] * 5))
        state = kept[1]
        for t in range(3):
            _, five = stepper.step(torch.tensor([t] * 5), five)
            _, state = stepper.step(torch.tensor([t]), state)
        for kept_then, expected in zip((kept[0], *kept[1]), first, strict=True):
            torch.testing.assert_close(kept_then, expected, rtol=0, atol=0)
        again = stepper.step(torch.tensor([3]), one)
    for again_now, expected in zip((again[0], *again[1]), first, strict=True):
        torch.testing.assert_close(again_now, expected, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("fast", [True, False])
def test_bf16_steps_stay_close_to_the_fp32_model(cell: str, fast: bool) -> None:
    model = random_model(cell, 2, seed=4)
    stepper = make_stepper(model, fast=fast, precision="bf16")
    assert isinstance(stepper, (LSTMStepper, GRUStepper) if fast else ModelStepper)
    ids = torch.randint(0, 8, (5, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, _ = model(ids)
    got, _ = run_steps(stepper, ids, 7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected[:, 6:], rtol=0.03, atol=0.03)
    assert not torch.allclose(got, expected[:, 6:], rtol=1e-5, atol=1e-5)  # bf16 really ran


@pytest.mark.parametrize(("precision", "cell"), [("bf16", "lstm"), ("int8", "gru")])
def test_low_precision_sampling_is_reproducible(precision: str, cell: str) -> None:
    model = random_model(cell, seed=6)
    one = sample_batch(
        model, VOCAB, "ab", SampleOptions(length=40, seed=3, num_samples=3, precision=precision)
    )
    two = sample_batch(
        model, VOCAB, "ab", SampleOptions(length=40, seed=3, num_samples=3, precision=precision)
    )
    assert [s.text for s in one] == [s.text for s in two]
    assert all(len(s.text) == 40 for s in one)
    single = "".join(
        generate(model, VOCAB, "ab", SampleOptions(length=40, seed=4, precision=precision))
    )
    assert single == one[1].text  # sample i of a batch is seed + i alone, in any precision


def test_bad_precisions_are_refused() -> None:
    model = random_model("lstm", seed=6)
    with pytest.raises(CharlmError, match=r"--precision 'fp16': expected one of fp32, bf16"):
        list(generate(model, VOCAB, "a", SampleOptions(length=5, precision="fp16")))
    with pytest.raises(CharlmError, match=r"--precision .int4."):
        beam_search(model, VOCAB, "a", SampleOptions(length=5, precision="int4"))


def test_a_model_that_cannot_run_in_bf16_is_a_clear_error() -> None:
    model = random_model("lstm")
    real = model.forward

    def forward(ids: torch.Tensor, state: Any = None) -> Any:
        if torch.is_autocast_enabled("cpu"):  # as a fused kernel without a bf16 version does
            raise RuntimeError("no bf16 kernel for this layer\ndetails")
        return real(ids, state)

    model.forward = forward  # type: ignore[method-assign]
    stepper = make_stepper(model, fast=False, precision="bf16")
    with pytest.raises(
        CharlmError,
        match=r"^--precision bf16: this model does not run in bf16 on "
        r"cpu \(no bf16 kernel for this layer\); use --precision fp32$",
    ):
        stepper.start(torch.zeros(1, 3, dtype=torch.long))


def test_unknown_layouts_fall_back_to_calling_the_model() -> None:
    assert isinstance(make_stepper(fixed_model(CRAFTED)), ModelStepper)
    assert isinstance(make_stepper(random_model("lstm"), fast=False), ModelStepper)
    model = random_model("gru")
    fast = "".join(generate(model, VOCAB, "g", SampleOptions(length=80, seed=9)))
    model.config = replace(model.config, cell="some-new-cell")  # the fast path must not guess
    assert isinstance(make_stepper(model), ModelStepper)
    assert "".join(generate(model, VOCAB, "g", SampleOptions(length=80, seed=9))) == fast


# ------------------------------------------------------------- options, decoder, precision, threads
@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"length": 0}, "--length 0"),
        ({"temperature": -1.0}, "--temperature -1.0"),
        ({"top_k": 0}, "--top-k 0"),
        ({"top_p": 0.0}, "--top-p 0.0"),
        ({"num_samples": 0}, "--num-samples 0"),
        ({"stops": ["a", ""]}, "--stop ''"),
        ({"precision": "fp16"}, "--precision 'fp16'"),
        ({"beam": 2, "temperature": 0.5, "top_p": 0.9}, "drop --temperature, --top-p"),
        ({"beam": 0}, "--beam 0"),
    ],
)
def test_sample_options_refuse_what_no_decoder_accepts(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(CharlmError, match=re.escape(words)):
        SampleOptions(**fields)


def test_sample_options_are_one_frozen_value() -> None:
    options = SampleOptions(length=5, stops=["\n"], num_samples=3)
    assert options.stops == ("\n",) and hash(options) == hash(SampleOptions(**vars(options)))
    assert options.batch == 3 and SampleOptions(beam=4, num_samples=2).batch == 4
    with pytest.raises(AttributeError):
        options.length = 6  # type: ignore[misc]
    with pytest.raises(CharlmError, match="--length 0"):
        replace(options, length=0)  # a changed copy is checked again


def test_decode_runs_the_decoder_the_options_call_for() -> None:
    model = random_model("lstm", seed=2)
    beam = SampleOptions(length=12, beam=3, num_samples=2)
    assert decode(model, VOCAB, "ab", beam) == beam_search(model, VOCAB, "ab", beam)
    sampled = SampleOptions(length=12, seed=4, num_samples=2)
    scored = decode(model, VOCAB, "ab", sampled, scored=True)
    assert scored == sample_batch(model, VOCAB, "ab", sampled)
    rows = decode(model, VOCAB, "ab", sampled)
    assert not isinstance(rows, list)  # rows come as they are decoded
    assert ["".join(c) for c in zip(*rows, strict=True)] == [s.text for s in scored]
    with pytest.raises(CharlmError, match="--prime"):
        decode(model, VOCAB, "ab\u2603", sampled)  # a bad prime is refused before any step


def test_each_decoder_takes_only_its_own_options() -> None:
    model = random_model("gru")
    with pytest.raises(ValueError, match=r"options\.beam"):
        beam_search(model, VOCAB, "a", SampleOptions(length=3))
    with pytest.raises(ValueError, match="beam_search"):
        sample_batch(model, VOCAB, "a", SampleOptions(length=3, beam=2))
    with pytest.raises(ValueError, match="generate_batch"):
        list(generate(model, VOCAB, "a", SampleOptions(length=3, num_samples=2)))


def test_resolve_precision_times_auto_once_at_the_decoders_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import charlm.stepper as stepper_module

    model = random_model("lstm")
    batches: list[int] = []

    def fixed(model: object, batch: int = 1) -> tuple[str, dict[str, float]]:
        batches.append(batch)
        return "int8", {"fp32": 1.0, "int8": 0.5}

    monkeypatch.setattr(stepper_module, "auto_precision", fixed)
    named = SampleOptions(precision="bf16", num_samples=2)
    assert resolve_precision(model, named) == (named, {})
    options, timings = resolve_precision(model, SampleOptions(precision="auto", num_samples=3))
    assert options == SampleOptions(precision="int8", num_samples=3) and timings["int8"] == 0.5
    resolve_precision(model, SampleOptions(precision="auto", beam=5))
    assert batches == [3, 5]


@pytest.mark.parametrize(
    ("fields", "threads", "inside"),
    [({}, None, 1), ({"beam": 2}, None, 1), ({"num_samples": 2}, None, 3), ({}, 2, 2)],
)
def test_sampling_threads_policy_is_put_back(
    fields: dict[str, Any], threads: int | None, inside: int
) -> None:
    # One thread for a single sample on the CPU, torch's own for several, `threads` over both.
    model = random_model("lstm")
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with sampling_threads(model, SampleOptions(**fields), threads):
            assert torch.get_num_threads() == inside
        assert torch.get_num_threads() == 3
        with (
            pytest.raises(CharlmError, match="--threads 0"),
            sampling_threads(model, SampleOptions(), 0),
        ):
            pass
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------- the CLI
runner = CliRunner()


def test_cli_stop_json_and_contract(trained_run: Path) -> None:
    run = str(trained_run)
    threads = torch.get_num_threads()
    plain_args = ["sample", run, "-p", "The ", "-n", "150", "-s", "3"]
    plain = runner.invoke(app, plain_args)
    assert plain.exit_code == 0 and plain.stdout.startswith("The ")
    assert len(plain.stdout) == 4 + 150
    stopped = runner.invoke(app, [*plain_args, "--stop", "\\n"])
    assert stopped.exit_code == 0
    cut = plain.stdout.index("\n", 4) + 1 if "\n" in plain.stdout[4:] else len(plain.stdout)
    assert stopped.stdout == plain.stdout[:cut]
    js = runner.invoke(app, ["sample", run, "-n", "40", "-s", "3", "--num-samples", "3", "--json"])
    assert js.exit_code == 0
    lines = [json.loads(line) for line in js.stdout.splitlines()]
    assert [d["sample"] for d in lines] == [1, 2, 3]
    for d in lines:
        assert d["chars"] == len(d["text"]) == 40 and d["stop"] is None
        assert d["logprob"] < 0 and d["logprob_per_char"] == pytest.approx(d["logprob"] / 40)
    beams = runner.invoke(app, ["sample", run, "-n", "20", "--beam", "3", "--num-samples", "2"])
    assert beams.exit_code == 0 and "----- sample 2 of 2 -----" in beams.stdout
    low = runner.invoke(app, [*plain_args, "--precision", "bf16", "--json"])
    assert low.exit_code == 0
    (record,) = [json.loads(line) for line in low.stdout.splitlines()]
    assert record["chars"] == len(record["text"]) == 150 and record["logprob"] < 0
    assert torch.get_num_threads() == threads  # the one-thread setting does not leak


@pytest.mark.parametrize(
    ("args", "threads"), [([], 1), (["--threads", "2"], 2), (["--num-samples", "2"], 3)]
)
def test_cli_sampling_threads(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], threads: int
) -> None:
    # One thread for a single sample unless --threads says otherwise; batches keep what torch
    # had (3 here, set for the test); the setting is put back afterwards.
    import charlm.sample as sample_module

    seen: list[int] = []
    real = sample_module.make_stepper

    def spy(*a: Any, **k: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(sample_module, "make_stepper", spy)
    torch.set_num_threads(3)
    result = runner.invoke(
        app, ["sample", str(trained_run), "--device", "cpu", "-n", "20", "-s", "1", *args]
    )
    assert result.exit_code == 0, result.output
    assert seen == [threads]
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--beam", "2", "-t", "0.5"], "drop --temperature"),
        (["--beam", "2", "--top-k", "3", "--top-p", "0.5"], "drop --top-k, --top-p"),
        (["--beam", "2", "--num-samples", "3"], "--num-samples <= --beam"),
        (["--stop", ""], "--stop"),
        (["--interactive", "--prime", "x"], "--prime with --interactive"),
        (["--precision", "fp16"], "--precision 'fp16': expected one of fp32, bf16"),
    ],
)
def test_cli_rejects_bad_combinations(trained_run: Path, args: list[str], words: str) -> None:
    result = runner.invoke(app, ["sample", str(trained_run), *args])
    assert result.exit_code == 1 and result.stdout == ""
    assert words in result.stderr and "Traceback" not in result.stderr


def test_cli_interactive_reads_primes_until_end_of_input(trained_run: Path) -> None:
    args = ["sample", str(trained_run), "--interactive", "-n", "25", "-s", "5"]
    result = runner.invoke(app, args, input="The \n\u2603\nA \nThe \n")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.split("\n")
    assert len(lines) >= 4 and lines[-1] == ""  # every answer ends with a newline
    answers = (
        [
            "".join(generate(load.model, load.vocab, p, SampleOptions(length=25, seed=5)))
            for p in ("The ", "A ", "The ")
        ]
        if (load := _load(trained_run))
        else []
    )
    assert result.stdout == "".join(a + "\n" for a in answers)
    assert "not in the model's vocabulary" in result.stderr  # the snowman line, then it goes on


def _load(run: Path) -> Any:
    from charlm.checkpoint import load_model

    return load_model(run, "cpu")


def test_interactive_ends_cleanly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    class Interrupting(io.StringIO):
        def readline(self, *args: object) -> str:
            raise KeyboardInterrupt

    calls: list[str] = []
    monkeypatch.setattr(sys, "stdin", Interrupting())
    prompt_loop(lambda prime, echo_prime: calls.append(prime))  # returns: no exception
    assert calls == []


def test_time_steps_times_each_stepper_and_leaves_out_what_cannot_run() -> None:
    from charlm.precision import time_steps
    from charlm.stepper import make_stepper

    model = random_model("lstm")
    cpu = torch.device("cpu")

    def refused() -> Any:
        raise CharlmError("no such stepper here")

    timings = time_steps(
        {
            "fast": (cpu, lambda: make_stepper(model, True, "fp32", 2)),
            "generic": (cpu, lambda: make_stepper(model, False, "fp32", 2)),
            "refused": (cpu, refused),
        },
        batch=2,
        budget_s=0.0,
    )
    assert set(timings) == {"fast", "generic"}
    assert all(0 < seconds < 1 for seconds in timings.values())


def test_sampling_on_a_machine_without_a_gpu_stays_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from charlm.sample_setup import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    model = random_model("gru")
    chosen, timings = choose_device(model, SampleOptions(num_samples=4))
    assert chosen is model and timings == {}


def test_cli_device_auto_names_the_timed_pick(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import charlm.sample_setup as setup_module

    batches: list[int] = []

    def timed(model: nn.Module, options: SampleOptions) -> tuple[nn.Module, dict[str, float]]:
        batches.append(options.batch)
        assert next(model.parameters()).device.type == "cpu"  # loaded on the CPU to be timed
        return model, {"cpu": 1.2e-4, "cuda": 3.4e-4}

    monkeypatch.setattr(setup_module, "choose_device", timed)
    auto = runner.invoke(app, ["sample", str(trained_run), "-n", "30", "-s", "4"])
    assert auto.exit_code == 0, auto.output
    assert "device: cpu (auto: a step of 1 took 120 us on cpu, 340 us on cuda)" in auto.stderr
    pinned = runner.invoke(
        app, ["sample", str(trained_run), "--device", "cpu", "-n", "30", "-s", "4"]
    )
    assert pinned.stdout == auto.stdout and "device:" not in pinned.stderr
    assert batches == [1]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_beam_without_stops_stays_on_the_device_and_finds_the_same_beams(cell: str) -> None:
    """Without stop strings the beam keeps back-pointers and reads them once at the end; a stop
    string that never occurs sends the same search through the stepwise path: same result."""
    model = random_model(cell)
    for beam, n in ((1, 1), (4, 4), (7, 3)):
        fast = beam_search(model, VOCAB, "ab", SampleOptions(length=25, beam=beam, num_samples=n))
        stepwise = beam_search(
            model,
            VOCAB,
            "ab",
            SampleOptions(length=25, beam=beam, num_samples=n, stops=("never here",)),
        )
        assert [s.text for s in fast] == [s.text for s in stepwise]
        assert [s.logprob for s in fast] == pytest.approx([s.logprob for s in stepwise], rel=1e-12)
        assert len(fast) == n and all(len(s.text) == 25 for s in fast)
