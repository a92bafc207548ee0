"""`charlm sample` and `charlm eval`: text from a trained model, and its scores."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from charlm.cli.app import friendly
from charlm.cli.choices import Device, Precision, Split
from charlm.cli.options import (
    ImplOption,
    JsonOption,
    PrecisionOption,
    RunArg,
    UnknownInCorpus,
    UnknownInPrime,
)
from charlm.cli.views import err, eval_files_table, eval_table
from charlm.errors import CharlmError

if TYPE_CHECKING:
    from torch import nn

    from charlm.checkpoint import Loaded
    from charlm.sample_options import SampleOptions

PRIME_FILE_HELP = "Start from this file's text (UTF-8) instead of --prime."
THREADS_HELP = (
    "CPU threads for the steps. Default: 1 for a single sample (fastest on a busy "
    "machine), all cores for batches; 2 or more can speed up a wide model's single "
    "sample when cores are idle."
)
STOP_HELP = "Stop a sample once it produces this text (printed); repeatable; \\n, \\t known."
DEVICE_HELP = (
    "Where to sample; auto: whichever of the CPU and the GPU runs a sampling step faster at this "
    "batch (timed; named on stderr)."
)
Opt = typer.Option
Length = Annotated[
    int, Opt("--length", "-n", help="New characters per sample (the most, with --stop).")
]
Temperature = Annotated[
    float | None,
    Opt("--temperature", "-t", help="Softmax temperature (default 1); 0 is greedy (argmax).",
        show_default=False),
]  # fmt: skip
TopK = Annotated[int | None, Opt("--top-k", help="Sample only from the k likeliest.")]
TopP = Annotated[
    float | None,
    Opt("--top-p", help="Sample only from the smallest set with this much probability."),
]
Prime = Annotated[str, Opt("--prime", "-p", help="Text to start from (printed first).")]
PrimeFile = Annotated[Path | None, Opt("--prime-file", help=PRIME_FILE_HELP)]
Seed = Annotated[int | None, Opt("--seed", "-s", help="Seed: the same seed, the same text.")]
NumSamples = Annotated[
    int,
    Opt("--num-samples", help="How many samples, drawn in one batch (with --beam: the best N)."),
]
Stops = Annotated[
    list[str] | None, Opt("--stop", metavar="<str>", help=STOP_HELP, show_default=False)
]
Beam = Annotated[
    int | None,
    Opt("--beam", help="Beam search of this width for the likeliest text (no sampling)."),
]
SampleJson = Annotated[
    bool, Opt("--json", help="One JSON object per sample (text, chars, log-likelihood).")
]
Interactive = Annotated[
    bool, Opt("--interactive", "-i", help="Read primes line by line from stdin; Ctrl-D ends.")
]
SampleDevice = Annotated[Device, Opt("--device", help=DEVICE_HELP)]
Threads = Annotated[int | None, Opt("--threads", help=THREADS_HELP, show_default=False)]


@friendly
def sample(
    run: RunArg,
    length: Length = 500,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    prime: Prime = "",
    prime_file: PrimeFile = None,
    seed: Seed = None,
    num_samples: NumSamples = 1,
    stop: Stops = None,
    beam: Beam = None,
    as_json: SampleJson = False,
    interactive: Interactive = False,
    device: SampleDevice = "auto",
    unknown: UnknownInPrime = "error",
    impl: ImplOption = None,
    precision: PrecisionOption = "fp32",
    threads: Threads = None,
) -> None:
    """Print the prime followed by exactly --length new characters to stdout, as they come."""
    from charlm.checkpoint import load_model
    from charlm.sample_options import SampleOptions, parse_stops
    from charlm.sample_setup import check_sampling_memory, check_threads, sampling_threads
    from charlm.vocab import check_unknown_policy

    options = SampleOptions(
        length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        num_samples=num_samples, stops=parse_stops(stop or []), unknown=unknown,
        precision=precision, beam=beam,
    )  # fmt: skip
    check_threads(threads)
    check_unknown_policy(unknown)
    if interactive and prime:
        raise CharlmError("--prime with --interactive: each line typed is the prime; drop --prime")
    check_streams(interactive)
    prime = read_prime_file(prime_file, prime, interactive) if prime_file else prime
    loaded = load_model(run, "cpu" if device == "auto" else device, impl)
    check_sampling_memory(len(loaded.vocab), options)
    with sampling_threads(loaded.model, options, threads):  # the timings below run on them
        if device == "auto":
            loaded = chosen_device(loaded, options)
        options = resolved_precision(loaded.model, options)
        write = functools.partial(write_samples, loaded, options, as_json)
        with stdout_errors():
            if interactive:
                prompt_loop(write)
            else:
                write(prime, echo_prime=True)


def check_streams(interactive: bool) -> None:
    """Refuse a closed stdout (`>&-`), or a closed stdin for --interactive (`<&-`), up front."""
    if sys.stdout is None:
        raise CharlmError(
            "standard output is closed: nowhere to write the samples; redirect it to a file "
            "or /dev/null"
        )
    if interactive and sys.stdin is None:
        raise CharlmError("--interactive: standard input is closed; pipe or type the primes")


# The exit code of a process killed by SIGPIPE, as `charlm sample | head` would get from a tool
# that keeps the default signal handler (Python ignores SIGPIPE and gets an error instead).
BROKEN_PIPE_EXIT = 141


@contextlib.contextmanager
def stdout_errors() -> Iterator[None]:
    """A reader that went away (`| head`) ends sampling in silence; a full or failing stdout is
    one error line. Either way stdout is pointed at /dev/null, so the flush at exit is quiet."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
        raise typer.Exit(BROKEN_PIPE_EXIT) from None
    except OSError as e:
        _drop_stdout()
        reason = e.strerror or str(e)
        raise CharlmError(f"standard output: cannot write the samples ({reason})") from None


def _drop_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return  # not a real file (a test's capture): nothing is flushed at exit
    os.dup2(devnull, fd)
    os.close(devnull)


def read_prime_file(path: Path, prime: str, interactive: bool) -> str:
    """`--prime-file`: the file's text, its line endings made LF as the corpus's are."""
    from charlm.corpus import normalise_newlines

    if prime or interactive:
        given = "--prime" if prime else "--interactive"
        raise CharlmError(f"--prime-file {path} with {given}: give the prime one way")
    try:
        return normalise_newlines(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CharlmError(f"--prime-file {path}: not UTF-8 text (byte offset {e.start})") from None
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        raise CharlmError(f"--prime-file {path}: cannot read it ({reason})") from None


def chosen_device(loaded: Loaded, options: SampleOptions) -> Loaded:
    """`--device auto`: the CPU or the GPU, whichever steps faster; said on stderr if timed."""
    from charlm.sample_setup import choose_device

    model, timings = choose_device(loaded.model, options)
    if timings:
        times = ", ".join(f"{seconds * 1e6:,.0f} us on {name}" for name, seconds in timings.items())
        device = next(model.parameters()).device.type
        line = f"device: {device} (auto: a step of {options.batch} took {times})"
        err.print(line, markup=False, soft_wrap=True)
    return dataclasses.replace(loaded, model=model)


def resolved_precision(model: nn.Module, options: SampleOptions) -> SampleOptions:
    """`--precision auto` made concrete, its pick and timings said on stderr."""
    from charlm.sample_setup import resolve_precision

    resolved, timings = resolve_precision(model, options)
    if timings:
        times = ", ".join(f"{seconds * 1e6:,.0f} us in {name}" for name, seconds in timings.items())
        line = f"precision: {resolved.precision} (auto: a step of {options.batch} took {times})"
        err.print(line, markup=False, soft_wrap=True)
    return resolved


def write_samples(
    loaded: Loaded, options: SampleOptions, as_json: bool, prime: str, echo_prime: bool
) -> None:
    """Write the samples for one prime to stdout, streaming when there is a single sample."""
    from charlm.sample import decode

    out = sys.stdout
    shown = prime if echo_prime else ""
    found = decode(loaded.model, loaded.vocab, prime, options, scored=as_json)
    if isinstance(found, list):  # finished samples: a beam's, or scored ones for --json
        if as_json:
            for i, one in enumerate(found):
                out.write(json.dumps({"sample": i + 1, **one.to_dict()}) + "\n")
        else:
            write_texts(out, [shown + one.text for one in found])
    elif options.num_samples == 1:
        out.write(shown)
        out.flush()
        for (char,) in found:
            out.write(char)
            out.flush()
        return
    else:
        write_texts(out, [shown + "".join(parts) for parts in zip(*found, strict=True)])
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
                if tty:  # Ctrl-D: the shell's prompt comes next, on a line of its own
                    err.print(markup=False)
                break
            try:
                write(line.rstrip("\r\n"), echo_prime=False)
            except CharlmError as e:
                sys.stdout.flush()
                err.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                continue
            sys.stdout.write("\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()


EVAL_PRECISION_HELP = (
    "Score through the sampling steps with their products in this precision: what `charlm "
    "sample --precision` costs the model. Default: the model's own forward."
)
WINDOW_HELP = (
    "Score fresh windows of N characters, each from a zero state, instead of the carried state "
    "(256 scores the way nanoGPT's shakespeare_char does)."
)
EvalCorpus = Annotated[
    Path | None, Opt("--corpus", help="Score this text file or folder instead of a split.")
]
EvalSplit = Annotated[Split, Opt("--split", help="Which split of the run's corpus.")]
EvalDevice = Annotated[
    Device, Opt("--device", help="Where to score; auto: the GPU if there is one (int8: the CPU).")
]
EvalPrecision = Annotated[
    Precision | None, Opt("--precision", help=EVAL_PRECISION_HELP, show_default=False)
]
Window = Annotated[int | None, Opt("--window", help=WINDOW_HELP, show_default=False)]


@friendly
def eval_command(
    run: RunArg,
    corpus: EvalCorpus = None,
    split: EvalSplit = "val",
    as_json: JsonOption = False,
    device: EvalDevice = "auto",
    unknown: UnknownInCorpus = "error",
    impl: ImplOption = None,
    precision: EvalPrecision = None,
    window: Window = None,
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
        if window is not None:
            raise CharlmError(f"--window {window}: scores one text; give --corpus a single file")
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
        window=window,
    )
    scored = str(corpus) if corpus is not None else f"{split} split"
    if window is not None:
        scored += f", fresh {window}-character windows"
    if as_json:
        typer.echo(json.dumps({"scored": scored, **result.to_dict()}))
        return
    Console().print(eval_table(run, scored, result))


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
        err.print(f"skipped {name}: fewer than 2 characters", markup=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps({"scored": str(corpus), **found.to_dict()}))
        return
    Console().print(eval_files_table(run, corpus, found))
