"""`charlm data prepare` and `charlm data fetch`: corpora made ready for training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from charlm.cli.app import HELP_SETTINGS, CharlmCommand, CharlmGroup, friendly, split_train_args
from charlm.cli.complete import complete_corpus_name
from charlm.cli.options import JsonOption
from charlm.cli.views import corpus_table, err

data_app = typer.Typer(
    cls=CharlmGroup,
    context_settings=HELP_SETTINGS,
    no_args_is_help=True,
    help="Prepare corpora: encode them into the id cache training reads, fetch classic ones.",
)


Opt = typer.Option
PREPARE_HELP = (
    "A file, folder or glob (default: data.corpus, else the built-in corpus), then dotted "
    "overrides such as data.min_char_count=5."
)
PrepareArgs = Annotated[
    list[str] | None,
    typer.Argument(metavar="[CORPUS] [KEY=VALUE]...", help=PREPARE_HELP, show_default=False),
]
StartConfig = Annotated[Path | None, Opt("--config", "-c", help="A YAML config to start from.")]


@data_app.command("prepare", cls=CharlmCommand)
@friendly
def data_prepare(
    args: PrepareArgs = None, config: StartConfig = None, as_json: JsonOption = False
) -> None:
    """Encode a corpus into its id cache (or check the cache is current) and show statistics."""
    from charlm.cache import corpus_statistics, prepare_corpus
    from charlm.config import load_config

    corpus, overrides = split_train_args(args or [])
    if corpus is not None:
        overrides = [f"data.corpus={corpus}", *overrides]
    data = load_config(config, overrides).data
    report = corpus_statistics(prepare_corpus(data), data)
    if as_json:
        typer.echo(json.dumps(report))
        return
    Console(highlight=False).print(corpus_table(report))


CorpusName = Annotated[
    str, typer.Argument(help="The corpus: tinyshakespeare.", autocompletion=complete_corpus_name)
]
Url = Annotated[str | None, Opt("--url", help="Download from here instead.")]
Dest = Annotated[Path, Opt("--dest", help="Folder to save it in.")]
Timeout = Annotated[float, Opt("--timeout", help="Network timeout in seconds.")]


@data_app.command("fetch", cls=CharlmCommand)
@friendly
def data_fetch(
    name: CorpusName, url: Url = None, dest: Dest = Path("data"), timeout: Timeout = 30.0
) -> None:
    """Download a classic corpus, verified by length and SHA-256 (a mismatch saves nothing)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from charlm.fetch import fetch

    # A bar on a terminal only, from the first bytes (bytes, of the total when the server says
    # it, and the rate); it goes when the download ends, leaving the one line below.
    columns = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    bar = Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=err,
                   transient=True, disable=not err.is_interactive)  # fmt: skip
    task = bar.add_task(name, total=None)

    def show(done: int, total: int | None) -> None:
        bar.start()  # once: a file already present draws nothing
        bar.update(task, completed=done, total=total)

    try:
        path, downloaded = fetch(name, dest, url, timeout, progress=show)
    finally:
        bar.stop()
    what = "downloaded and verified" if downloaded else "already present and verified"
    err.print(f"{path}: {what}", markup=False, soft_wrap=True)
