"""The `charlm` command: a thin Typer layer over the library.

Each command parses its options, calls one library function and shows the result. Library imports
happen inside the commands, so `charlm --help` never loads torch. A `CharlmError` becomes one line
on stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from charlm import __version__
from charlm.errors import CharlmError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="Train, sample and evaluate character-level LSTM and GRU language models.",
)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line to stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True, highlight=False)
    return typer.Exit(code)


def friendly(fn: F) -> F:
    """Turn a CharlmError raised anywhere below a command into one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            from rich.markup import escape

            raise fail(escape(str(e))) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Train, sample and evaluate character-level LSTM and GRU language models."""


def split_train_args(args: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] [KEY=VALUE ...]: the one argument without '=' is the config file."""
    configs = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    if len(configs) > 1:
        raise CharlmError(
            f"expected at most one CONFIG file, got {', '.join(configs)}; "
            f"overrides look like KEY=VALUE"
        )
    return (configs[0] if configs else None), overrides


# ------------------------------------------------------------------------------------- train
@app.command()
@friendly
def train(
    args: list[str] = typer.Argument(
        None,
        metavar="[CONFIG] [KEY=VALUE]...",
        help="A YAML config (built-in defaults without one), then dotted overrides, "
        "e.g. train.lr=3e-4 model.cell=gru.",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: runs/<config>-<time>)."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Plain log lines instead of a progress bar."
    ),
) -> None:
    """Train a model; the run folder gets config.yaml, metrics.jsonl and checkpoints/."""
    from charlm.config import load_config
    from charlm.runs import default_run_dir
    from charlm.train import train as run_training

    config_path, overrides = split_train_args(args or [])
    config = load_config(config_path, overrides)
    run_dir = out if out is not None else default_run_dir(config_path)
    show = ProgressView(plain=quiet or not err.is_terminal)
    with show:
        result = run_training(config, run_dir, on_event=show.handle)
    table = Table(title="charlm train", show_header=False, title_justify="left")
    table.add_row("run folder", str(result.run_dir))
    table.add_row("steps", f"{result.steps:,}")
    table.add_row("time", f"{result.elapsed_s:.1f} s")
    table.add_row("chars/s", f"{result.chars_per_s:,.0f}")
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("final val bpc", f"{result.final_val.bpc:.4f} (loss {result.final_val.loss:.4f})")
    table.add_row("best val bpc", f"{result.best_val_bpc:.4f} at step {result.best_step:,}")
    table.add_row("next", f"charlm sample {result.run_dir}")
    err.print(table)


class ProgressView:
    """Shows training events: a Rich progress bar on a terminal, plain lines otherwise."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.progress: Any = None
        self.task: Any = None
        self.max_steps: int | None = None
        self.max_time: float | None = None
        self.last_bpc = "-"

    def __enter__(self) -> ProgressView:
        if not self.plain:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.max_steps, self.max_time = event["max_steps"], event["max_time"]
            line = (
                f"run {event['run_dir']} | {event['device']} | {event['parameters']:,} parameters"
                f" | vocab {event['vocab_size']} | train {event['train_chars']:,} chars"
                f" | val {event['val_chars']:,} chars"
            )
            err.print(line, markup=False)
            if self.progress is not None:
                self.task = self.progress.add_task("train", total=1000, status="starting")
        elif kind == "log":
            if "val_bpc" in event:
                self.last_bpc = f"{event['val_bpc']:.3f}"
            train_loss = event.get("train_loss")
            status = (
                f"step {event['step']:,}"
                + (f" | loss {train_loss:.3f}" if train_loss is not None else "")
                + f" | val bpc {self.last_bpc}"
                + (f" | {event['chars_per_s']:,.0f} chars/s" if "chars_per_s" in event else "")
            )
            if self.progress is not None:
                fractions = [0.0]
                if self.max_steps:
                    fractions.append(event["step"] / self.max_steps)
                if self.max_time:
                    fractions.append(event["elapsed_s"] / self.max_time)
                self.progress.update(
                    self.task, completed=1000 * min(1.0, max(fractions)), status=status
                )
            else:
                err.print(f"{status} | {event['elapsed_s']:.1f}s", markup=False)


# ------------------------------------------------------------------------------------ sample
@app.command()
@friendly
def sample(
    run: Path = typer.Argument(
        ..., help="A run folder (best checkpoint, else last) or a checkpoint."
    ),
    length: int = typer.Option(
        500, "--length", "-n", help="New characters per sample (the most, with --stop)."
    ),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        "-t",
        help="Softmax temperature (default 1); 0 is greedy (argmax).",
        show_default=False,
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Sample only from the k likeliest."),
    top_p: float | None = typer.Option(
        None, "--top-p", help="Sample only from the smallest set with this much probability."
    ),
    prime: str = typer.Option("", "--prime", "-p", help="Text to start from (printed first)."),
    seed: int | None = typer.Option(
        None, "--seed", "-s", help="Seed: the same seed, the same text."
    ),
    num_samples: int = typer.Option(
        1, "--num-samples", help="How many samples, drawn in one batch (with --beam: the best N)."
    ),
    stop: list[str] | None = typer.Option(
        None,
        "--stop",
        help="Stop a sample once it produces this text (printed); repeatable; \\n, \\t known.",
        show_default=False,
    ),
    beam: int | None = typer.Option(
        None, "--beam", help="Beam search of this width for the likeliest text (no sampling)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object per sample (text, chars, log-likelihood)."
    ),
    interactive: bool = typer.Option(
        False, "--interactive", "-i", help="Read primes line by line from stdin; Ctrl-D ends."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Print the prime followed by exactly --length new characters to stdout, as they come."""
    from charlm.checkpoint import load_model
    from charlm.sample import check_options, parse_stops

    stops = parse_stops(stop or [])
    check_options(length, temperature, top_k, top_p, num_samples, beam)
    if interactive and prime:
        raise CharlmError("--prime with --interactive: each line typed is the prime; drop --prime")
    import torch

    loaded = load_model(run, device)
    options = SampleOptions(
        length, 1.0 if temperature is None else temperature, top_k, top_p, seed, num_samples
    )
    write = functools.partial(write_samples, loaded, options, stops, beam, as_json)
    threads = torch.get_num_threads()
    if num_samples == 1 and next(loaded.model.parameters()).device.type == "cpu":
        # One stream's steps are matrix-vector products too small to split across threads; the
        # split costs a synchronisation per call, ruinous on a busy CPU (docs/benchmarks.md).
        torch.set_num_threads(1)
    try:
        if interactive:
            prompt_loop(write)
        else:
            write(prime, echo_prime=True)
    finally:
        torch.set_num_threads(threads)


class SampleOptions(NamedTuple):
    """The sampling options in the order the library takes them."""

    length: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    num_samples: int


def write_samples(
    loaded: Any,
    options: SampleOptions,
    stops: tuple[str, ...],
    beam: int | None,
    as_json: bool,
    prime: str,
    echo_prime: bool,
) -> None:
    """Write the samples for one prime to stdout, streaming when there is a single sample."""
    from charlm.sample import beam_search, generate_batch, sample_batch

    length, temperature, top_k, top_p, seed, num_samples = options
    model, vocab = loaded.model, loaded.vocab
    out = sys.stdout
    shown = prime if echo_prime else ""
    if beam is not None or as_json:
        if beam is not None:
            found = beam_search(model, vocab, prime, length, beam, num_samples, stops)
        else:
            found = sample_batch(
                model, vocab, prime, length, temperature, top_k, top_p, seed, num_samples, stops
            )
        if as_json:
            for i, one in enumerate(found):
                out.write(json.dumps({"sample": i + 1, **one.to_dict()}) + "\n")
        else:
            write_texts(out, [shown + one.text for one in found])
        out.flush()
        return
    chars = generate_batch(
        model, vocab, prime, length, temperature, top_k, top_p, seed, num_samples, stops
    )
    if num_samples == 1:
        out.write(shown)
        out.flush()
        for (char,) in chars:
            out.write(char)
            out.flush()
        return
    write_texts(out, [shown + "".join(parts) for parts in zip(*chars, strict=True)])
    out.flush()


def write_texts(out: Any, texts: list[str]) -> None:
    """Several samples in turn, each after a separator line naming it."""
    for i, text in enumerate(texts):
        if i:
            out.write(f"\n----- sample {i + 1} of {len(texts)} -----\n")
        out.write(text)


def prompt_loop(write: Callable[..., None]) -> None:
    """Each stdin line is a prime; its continuation follows on stdout, then a newline.

    The prime is not echoed (it was just typed). A bad line is reported and the loop goes on;
    Ctrl-D (end of input) and Ctrl-C end it with exit code 0.
    """
    stdin = sys.stdin
    tty = stdin.isatty()
    if tty:
        err.print("Type a prime and press Enter; Ctrl-D or Ctrl-C quits.", markup=False)
    try:
        while True:
            if tty:
                err.print("> ", end="", markup=False)
            line = stdin.readline()
            if not line:
                break
            try:
                write(line.rstrip("\r\n"), echo_prime=False)
            except CharlmError as e:
                sys.stdout.flush()
                err.print(f"error: {e}", markup=False, highlight=False)
                continue
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()


# -------------------------------------------------------------------------------------- eval
@app.command(name="eval")
@friendly
def eval_command(
    run: Path = typer.Argument(
        ..., help="A run folder (best checkpoint, else last) or a checkpoint."
    ),
    corpus: Path | None = typer.Option(
        None, "--corpus", help="Score this text file or folder instead of a split."
    ),
    split: str = typer.Option("val", "--split", help="val, test or train (of the run's corpus)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Mean loss (nats/char), bits per char and perplexity of a model on a split or a file.

    A folder or glob given to --corpus is scored file by file (state reset between files), with
    a total row; its JSON is the total's numbers plus a "files" list.
    """
    from charlm.evaluate import evaluate_run

    if split not in ("val", "test", "train"):
        raise CharlmError(f"--split {split!r}: expected val, test or train")
    if corpus is not None and (corpus.is_dir() or any(ch in str(corpus) for ch in "*?[")):
        show_files(run, corpus, as_json, device)
        return
    result = evaluate_run(run, corpus=corpus, split=split, device=device)
    scored = str(corpus) if corpus is not None else f"{split} split"
    if as_json:
        typer.echo(json.dumps({"scored": scored, **result.to_dict()}))
        return
    table = Table(title=f"charlm eval: {run} on {scored}", title_justify="left")
    for column in ("loss (nats/char)", "bpc", "perplexity", "chars", "chars/s"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{result.loss:.4f}",
        f"{result.bpc:.4f}",
        f"{result.perplexity:.3f}",
        f"{result.chars:,}",
        f"{result.chars_per_s:,.0f}",
    )
    Console().print(table)


def show_files(run: Path, corpus: Path, as_json: bool, device: str) -> None:
    """`charlm eval --corpus FOLDER`: one row per file and the total."""
    from charlm.evaluate import evaluate_files

    found = evaluate_files(run, corpus, device=device)
    for name in found.skipped:
        err.print(f"skipped {name}: fewer than 2 characters", markup=False)
    if as_json:
        typer.echo(json.dumps({"scored": str(corpus), **found.to_dict()}))
        return
    table = Table(title=f"charlm eval: {run} on {corpus}", title_justify="left")
    for column in ("file", "loss (nats/char)", "bpc", "perplexity", "chars", "chars/s"):
        table.add_column(column, justify="left" if column == "file" else "right", overflow="fold")
    rows = [*found.files, ("total", found.total)]
    for i, (name, result) in enumerate(rows):
        shown = Path(name).relative_to(corpus) if corpus.is_dir() and name != "total" else name
        table.add_row(
            str(shown),
            f"{result.loss:.4f}",
            f"{result.bpc:.4f}",
            f"{result.perplexity:.3f}",
            f"{result.chars:,}",
            f"{result.chars_per_s:,.0f}",
            end_section=i == len(rows) - 2,
        )
    Console().print(table)


def main() -> None:
    app()
