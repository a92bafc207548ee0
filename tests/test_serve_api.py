"""`charlm serve` over HTTP on 127.0.0.1, through the official `openai` client and raw sockets."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="charlm serve needs the serve extra")
openai = pytest.importorskip("openai", reason="the API tests use the openai client (dev extra)")

from typer.testing import CliRunner  # noqa: E402

from charlm.checkpoint import load_model  # noqa: E402
from charlm.cli import app  # noqa: E402
from charlm.serving.app import ServeSettings, make_app  # noqa: E402
from charlm.serving.engine import Engine  # noqa: E402
from charlm.serving.protocol import Limits  # noqa: E402
from charlm.serving.server import serve_in_thread  # noqa: E402

KEY = "sesame"


@contextmanager
def server(
    run: Path, api_key: str | None = None, max_batch: int = 16, max_queue: int = 16, **limits: Any
) -> Iterator[tuple[str, Engine]]:
    loaded = load_model(run, "cpu")
    engine = Engine(loaded.model, loaded.vocab, max_batch=max_batch, max_queue=max_queue)
    settings = ServeSettings(
        name="tiny",
        info={"vocab_size": len(loaded.vocab)},
        limits=Limits(max_streams=max_batch, **limits),
        api_key=api_key,
    )
    with serve_in_thread(make_app(engine, settings), engine) as url:
        yield url, engine


@pytest.fixture(scope="module")
def served(trained_run: Path) -> Iterator[tuple[str, Engine]]:
    with server(trained_run, api_key=KEY, max_tokens=200_000) as found:
        yield found


@pytest.fixture
def client(served: tuple[str, Engine]) -> Any:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0, timeout=30)


def cli_sample(run: Path, *args: str) -> str:
    """What `charlm sample` prints (the prime, then the text)."""
    result = CliRunner().invoke(app, ["sample", str(run), "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_completion_is_the_text_charlm_sample_gives_for_its_seed(
    client: Any, trained_run: Path
) -> None:
    got = client.completions.create(model="tiny", prompt="The ", max_tokens=60, seed=3)
    want = cli_sample(trained_run, "--prime", "The ", "--seed", "3", "--length", "60")
    assert "The " + got.choices[0].text == want
    assert got.choices[0].finish_reason == "length"
    assert got.model == "tiny" and got.usage.completion_tokens == 60


def test_a_streamed_completion_arrives_in_chunks_ending_with_the_finish(
    client: Any, trained_run: Path
) -> None:
    chunks = list(
        client.completions.create(
            model="tiny", prompt="A ", max_tokens=80, seed=4, temperature=0.8, stream=True
        )
    )
    text = "".join(c.choices[0].text for c in chunks)
    want = cli_sample(trained_run, "--prime", "A ", "-s", "4", "-n", "80", "-t", "0.8")
    assert "A " + text == want
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_n_choices_and_stop_strings(client: Any, trained_run: Path) -> None:
    got = client.completions.create(model="tiny", prompt="The ", max_tokens=40, seed=8, n=3)
    texts = [c.text for c in sorted(got.choices, key=lambda c: c.index)]
    for i, text in enumerate(texts):
        want = cli_sample(trained_run, "--prime", "The ", "--seed", str(8 + i), "--length", "40")
        assert "The " + text == want
    stop = next(texts[0][i : i + 2] for i in range(3, 38) if texts[0][i : i + 2].strip())
    cut = client.completions.create(model="tiny", prompt="The ", max_tokens=40, seed=8, stop=stop)
    assert cut.choices[0].text == texts[0][: texts[0].index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_bad_fields_raise_the_openai_error_types(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="a", temperature=-2)
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="tiny", prompt="a", max_tokens=0)
    assert "max_tokens" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="a", extra_body={"n": "two"})


def test_the_api_key_is_required_everywhere_but_health(served: tuple[str, Engine]) -> None:
    url = served[0]
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="tiny", prompt="a", max_tokens=3)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, body = http(url, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_models_lists_the_one_model(client: Any) -> None:
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.model_extra["vocab_size"] > 0


def test_bad_bodies_are_4xx_with_an_error_object(served: tuple[str, Engine]) -> None:
    url = served[0]
    for raw, status in [(b"{nope", 400), (b"[1]", 400), (b"x" * (2 << 20), 413)]:
        got, body = http(url, "POST", "/v1/completions", raw)
        assert got == status and "message" in json.loads(body)["error"]
    got, body = http(url, "GET", "/v1/nowhere")
    assert got == 404 and json.loads(body)["error"]["type"] == "not_found_error"


def test_concurrent_streams_share_steps_and_keep_their_seeds_texts(
    served: tuple[str, Engine], trained_run: Path
) -> None:
    url, engine = served
    seeds = list(range(20, 28))
    texts: dict[int, str] = {}

    def one(seed: int) -> None:
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        chunks = c.completions.create(
            model="tiny", prompt="The ", max_tokens=3000, seed=seed, stream=True
        )
        texts[seed] = "".join(chunk.choices[0].text for chunk in chunks)

    before = engine.stats()
    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    after = engine.stats()
    for seed in seeds:
        want = cli_sample(trained_run, "--prime", "The ", "--seed", str(seed), "--length", "3000")
        assert "The " + texts[seed] == want
    chars = after["characters"] - before["characters"]
    steps = after["steps"] - before["steps"]
    assert chars == 3000 * len(seeds)
    assert steps < chars  # streams were stepped together
    assert after["largest_batch"] > 1


def test_a_client_that_disconnects_frees_its_slot(served: tuple[str, Engine]) -> None:
    url, engine = served
    before = engine.stats()["characters"]
    sock = open_stream(url, {"prompt": "a", "max_tokens": 200_000, "stream": True})
    got = b""
    while b"data: " not in got:  # the headers, then the first chunk
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    assert b"data: " in got
    sock.close()
    assert wait_for(lambda: engine.stats()["active"] == 0)
    assert engine.stats()["characters"] - before < 200_000


def test_past_the_queue_requests_get_429(trained_run: Path) -> None:
    with server(trained_run, max_batch=1, max_queue=1, max_tokens=200_000) as (url, engine):
        body = {"prompt": "a", "max_tokens": 200_000, "stream": True}
        held = [open_stream(url, body), open_stream(url, body)]
        assert wait_for(lambda: engine.stats()["active"] + engine.stats()["waiting"] == 2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="tiny", prompt="a", max_tokens=5)
        for sock in held:
            sock.close()
        assert wait_for(lambda: engine.stats()["active"] + engine.stats()["waiting"] == 0)
        got = client.completions.create(model="tiny", prompt="a", max_tokens=5)
        assert len(got.choices[0].text) == 5


def test_serve_without_the_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, trained_run: Path
) -> None:
    for name in ("starlette", "uvicorn"):
        monkeypatch.setitem(sys.modules, name, None)
    result = CliRunner().invoke(app, ["serve", str(trained_run)])
    assert result.exit_code == 1
    assert "pip install -e '.[serve]'" in result.output
    assert "Traceback" not in result.output


def http(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """One plain HTTP/1.1 request, for bodies the openai client would not send."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn.request(method, path, body=body or None, headers=headers)
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    return response.status, text


def open_stream(url: str, body: dict[str, Any]) -> socket.socket:
    """A streamed completion on a raw socket, left for the test to read or drop."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def wait_for(check: Any, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_logprobs_echo_usage_and_beam_through_the_client(client: Any, trained_run: Path) -> None:
    got = client.completions.create(model="tiny", prompt="The ", max_tokens=6, seed=2,
                                    logprobs=2, echo=True)  # fmt: skip
    choice = got.choices[0]
    assert choice.text.startswith("The ") and len(choice.text) == 10
    assert choice.logprobs.tokens == list(choice.text[4:])
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    chunks = list(client.completions.create(model="tiny", prompt="a", max_tokens=7, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage.completion_tokens == 7 and not chunks[-1].choices
    beam = client.completions.create(model="tiny", prompt="The ", max_tokens=12,
                                     extra_body={"beam": 3}, n=2)  # fmt: skip
    want = cli_sample(trained_run, "--prime", "The ", "--beam", "3", "--num-samples", "2",
                      "--length", "12")  # fmt: skip
    assert "The " + beam.choices[0].text == want.split("\n----- sample")[0]
    assert len(beam.choices) == 2
