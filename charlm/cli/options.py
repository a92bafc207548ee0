"""Arguments and options that several commands share, declared once in Typer's Annotated form:
a command's signature reads `run: RunArg` or `impl: ImplOption = None`, and its `--help` shows
the same words wherever the option appears."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.choices import Impl, SamplePrecision, Unknown
from charlm.cli.complete import complete_run

RUN_HELP = "A run folder (best checkpoint, else last) or a checkpoint."
UNKNOWN_HELP = (
    "Characters of the {what} outside the model's vocabulary: error (name them and stop), skip "
    "(drop them) or replace (use the unknown symbol of a model trained with "
    "data.min_char_count > 1)."
)
IMPL_HELP = (
    "Run the weights on `fused` (nn.LSTM/nn.GRU) or `reference` (charlm/cells.py) "
    "cells; default: the one the model was trained with."
)
PRECISION_HELP = (
    "fp32; bf16: matrix products in bfloat16 (probabilities move by about 1%); int8: "
    "weights in 8 bits, CPU only; auto: times a few steps in each and takes the fastest, if "
    "1.1x fp32's speed or more (named on stderr). Any but fp32 can change a seed's text; "
    "`charlm eval RUN --precision P` shows what one costs your model."
)

RunArg = Annotated[Path, typer.Argument(help=RUN_HELP, autocompletion=complete_run)]
ImplOption = Annotated[Impl | None, typer.Option("--impl", help=IMPL_HELP)]
PrecisionOption = Annotated[SamplePrecision, typer.Option("--precision", help=PRECISION_HELP)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")]


def _unknown(what: str) -> typer.models.OptionInfo:
    return typer.Option("--unknown", help=UNKNOWN_HELP.format(what=what))


# --unknown, its help naming where the characters come from.
UnknownInPrime = Annotated[Unknown, _unknown("prime")]
UnknownInCorpus = Annotated[Unknown, _unknown("--corpus")]
UnknownInPrompts = Annotated[Unknown, _unknown("prompts")]
