"""`charlm runs`, `charlm compare` and `charlm info`: what is in run folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import friendly
from charlm.cli.complete import complete_run
from charlm.cli.options import JsonOption
from charlm.cli.views import comparison_table, err, print_info, runs_table, table_console
from charlm.errors import CharlmError


def warn(message: str) -> None:
    """A run left out of a table: one line on stderr, the table goes on."""
    err.print(f"warning: {message}", markup=False, soft_wrap=True)


Opt = typer.Option
Folder = Annotated[Path, typer.Argument(help="A folder of runs (searched recursively).")]
JsonList = Annotated[bool, Opt("--json", help="Print a JSON list to stdout.")]


@friendly
def runs(folder: Folder = Path("runs"), as_json: JsonList = False) -> None:
    """A table of the runs under a folder: cell, size, steps, time, best val bpc, status."""
    from charlm.runs import find_runs

    found = find_runs(folder, warn=warn)
    if as_json:
        typer.echo(json.dumps([run.to_dict() for run in found], indent=2))
        return
    if not found:
        err.print(f"no runs under {folder}", markup=False)
        return
    table_console().print(runs_table(folder, found))


RUNS_HELP = "Run folders, or folders of runs (a sweep's --out folder)."
Runs = Annotated[
    list[str],
    typer.Argument(metavar="RUN...", help=RUNS_HELP, show_default=False,
                   autocompletion=complete_run),
]  # fmt: skip
PLOT_HELP = "Also draw val bpc (and, faint, train bpc) against step and time into this PNG."
Plot = Annotated[Path | None, Opt("--plot", help=PLOT_HELP)]
LogX = Annotated[bool, Opt("--log-x", help="Plot steps and time on a log scale.")]


@friendly
def compare(
    run_args: Runs, plot: Plot = None, log_x: LogX = False, as_json: JsonOption = False
) -> None:
    """The config keys that differ between runs, and their results side by side."""
    from charlm.runs import collect_runs, compare_runs

    if log_x and plot is None:
        raise CharlmError("--log-x: only changes the plot; add --plot FILE.png")
    if plot is not None and plot.suffix.lower() != ".png":
        raise CharlmError(f"--plot {plot}: expected a file name ending in .png")
    if plot is not None:
        from charlm.plots import check_plot_path

        check_plot_path(plot)
    comparison = compare_runs(collect_runs([Path(a) for a in run_args], warn=warn))
    if plot is not None:
        from charlm.plots import plot_comparison

        plot_comparison(comparison.runs, plot, log_x=log_x)
    if as_json:
        typer.echo(json.dumps(comparison.to_dict(), indent=2))
    else:
        table_console().print(comparison_table(comparison, "charlm compare"))
    if plot is not None:
        err.print(f"plot: {plot}", markup=False)


Target = Annotated[
    Path,
    typer.Argument(metavar="RUN|CHECKPOINT", help="A run folder or a file.",
                   autocompletion=complete_run),
]  # fmt: skip


@friendly
def info(target: Target, as_json: JsonOption = False) -> None:
    """Step, time trained, sizes, scores and config of a run, and whether each checkpoint is
    intact (exit code 1 when none is)."""
    from charlm.info import describe

    report = describe(target)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_info(report)
    if report["summary"] is None:
        raise typer.Exit(1)
