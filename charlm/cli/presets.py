"""`charlm presets`: the configs and experiments that ship with charlm, by name."""

from __future__ import annotations

import typer

from charlm.cli.app import friendly


@friendly
def presets() -> None:
    """The shipped configs (charlm train NAME) and sweep experiments (charlm sweep NAME)."""
    from charlm.errors import CharlmError
    from charlm.presets import list_presets, presets_dir

    configs, experiments = list_presets(), list_presets(experiments=True)
    if not configs:
        raise CharlmError(f"{presets_dir()}: no presets there; reinstall charlm")
    width = max(len(p.name) for p in [*configs, *experiments])
    for title, found in (("train NAME", configs), ("sweep NAME", experiments)):
        typer.echo(f"charlm {title}:")
        for preset in found:
            typer.echo(f"  {preset.name:<{width}}  {preset.description}")
