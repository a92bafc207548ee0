"""What the commands show: the consoles and the result tables (training progress is
charlm.cli.progress).

Tables go to stdout, progress and messages to stderr. Library objects arrive as plain arguments;
nothing here imports torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

err = Console(stderr=True, highlight=False)


def show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """charlm's own warnings (a corpus's skipped files, say) as one `warning:` line on stderr;
    any other as Python shows it."""
    if category.__module__.startswith("charlm."):
        err.print(f"warning: {message}", markup=False, soft_wrap=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


# The command line shows warnings this way from the moment it is imported (it imports this first).
_python_showwarning = warnings.showwarning
warnings.showwarning = show_warning


# ---------------------------------------------------------------------------------- tables
def table_console() -> Console:
    """stdout; piped output gets a wide fixed width so tables are not squeezed to 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def train_table(result: Any) -> Table:
    """`charlm train`'s summary of a finished run."""
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
    return table


def eval_table(run: Path, scored: str, result: Any) -> Table:
    """`charlm eval` of one split or file: a single row of scores."""
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
    return table


def eval_files_table(run: Path, corpus: Path, found: Any) -> Table:
    """`charlm eval --corpus FOLDER`: one row per file and the total."""
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
    return table


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


STATUS_STYLE = {"finished": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def _status(status: str) -> str:
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


def runs_table(folder: Path, found: list[Any]) -> Table:
    """`charlm runs`: a row per run found."""
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
    return table


def comparison_table(comparison: Any, title: str) -> Table:
    """Rows are runs; columns are the config keys that differ, then the results."""
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


def print_info(report: dict[str, Any]) -> None:
    """`charlm info`: the summary and config (when a checkpoint is intact), then every file."""
    out = Console(highlight=False)
    summary = report["summary"]
    if summary is not None:
        out.print(_summary_table(report))
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
        files.add_row(escape(entry["file"]), step, f"{entry['bytes']:,}", escape(status))
    out.print(files)
    if summary is None:
        err.print("[bold red]error:[/] no intact checkpoint found", markup=True)


def _summary_table(report: dict[str, Any]) -> Table:
    summary = report["summary"]
    table = Table(title=f"charlm info: {report['target']}", show_header=False)
    table.title_justify = "left"
    table.add_column("what")
    table.add_column("value", overflow="fold")

    def bpc(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    table.add_row("described checkpoint", escape(summary["checkpoint"]))
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
        table.add_row("resume", escape(report["resume"]))
    if report.get("train_further"):
        table.add_row("train further", escape(report["train_further"]))
    return table


def corpus_table(report: dict[str, Any]) -> Table:
    """`charlm data prepare`: the statistics of `charlm.cache.corpus_statistics`."""
    table = Table(title=f"charlm data prepare: {report['corpus']}", show_header=False)
    table.title_justify = "left"
    table.add_column("what")
    table.add_column("value", overflow="fold")

    def shown(pairs: list[list[Any]]) -> str:
        return ", ".join(f"{c!r} {n:,}" for c, n in pairs)

    splits = report["splits"]
    table.add_row("files", f"{report['files']:,}")
    table.add_row("characters", f"{report['chars']:,}")
    table.add_row("vocabulary", f"{report['vocab_size']:,} symbols ({report['dtype']} ids)")
    table.add_row("most frequent", shown(report["most_frequent"]))
    table.add_row("least frequent", shown(report["least_frequent"]))
    table.add_row(
        "splits", f"train {splits['train']:,} | val {splits['val']:,} | test {splits['test']:,}"
    )
    table.add_row("sha256", report["sha256"])
    table.add_row("cache", f"{report['cache']} ({report['cache_status']})")
    return table
