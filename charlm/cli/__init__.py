"""The `charlm` command: a thin Typer layer over the library.

Each command parses its options, calls library functions and shows the result (`views`).
Library imports happen inside the commands, so `charlm --help` never loads torch. The commands
are registered here, in the order `charlm --help` lists them, each as a `CharlmCommand` (how
charlm's help looks: see charlm.cli.app).
"""

from __future__ import annotations

import functools

from charlm.cli import data, export, presets, runs, sample, serve, train
from charlm.cli.app import CharlmCommand, app, main

command = functools.partial(app.command, cls=CharlmCommand)
command()(train.train)
command()(sample.sample)
command(name="eval")(sample.eval_command)
command()(train.sweep)
command()(presets.presets)
command()(runs.runs)
command()(runs.compare)
command()(runs.info)
command()(export.export)
command()(serve.serve)
app.add_typer(data.data_app, name="data")

__all__ = ["app", "main"]
