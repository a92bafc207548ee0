"""The batching engine and the request checks, without a web server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlm.checkpoint import Loaded, load_model
from charlm.sample import generate
from charlm.sample_options import SampleOptions
from charlm.serving.engine import Engine, Inbox, QueueFull, Stream, StreamSpec
from charlm.serving.protocol import KNOWN, ApiError, Limits, encode, parse_completion


@pytest.fixture(scope="module")
def loaded(trained_run: Path) -> Loaded:
    return load_model(trained_run, "cpu")


def alone(loaded: Loaded, prime: str, **options: Any) -> str:
    """What `charlm sample` gives for these options and prime."""
    return "".join(generate(loaded.model, loaded.vocab, prime, SampleOptions(**options)))


def spec(loaded: Loaded, prime: str, length: int, **kw: Any) -> StreamSpec:
    return StreamSpec(prime_ids=encode(loaded.vocab, prime, "error"), max_chars=length, **kw)


async def collect(engine: Engine, specs: list[StreamSpec], delay: float = 0.0) -> list[str]:
    await asyncio.sleep(delay)
    inbox = Inbox()
    streams = engine.submit(specs, inbox)
    texts = [""] * len(streams)
    while not all(s.done for s in streams):
        for s in await inbox.wait():
            texts[s.index] += s.take().text
    for s in streams:
        texts[s.index] += s.take().text
    return texts


def run_engine(engine: Engine, jobs: list[tuple[list[StreamSpec], float]]) -> list[list[str]]:
    async def main() -> list[list[str]]:
        task = asyncio.create_task(engine.run())
        got = await asyncio.gather(*[collect(engine, specs, delay) for specs, delay in jobs])
        engine.stop()
        await task
        return list(got)

    return asyncio.run(main())


CASES = [  # prime, seed, temperature, top_k, top_p, length
    ("The ", 1, 1.0, None, None, 90),
    ("", 2, 0.7, None, None, 41),
    ("A dog", 3, 1.3, 5, None, 70),
    ("The old", 4, 0.9, None, 0.8, 120),
    ("My", 5, 0.0, None, None, 33),
    ("her b", 6, 1.0, 3, 0.9, 64),
]


def test_streams_in_shared_steps_give_the_texts_their_seeds_give_alone(loaded: Loaded) -> None:
    engine = Engine(loaded.model, loaded.vocab, max_batch=4, max_queue=8, slice_s=0.0)
    # Six streams for four slots: two wait in the queue and join mid-flight as others finish.
    jobs = [([spec(loaded, p, n, seed=s, temperature=t, top_k=k, top_p=q)], 0.0)
            for p, s, t, k, q, n in CASES]  # fmt: skip
    got = run_engine(engine, jobs)
    for (p, s, t, k, q, n), (text,) in zip(CASES, got, strict=True):
        assert text == alone(loaded, p, seed=s, temperature=t, top_k=k, top_p=q, length=n)
    stats = engine.stats()
    assert stats["characters"] == sum(case[-1] for case in CASES)
    assert stats["largest_batch"] == 4  # the batch bound held, and streams shared steps
    assert stats["steps"] < stats["characters"]


def test_n_samples_of_one_prompt_are_seed_plus_i(loaded: Loaded) -> None:
    engine = Engine(loaded.model, loaded.vocab, max_batch=8)
    specs = [spec(loaded, "The ", 50, seed=10 + i) for i in range(3)]
    (texts,) = run_engine(engine, [(specs, 0.0)])
    assert texts == [alone(loaded, "The ", seed=10 + i, length=50) for i in range(3)]


def test_a_stop_string_ends_the_stream_and_is_not_in_its_text(loaded: Loaded) -> None:
    full = alone(loaded, "The ", seed=7, length=200)
    stop = next(full[i : i + 2] for i in range(5, len(full) - 1) if full[i : i + 2].strip())
    engine = Engine(loaded.model, loaded.vocab)
    ((text,),) = run_engine(engine, [([spec(loaded, "The ", 200, seed=7, stops=(stop,))], 0.0)])
    assert text == full[: full.index(stop)]


def test_held_back_characters_come_out_when_no_stop_follows(loaded: Loaded) -> None:
    stream = Stream(spec(loaded, "a", 10, stops=("xyz",)), Inbox())
    for char in "abxy":
        stream.accept(char, None)
    assert stream.take().text == "ab"  # "xy" may begin the stop string
    stream.accept("q", None)
    assert stream.take().text == "xyq"
    stream.finish("length")
    assert stream.done and stream.take().text == ""


def test_the_queue_is_bounded_and_withdrawn_streams_leave_it(loaded: Loaded) -> None:
    engine = Engine(loaded.model, loaded.vocab, max_batch=1, max_queue=1)
    first = engine.submit([spec(loaded, "a", 10)], Inbox())
    engine.submit([spec(loaded, "a", 10)], Inbox())
    with pytest.raises(QueueFull):
        engine.submit([spec(loaded, "a", 10)], Inbox())
    engine.withdraw(first)
    assert engine.stats()["waiting"] == 1
    engine.submit([spec(loaded, "a", 10)], Inbox())


def test_a_late_stream_is_cut(loaded: Loaded) -> None:
    engine = Engine(loaded.model, loaded.vocab)
    late = spec(loaded, "a", 100, deadline=time.monotonic() - 1)
    ((text,),) = run_engine(engine, [([late], 0.0)])
    assert text == ""


def test_logprobs_name_the_picked_character_and_the_likeliest(loaded: Loaded) -> None:
    engine = Engine(loaded.model, loaded.vocab)
    inbox = Inbox()
    (stream,) = engine.submit([spec(loaded, "The ", 5, seed=1, logprobs=3)], inbox)

    async def main() -> None:
        task = asyncio.create_task(engine.run())
        while not stream.done:
            await inbox.wait()
        engine.stop()
        await task

    asyncio.run(main())
    piece = stream.take()
    assert piece.text == alone(loaded, "The ", seed=1, length=5)
    for char, (picked, lp, top) in zip(piece.text, piece.logprobs, strict=True):
        assert picked == char and lp <= 0 and len(top) == 3
        assert max(top.values()) >= lp


LIMITS = Limits(max_tokens=100, max_prompt=20, max_streams=4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "a", "temperature": "hot"}, "temperature"),
        ({"prompt": "a", "temperature": -1}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "max_tokens": 101}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a" * 21}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "n": 5}, "n"),
        ({"prompt": ["a", "b"], "n": 3}, "n"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "a", "stop": ""}, "stop"),
        ({"prompt": "a", "logprobs": 99}, "logprobs"),
        ({"prompt": "a", "beam": 2, "temperature": 1}, "temperature"),
        ({"prompt": "a", "beam": 2, "n": 3}, "n"),
        ({"prompt": "a", "presence_penalty": 1}, "presence_penalty"),
        ({"prompt": "a", "suffix": "x"}, "suffix"),
        ({"prompt": "\u2603"}, "prompt"),
    ],
)
def test_bad_fields_are_400s_naming_the_field(
    loaded: Loaded, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion(body, loaded.vocab, LIMITS)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] == param
    assert param in str(caught.value)


def test_a_request_becomes_one_spec_per_choice(loaded: Loaded) -> None:
    body = {"prompt": ["ab", "The"], "n": 2, "seed": 5, "stop": "\n", "max_tokens": 9}
    c = parse_completion(body, loaded.vocab, LIMITS)
    assert [s.seed for s in c.specs] == [5, 6, 5, 6]
    assert c.specs[2].prime_ids == encode(loaded.vocab, "The", "error")
    assert all(s.max_chars == 9 and s.stops == ("\n",) for s in c.specs)
    skip = Limits(unknown="skip")
    assert parse_completion({"prompt": "a\u2603"}, loaded.vocab, skip).specs[0].prime_ids == (
        encode(loaded.vocab, "a", "error")
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(KNOWN)), JSON, max_size=6))
def test_any_body_is_a_completion_or_a_4xx(loaded: Loaded, body: dict[str, Any]) -> None:
    try:
        parse_completion(body, loaded.vocab, Limits(unknown="skip"))
    except ApiError as e:
        assert 400 <= e.status < 500 and str(e)
