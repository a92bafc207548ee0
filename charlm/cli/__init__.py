"""The `charlm` command: a thin Typer layer over the library.

Each command parses its options, calls library functions and shows the result (`views`).
Library imports happen inside the commands, so `charlm --help` never loads torch. The commands
are registered here, in the order `charlm --help` lists them.
"""

from __future__ import annotations

from charlm.cli import data, export, runs, sample, serve, train
from charlm.cli.app import app, main

app.command()(train.train)
app.command()(sample.sample)
app.command(name="eval")(sample.eval_command)
app.command()(train.sweep)
app.command()(runs.runs)
app.command()(runs.compare)
app.command()(runs.info)
app.command()(export.export)
app.command()(serve.serve)
app.add_typer(data.data_app, name="data")

__all__ = ["app", "main"]
