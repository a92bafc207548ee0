"""`charlm presets`: the configs and experiments that ship with charlm, by name."""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import TYPE_CHECKING

import typer

from charlm.cli.app import friendly

if TYPE_CHECKING:
    from charlm.presets import Preset


@friendly
def presets() -> None:
    """The shipped configs (charlm train NAME) and sweep experiments (charlm sweep NAME)."""
    from charlm.errors import CharlmError
    from charlm.presets import list_presets, presets_dir

    configs, experiments = list_presets(), list_presets(experiments=True)
    if not configs:
        raise CharlmError(f"{presets_dir()}: no presets there; reinstall charlm")
    # On a terminal each description wraps under itself; into a pipe each preset is one line.
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    for line in listing(configs, experiments, columns):
        typer.echo(line)


def listing(configs: list[Preset], experiments: list[Preset], columns: int = 0) -> list[str]:
    """The lines of `charlm presets`, wrapped to `columns` (0: never wrapped)."""
    width = max(len(p.name) for p in [*configs, *experiments])
    indent = " " * (width + 4)
    lines = []
    for title, found in (("train NAME", configs), ("sweep NAME", experiments)):
        lines.append(f"charlm {title}:")
        for preset in found:
            line = f"  {preset.name:<{width}}  {preset.description}"
            if columns > len(indent) + 20:
                line = textwrap.fill(line, columns - 1, subsequent_indent=indent)
            lines.append(line)
    return lines
