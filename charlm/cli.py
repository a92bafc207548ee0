"""The `charlm` command: a thin Typer layer over the library.

Each command parses its options, calls one library function and shows the result. Library imports
happen inside the commands, so `charlm --help` never loads torch. A `CharlmError` becomes one line
on stderr and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import shlex
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
    resume: Path | None = typer.Option(
        None,
        "--resume",
        help="Continue this run folder from its newest intact checkpoint, with its recorded "
        "config (only train.max_steps, train.max_time and train.device may be overridden).",
    ),
    nproc: int | None = typer.Option(
        None,
        "--nproc",
        help="Data-parallel training in N processes on this machine (launches torchrun; "
        "train.batch_size is the global batch). See docs/distributed.md.",
        show_default=False,
    ),
) -> None:
    """Train a model; the run folder gets config.yaml, metrics.jsonl and checkpoints/.

    Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and prints the command that
    resumes it (exit code 130 or 143).
    """
    from charlm import distributed
    from charlm.config import load_config
    from charlm.cpu.memory import keep_freed_memory
    from charlm.rundir import default_run_dir
    from charlm.training import TrainingInterrupted
    from charlm.training import resume as resume_training
    from charlm.training import train as run_training

    config_path, overrides = split_train_args(args or [])
    if resume is not None and config_path is not None:
        raise CharlmError(
            f"--resume {resume}: a resumed run uses the config recorded in it; drop {config_path} "
            f"(KEY=VALUE overrides of budgets are allowed)"
        )
    if resume is not None and out is not None:
        raise CharlmError(
            f"--resume {resume}: a resumed run continues in its own folder; drop --out"
        )
    if nproc is not None and nproc != 1:
        if distributed.launched_by_torchrun():
            raise CharlmError("--nproc: already running under torchrun; drop --nproc")
        if resume is None and out is None:
            out = default_run_dir(config_path)  # one folder name for every process
        forwarded = [*(args or [])]
        forwarded += ["--out", str(out)] if out is not None else []
        forwarded += ["--resume", str(resume)] if resume is not None else []
        forwarded += ["--quiet"] if quiet else []
        raise typer.Exit(distributed.launch(nproc, forwarded))
    # Under torchrun, the processes other than rank 0 train silently; rank 0 reports.
    follower = distributed.is_follower()
    show = ProgressView(plain=quiet or follower or not err.is_terminal)
    keep_freed_memory()  # the whole process is ours: keep a step's freed buffers for the next
    try:
        if resume is not None:
            with show:
                result = resume_training(resume, overrides, on_event=show.handle)
        else:
            config = load_config(config_path, overrides)
            run_dir = out if out is not None else default_run_dir(config_path)
            with show:
                result = run_training(config, run_dir, on_event=show.handle)
    except TrainingInterrupted as stop:
        _finish_report()
        if not follower:
            err.print(f"{stop}", markup=False, soft_wrap=True)
            err.print(f"resume with: {stop.resume_command}", markup=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None
    except distributed.PeerFailed:
        raise typer.Exit(1) from None  # another process printed the error
    except CharlmError:
        _finish_report()
        raise
    except KeyboardInterrupt:
        raise fail("interrupted before training started; nothing was saved", 130) from None
    if follower:
        return
    table = Table(title="charlm train", show_header=False, title_justify="left")
    table.add_row("run folder", str(result.run_dir))
    table.add_row("steps", f"{result.steps:,}")
    table.add_row("time", f"{result.elapsed_s:.1f} s, of which evals {result.eval_s:.1f} s")
    table.add_row(
        "chars/s",
        f"{result.chars_per_s:,.0f} ({result.step_chars_per_s:,.0f} outside evals)",
    )
    table.add_row("parameters", f"{result.parameters:,}")
    final = result.final_val
    table.add_row(
        "final val bpc",
        f"{final.bpc:.4f} (loss {final.loss:.4f}) on all {final.chars + 1:,} val chars",
    )
    if result.interval_evals:
        table.add_row(
            "best val bpc",
            f"{result.best_val_bpc:.4f} at step {result.best_step:,} (interval evals)",
        )
    table.add_row("next", f"charlm sample {result.run_dir}")
    err.print(table)


def _finish_report() -> None:
    """Under torchrun, let this process print its last lines before it is stopped.

    torchrun sends SIGTERM to the remaining processes as soon as one exits with an error.
    """
    import os
    import signal

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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

    def handle(self, event: Any) -> None:
        from charlm import events as ev

        if isinstance(event, ev.Started):
            self.max_steps, self.max_time = event.max_steps, event.max_time
            probe = event.precision_probe
            timed = (
                f" (auto: a step took {probe['fp32_step_s'] * 1e3:.0f} ms in fp32, "
                f"{probe['bf16_step_s'] * 1e3:.0f} ms in bf16)"
                if probe
                else ""
            )
            line = (
                f"run {event.run_dir} | {event.device} {event.precision}{timed}"
                f" | {event.parameters:,} parameters"
                f" | vocab {event.vocab_size} | train {event.train_chars:,} chars"
                f" | val {event.val_chars:,} chars"
            )
            err.print(line, markup=False)
            if self.progress is not None:
                self.task = self.progress.add_task("train", total=1000, status="starting")
        elif isinstance(event, ev.Logged):
            if event.val_bpc is not None:
                self.last_bpc = f"{event.val_bpc:.3f}"
            train_loss = event.train_loss
            speed = event.chars_per_s
            status = (
                f"step {event.step:,}"
                + (f" | loss {train_loss:.3f}" if train_loss is not None else "")
                + f" | val bpc {self.last_bpc}"
                + (f" | {speed:,.0f} chars/s" if speed is not None else "")
            )
            if self.progress is not None:
                fractions = [0.0]
                if self.max_steps:
                    fractions.append(event.step / self.max_steps)
                if self.max_time:
                    fractions.append(event.elapsed_s / self.max_time)
                self.progress.update(
                    self.task, completed=1000 * min(1.0, max(fractions)), status=status
                )
            else:
                err.print(f"{status} | {event.elapsed_s:.1f}s", markup=False)
        elif isinstance(event, ev.FinalEvalStarted):
            status = f"final eval on all {event.chars:,} val chars"
            if self.progress is not None:
                self.progress.update(self.task, completed=1000, status=status)
            else:
                err.print(f"{status} ...", markup=False)
        elif isinstance(event, ev.FinalEvalFinished) and self.progress is None:
            err.print(f"final val bpc {event.bpc:.4f} | {event.seconds:.1f}s", markup=False)
        elif isinstance(event, ev.Resumed):
            err.print(f"resuming from {event.path} (step {event.step:,})", markup=False)
        elif isinstance(event, ev.Warned):
            err.print(f"warning: {event.message}", markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------ sample
UNKNOWN_HELP = (
    "Characters of the {what} outside the model's vocabulary: error (name them and stop), skip "
    "(drop them) or replace (use the unknown symbol of a model trained with "
    "data.min_char_count > 1)."
)


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
    unknown: str = typer.Option("error", "--unknown", help=UNKNOWN_HELP.format(what="prime")),
    impl: str | None = typer.Option(
        None,
        "--impl",
        help="Run the weights on `fused` (nn.LSTM/nn.GRU) or `reference` (charlm/cells.py) "
        "cells; default: the one the model was trained with.",
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="fp32; bf16: matrix products in bfloat16 (faster on CPUs with AVX-512 BF16 and "
        "on GPUs; probabilities move by about 1%); int8: weights in 8 bits, CPU only (about 2x "
        "as fast on x86; `charlm eval RUN --precision int8` shows what it costs your model); "
        "auto: times a few steps in each and takes the fastest, if 1.1x fp32's speed or more "
        "(named on stderr). Any but fp32 can change a seed's text.",
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="CPU threads for the steps. Default: 1 for a single sample (fastest on a busy "
        "machine), all cores for batches; 2 or more can speed up a wide model's single "
        "sample when cores are idle.",
        show_default=False,
    ),
) -> None:
    """Print the prime followed by exactly --length new characters to stdout, as they come."""
    from charlm.checkpoint import load_model
    from charlm.sample import check_options, parse_stops
    from charlm.vocab import check_unknown_policy

    stops = parse_stops(stop or [])
    check_options(length, temperature, top_k, top_p, num_samples, beam, precision)
    if threads is not None and threads < 1:
        raise CharlmError(f"--threads {threads}: expected a whole number >= 1")
    check_unknown_policy(unknown)
    if interactive and prime:
        raise CharlmError("--prime with --interactive: each line typed is the prime; drop --prime")
    import torch

    loaded = load_model(run, device, impl)
    options = SampleOptions(
        length,
        1.0 if temperature is None else temperature,
        top_k,
        top_p,
        seed,
        num_samples,
        unknown,
        precision,
    )
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    elif num_samples == 1 and next(loaded.model.parameters()).device.type == "cpu":
        # One stream's steps are matrix-vector products too small to split across threads; the
        # split costs a synchronisation per call, ruinous on a busy CPU (docs/benchmarks.md).
        torch.set_num_threads(1)
    try:
        if precision == "auto":  # timed on the threads just set, at the batch the steps run
            options = options._replace(precision=auto_precision(loaded.model, beam or num_samples))
        write = functools.partial(write_samples, loaded, options, stops, beam, as_json)
        if interactive:
            prompt_loop(write)
        else:
            write(prime, echo_prime=True)
    finally:
        torch.set_num_threads(before)


def auto_precision(model: Any, batch: int) -> str:
    """`--precision auto`: time a step in each precision, say on stderr which won and why."""
    from charlm import stepper

    chosen, timings = stepper.auto_precision(model, batch)
    times = ", ".join(f"{seconds * 1e6:,.0f} us in {name}" for name, seconds in timings.items())
    line = f"precision: {chosen} (auto: a step of {batch} took {times})"
    err.print(line, markup=False, soft_wrap=True)
    return chosen


class SampleOptions(NamedTuple):
    """The sampling options in the order the library takes them."""

    length: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    num_samples: int
    unknown: str
    precision: str


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

    length, temperature, top_k, top_p, seed, num_samples, unknown, precision = options
    model, vocab = loaded.model, loaded.vocab
    out = sys.stdout
    shown = prime if echo_prime else ""
    # sample_batch and generate_batch take the same arguments in the same order.
    args = (model, vocab, prime, length, temperature, top_k, top_p, seed, num_samples, stops)
    if beam is not None or as_json:
        if beam is not None:
            found = beam_search(
                model, vocab, prime, length, beam, num_samples, stops, unknown, precision
            )
        else:
            found = sample_batch(*args, unknown, precision)
        if as_json:
            for i, one in enumerate(found):
                out.write(json.dumps({"sample": i + 1, **one.to_dict()}) + "\n")
        else:
            write_texts(out, [shown + one.text for one in found])
        out.flush()
        return
    chars = generate_batch(*args, unknown, precision)
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
    unknown: str = typer.Option("error", "--unknown", help=UNKNOWN_HELP.format(what="--corpus")),
    impl: str | None = typer.Option(
        None,
        "--impl",
        help="Run the weights on `fused` (nn.LSTM/nn.GRU) or `reference` (charlm/cells.py) "
        "cells; default: the one the model was trained with.",
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="Score through the sampling steps with their products in fp32, bf16 or int8: "
        "what `charlm sample --precision` costs the model. Default: the model's own forward.",
        show_default=False,
    ),
) -> None:
    """Mean loss (nats/char), bits per char and perplexity of a model on a split or a file.

    A folder or glob given to --corpus is scored file by file (state reset between files), with
    a total row; its JSON is the total's numbers plus a "files" list.
    """
    from charlm.evaluate import evaluate_run
    from charlm.precision import check_precision
    from charlm.vocab import check_unknown_policy

    if split not in ("val", "test", "train"):
        raise CharlmError(f"--split {split!r}: expected val, test or train")
    if precision is not None:
        check_precision(precision, auto=False)
    check_unknown_policy(unknown)
    if corpus is not None and (corpus.is_dir() or any(ch in str(corpus) for ch in "*?[")):
        show_files(run, corpus, as_json, device, unknown, impl, precision)
        return
    result = evaluate_run(
        run,
        corpus=corpus,
        split=split,
        device=device,
        unknown=unknown,
        impl=impl,
        precision=precision,
    )
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


# ------------------------------------------------------------------------- experiments
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table_console() -> Console:
    """stdout; piped output gets a wide fixed width so tables are not squeezed to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


STATUS_STYLE = {"finished": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def _status(status: str) -> str:
    from rich.markup import escape

    return f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]"


def _best_style(runs: list[Any]) -> Callable[[Any], str]:
    """Bold the lowest best val bpc among the rows, so the winner stands out."""
    scores = [r.best_val_bpc for r in runs if r.best_val_bpc is not None]
    best = min(scores) if scores else None
    return lambda r: (
        f"[bold green]{r.best_val_bpc:.4f}[/]"
        if best is not None and r.best_val_bpc == best and len(runs) > 1
        else _number(r.best_val_bpc, ".4f")
    )


def comparison_table(comparison: Any, title: str) -> Table:
    """Rows are runs; columns are the config keys that differ, then the results."""
    from rich.markup import escape

    table = Table(title=title, title_justify="left")
    table.add_column("run")
    for key in comparison.differing:
        table.add_column(escape(key))
    for column in ("best val bpc", "final val bpc", "chars/s", "parameters", "steps", "time"):
        table.add_column(column, justify="right")
    table.add_column("status")
    best = _best_style(comparison.runs)
    for run in comparison.runs:
        values = run.flat_config()
        table.add_row(
            escape(run.name),
            *[escape(str(values.get(key))) for key in comparison.differing],
            best(run),
            _number(run.final_val_bpc, ".4f"),
            _number(run.chars_per_s, ",.0f"),
            _number(run.parameters, ","),
            _number(run.steps, ","),
            _seconds(run.elapsed_s),
            _status(run.status),
        )
    same = len(comparison.runs[0].flat_config()) - len(comparison.differing)
    table.caption = f"{same} other config keys are the same in every run"
    return table


class SweepView:
    """Shows a sweep: a line per planned run, then that run's progress as `charlm train` does."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.view: ProgressView | None = None

    def close(self) -> None:
        if self.view is not None:
            self.view.__exit__(None, None, None)
            self.view = None

    def handle(self, event: Any) -> None:
        from charlm import events as ev

        if isinstance(event, ev.SweepRun):
            self.close()
            what = {"skip": "finished already, skipped", "start": "starting"}
            line = f"[{event.index}/{event.total}] {event.name}: "
            err.print(line + what.get(event.action, "unfinished"), markup=False)
        elif isinstance(event, ev.Resumed):
            err.print(f"  resuming from {event.path} (step {event.step:,})", markup=False)
        elif isinstance(event, ev.SweepMoved):
            err.print(
                f"  kept the unfinished run as {event.moved_to}; starting it again",
                markup=False,
            )
        elif isinstance(event, ev.SweepPrecision):
            err.print(f"precision: auto resolved to {event.precision} for every run", markup=False)
        elif isinstance(event, ev.Started):
            self.view = ProgressView(self.plain).__enter__()
            self.view.handle(event)
        elif isinstance(event, ev.Ended):
            self.close()
            summary = event.summary
            err.print(
                f"  done: best val bpc {summary.best_val_bpc:.4f} in {summary.steps:,} steps",
                markup=False,
            )
        elif self.view is not None:
            self.view.handle(event)
        elif isinstance(event, ev.Warned):
            err.print(f"warning: {event.message}", markup=False)


@app.command()
@friendly
def sweep(
    args: list[str] = typer.Argument(
        ...,
        metavar="EXPERIMENT [KEY=VALUE]...",
        help="An experiment YAML (see docs/experiments.md), then dotted overrides applied to "
        "every run, e.g. train.max_time=60 data.corpus=my.txt.",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Folder for the runs (default: runs/<experiment>)."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Plain log lines instead of progress bars."
    ),
) -> None:
    """Train every run of an experiment in turn (skipping finished ones), then compare them."""
    from charlm.cpu.memory import keep_freed_memory
    from charlm.runs import compare_runs
    from charlm.sweep import default_sweep_dir, load_experiment, run_sweep
    from charlm.training import TrainingInterrupted

    path, overrides = split_train_args(args)
    if path is None:
        raise CharlmError("expected an EXPERIMENT file before the KEY=VALUE overrides")
    experiment = load_experiment(path, overrides)
    folder = out if out is not None else default_sweep_dir(path)
    names = ", ".join(run.name for run in experiment.runs)
    err.print(f"sweep {path}: {len(experiment.runs)} runs into {folder}: {names}", markup=False)
    if experiment.description:
        err.print(experiment.description, markup=False)
    view = SweepView(plain=quiet or not err.is_terminal)
    keep_freed_memory()
    try:
        result = run_sweep(experiment, folder, on_event=view.handle)
    except TrainingInterrupted as stop:
        view.close()
        again = shlex.join(["charlm", "sweep", *args, "--out", str(folder)])
        err.print(f"{stop}", markup=False, soft_wrap=True)
        err.print(f"continue the sweep with: {again}", markup=False, soft_wrap=True)
        raise typer.Exit(stop.exit_code) from None
    finally:
        view.close()
    _table_console().print(comparison_table(compare_runs(result.runs), f"charlm sweep: {path}"))
    if result.plot is not None:
        err.print(f"plot: {result.plot}", markup=False)


@app.command()
@friendly
def runs(
    folder: Path = typer.Argument(Path("runs"), help="A folder of runs (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list to stdout."),
) -> None:
    """A table of the runs under a folder: cell, size, steps, time, best val bpc, status."""
    from rich.markup import escape

    from charlm.runs import find_runs

    found = find_runs(folder)
    if as_json:
        typer.echo(json.dumps([run.to_dict() for run in found], indent=2))
        return
    if not found:
        err.print(f"no runs under {folder}", markup=False)
        return
    table = Table(title=f"charlm runs: {folder}", title_justify="left")
    table.add_column("run")
    table.add_column("cell")
    for column in ("parameters", "steps", "time", "best val bpc"):
        table.add_column(column, justify="right")
    table.add_column("status")
    best = _best_style(found)
    for run in found:
        table.add_row(
            escape(run.name),
            escape(run.cell or "-"),
            _number(run.parameters, ","),
            _number(run.steps, ","),
            _seconds(run.elapsed_s),
            best(run),
            _status(run.status),
        )
    _table_console().print(table)


@app.command()
@friendly
def compare(
    run_args: list[str] = typer.Argument(
        ...,
        metavar="RUN...",
        help="Run folders, or folders of runs (a sweep's --out folder).",
        show_default=False,
    ),
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw val bpc against step and time into this PNG."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """The config keys that differ between runs, and their results side by side."""
    from charlm.runs import collect_runs, compare_runs

    if plot is not None and plot.suffix.lower() != ".png":
        raise CharlmError(f"--plot {plot}: expected a file name ending in .png")
    comparison = compare_runs(collect_runs([Path(a) for a in run_args]))
    if plot is not None:
        from charlm.plots import plot_comparison

        plot_comparison(comparison.runs, plot)
    if as_json:
        typer.echo(json.dumps(comparison.to_dict(), indent=2))
    else:
        _table_console().print(comparison_table(comparison, "charlm compare"))
    if plot is not None:
        err.print(f"plot: {plot}", markup=False)


# -------------------------------------------------------------------------------------- info
@app.command()
@friendly
def info(
    target: Path = typer.Argument(..., metavar="RUN|CHECKPOINT", help="A run folder or a file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Step, time trained, sizes, scores and config of a run, and whether each checkpoint is
    intact (exit code 1 when none is)."""
    from charlm.info import describe

    report = describe(target)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_info(report)
    if report["summary"] is None:
        raise typer.Exit(1)


def _print_info(report: dict[str, Any]) -> None:
    out = Console(highlight=False)
    summary = report["summary"]
    if summary is not None:
        table = Table(title=f"charlm info: {report['target']}", show_header=False)
        table.title_justify = "left"
        table.add_column("what")
        table.add_column("value", overflow="fold")

        def bpc(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        table.add_row("described checkpoint", summary["checkpoint"])
        table.add_row("step", f"{summary['step']:,}")
        table.add_row("time trained", f"{summary['elapsed_s']:.1f} s")
        table.add_row("parameters", f"{summary['parameters']:,}")
        table.add_row("vocabulary size", str(summary["vocab_size"]))
        best = bpc(summary["best_val_bpc"])
        table.add_row("best val bpc", f"{best} at step {summary['best_step']:,}")
        table.add_row("last val bpc", bpc(summary["last_val_bpc"]))
        table.add_row(
            "trained on",
            f"{summary['device']}, {summary['precision']} (torch {summary['torch_version']})",
        )
        if report.get("resume"):
            table.add_row("resume", report["resume"])
        out.print(table)
        out.print("config:", markup=False)
        for section, values in summary["config"].items():
            for key, value in values.items():
                out.print(f"  {section}.{key} = {value}", markup=False)
    files = Table(title="checkpoint files", title_justify="left")
    for column in ("file", "step", "bytes", "status"):
        files.add_column(column, overflow="fold")
    for entry in report["checkpoints"]:
        status = entry["status"] + (f": {entry['problem']}" if entry["problem"] else "")
        step = "-" if entry["step"] is None else f"{entry['step']:,}"
        files.add_row(entry["file"], step, f"{entry['bytes']:,}", status)
    out.print(files)
    if summary is None:
        err.print("[bold red]error:[/] no intact checkpoint found", markup=True)


# -------------------------------------------------------------------------------------- data
data_app = typer.Typer(
    no_args_is_help=True,
    help="Prepare corpora: encode them into the id cache training reads, fetch classic ones.",
)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@friendly
def data_prepare(
    args: list[str] = typer.Argument(
        None,
        metavar="[CORPUS] [KEY=VALUE]...",
        help="A file, folder or glob (default: data.corpus, else the built-in corpus), then "
        "dotted overrides such as data.min_char_count=5.",
        show_default=False,
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="A YAML config to start from."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object to stdout."),
) -> None:
    """Encode a corpus into its id cache (or check the cache is current) and show statistics."""
    from charlm.cache import prepare_corpus, split_sizes
    from charlm.config import load_config

    corpus, overrides = split_train_args(args or [])
    if corpus is not None:
        overrides = [f"data.corpus={corpus}", *overrides]
    d = load_config(config, overrides).data
    prepared = prepare_corpus(d)
    n_train, n_val, n_test = split_sizes(prepared.chars, d.val_fraction, d.test_fraction)
    ranked = sorted(zip(prepared.vocab.chars, prepared.counts, strict=True), key=lambda p: -p[1])
    report = {
        "corpus": prepared.source,
        "files": len(prepared.files),
        "chars": prepared.chars,
        "vocab_size": len(prepared.vocab),
        "dtype": prepared.ids.dtype.name,
        "most_frequent": [[c, n] for c, n in ranked[:10]],
        "least_frequent": [[c, n] for c, n in ranked[-10:][::-1]],
        "splits": {"train": n_train, "val": n_val, "test": n_test},
        "sha256": prepared.sha256,
        "cache": str(prepared.cache_path),
        "cache_status": prepared.status,
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"charlm data prepare: {prepared.source}", show_header=False)
    table.title_justify = "left"
    table.add_column("what")
    table.add_column("value", overflow="fold")

    def shown(pairs: list[list[Any]]) -> str:
        return ", ".join(f"{c!r} {n:,}" for c, n in pairs)

    table.add_row("files", f"{report['files']:,}")
    table.add_row("characters", f"{prepared.chars:,}")
    table.add_row("vocabulary", f"{len(prepared.vocab):,} symbols ({report['dtype']} ids)")
    table.add_row("most frequent", shown(report["most_frequent"]))
    table.add_row("least frequent", shown(report["least_frequent"]))
    table.add_row("splits", f"train {n_train:,} | val {n_val:,} | test {n_test:,}")
    table.add_row("sha256", prepared.sha256)
    table.add_row("cache", f"{prepared.cache_path} ({prepared.status})")
    Console(highlight=False).print(table)


@data_app.command("fetch")
@friendly
def data_fetch(
    name: str = typer.Argument(..., help="The corpus: tinyshakespeare."),
    url: str | None = typer.Option(None, "--url", help="Download from here instead."),
    dest: Path = typer.Option(Path("data"), "--dest", help="Folder to save it in."),
    timeout: float = typer.Option(30.0, "--timeout", help="Network timeout in seconds."),
) -> None:
    """Download a classic corpus, verified by length and SHA-256 (a mismatch saves nothing)."""
    from charlm.fetch import fetch

    path, downloaded = fetch(name, dest, url, timeout)
    what = "downloaded and verified" if downloaded else "already present and verified"
    err.print(f"{path}: {what}", markup=False, soft_wrap=True)


def show_files(
    run: Path,
    corpus: Path,
    as_json: bool,
    device: str,
    unknown: str,
    impl: str | None,
    precision: str | None,
) -> None:
    """`charlm eval --corpus FOLDER`: one row per file and the total."""
    from charlm.evaluate import evaluate_files

    found = evaluate_files(
        run, corpus, device=device, unknown=unknown, impl=impl, precision=precision
    )
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
    """Run the app; a usage mistake (bad option value, unknown option) is one line and exit 1."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except Exception as e:
        # Typer's usage errors (its click's UsageError/ClickException, vendored or not) carry
        # `format_message` and `exit_code`; recognise them by that rather than by a private path.
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # a bare `charlm` or `charlm data`: Typer has already shown the help
        where = ctx.command_path if ctx is not None else "charlm"
        err.print(
            f"error: {where}: {e.format_message()} (see {where} --help)",
            markup=False,
            soft_wrap=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
