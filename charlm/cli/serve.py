"""`charlm serve`: a trained model behind an OpenAI-compatible completions endpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from charlm.cli.app import friendly
from charlm.cli.choices import ServeDevice
from charlm.cli.options import PrecisionOption, RunArg, UnknownInPrompts
from charlm.cli.views import err
from charlm.errors import CharlmError, missing_package

if TYPE_CHECKING:
    from charlm.checkpoint import Loaded


Opt = typer.Option
Host = Annotated[
    str, Opt("--host", help="Address to bind; any but loopback is reachable (warned).")
]
Port = Annotated[int, Opt("--port", help="TCP port.")]
MaxBatch = Annotated[int, Opt("--max-batch", help="Streams stepped together, at most.")]
MaxQueue = Annotated[
    int, Opt("--max-queue", help="Streams waiting for a batch slot; past it requests get 429.")
]
ApiKey = Annotated[
    str | None,
    Opt("--api-key", envvar="CHARLM_API_KEY", show_default=False,
        help="Require 'Authorization: Bearer KEY' on every route but /health and the page."),
]  # fmt: skip
MaxTokens = Annotated[int, Opt("--max-tokens", help="Largest max_tokens accepted.")]
MaxPrompt = Annotated[int, Opt("--max-prompt", help="Longest prompt, in characters.")]
MaxBody = Annotated[int, Opt("--max-body", help="Largest request body, in bytes.")]
Timeout = Annotated[
    float, Opt("--timeout", help="Seconds a request may take, queue included; then it is cut.")
]
Device = Annotated[ServeDevice, Opt("--device", help="Where the model runs.")]
Threads = Annotated[
    int | None,
    Opt("--threads", help="CPU threads for the steps (default 1).", show_default=False),
]
Name = Annotated[
    str | None, Opt("--name", help="Model id in responses; default: the run folder's name.")
]


@friendly
def serve(
    run: RunArg,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    max_batch: MaxBatch = 64,
    max_queue: MaxQueue = 256,
    api_key: ApiKey = None,
    max_tokens: MaxTokens = 4096,
    max_prompt: MaxPrompt = 4096,
    max_body: MaxBody = 1 << 20,
    timeout: Timeout = 120.0,
    unknown: UnknownInPrompts = "error",
    precision: PrecisionOption = "fp32",
    device: Device = "cpu",
    threads: Threads = None,
    name: Name = None,
) -> None:
    """Serve a run over HTTP: OpenAI's /v1/completions (streaming too), /v1/models, /health,
    and a playground page at /."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401

        from charlm.serving import app as web
        from charlm.serving import server
    except ImportError:
        raise missing_package("charlm serve", ["starlette", "uvicorn"], "serve") from None
    import torch

    from charlm.checkpoint import load_model
    from charlm.model import check_device
    from charlm.precision import check_precision
    from charlm.sample_setup import check_threads
    from charlm.serving.engine import Engine
    from charlm.serving.protocol import Limits
    from charlm.vocab import check_unknown_policy

    check_numbers(max_batch, max_queue, max_tokens, max_prompt, max_body, timeout, port)
    check_unknown_policy(unknown)
    check_precision(precision)
    check_threads(threads)
    check_device(device, allowed=("cpu", "cuda", "mps"))  # one server, one named device
    torch.set_num_threads(threads or 1)
    loaded = load_model(run, device)
    if precision == "auto":
        from charlm.stepper import auto_precision

        precision = auto_precision(loaded.model, max_batch)[0]
        err.print(f"precision: {precision} (auto, timed at a batch of {max_batch})")
    engine = Engine(loaded.model, loaded.vocab, max_batch, max_queue, precision=precision)
    limits = Limits(max_tokens=max_tokens, max_prompt=max_prompt, max_body=max_body,
                    max_streams=max_batch, timeout_s=timeout, unknown=unknown)  # fmt: skip
    settings = web.ServeSettings(
        name=name or run_name(run), info=model_info(loaded), limits=limits, api_key=api_key
    )
    if not server.is_loopback(host):
        guard = "an API key is required" if api_key else "anyone who can reach it can use it"
        err.print(f"warning: serving on {host}, reachable from other machines; {guard}")
    err.print(f"charlm serve: {settings.name} on http://{host}:{port}/ (Ctrl-C stops)")
    server.run(web.make_app(engine, settings), engine, host, port)


def check_numbers(
    max_batch: int,
    max_queue: int,
    max_tokens: int,
    max_prompt: int,
    max_body: int,
    timeout: float,
    port: int,
) -> None:
    least = {"--max-batch": (max_batch, 1), "--max-queue": (max_queue, 0),
             "--max-tokens": (max_tokens, 1), "--max-prompt": (max_prompt, 1),
             "--max-body": (max_body, 1), "--port": (port, 0)}  # fmt: skip
    for option, (value, low) in least.items():
        if value < low:
            raise CharlmError(f"{option} {value}: expected a whole number >= {low}")
    if port > 65535:
        raise CharlmError(f"--port {port}: expected a port number up to 65535")
    if not timeout > 0:
        raise CharlmError(f"--timeout {timeout}: expected a number of seconds > 0")


def run_name(run: Path) -> str:
    """The run folder's name, also for a checkpoint file inside it (run/checkpoints/x)."""
    path = run.resolve()
    if path.is_file():
        path = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return path.name


def model_info(loaded: Loaded) -> dict[str, Any]:
    """What /v1/models says about the model beyond its name."""
    record = loaded.checkpoint.record
    best = record.get("best_val_loss")
    bpc = best / math.log(2) if best is not None else (record.get("last_val") or {}).get("bpc")
    m = loaded.config.model
    return {
        "vocab_size": len(loaded.vocab),
        "parameters": loaded.model.num_parameters(),
        "val_bpc": bpc,
        "cell": m.cell,
        "layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "step": int(record.get("step", 0)),
    }
