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

from charlm.cli.fit import Cell, Fitted, Grid, text, whole

# Messages and log lines are never hard-wrapped at the console's width (a file or a pipe gets one
# line per message, whatever its length); tables still fit the width.
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


def _key_values(title: str, pairs: list[tuple[str, str]]) -> Fitted:
    """A two-column table of labels and sentences (which wrap, keeping numbers whole)."""
    rows = [[text(label), text(value)] for label, value in pairs]
    grid = Grid([text("what"), text("value")], rows, [False, False], title, show_header=False)
    return Fitted(grid, turn=False)


def train_table(result: Any) -> Fitted:
    """`charlm train`'s summary of a finished run."""
    final = result.final_val
    pairs = [
        ("run folder", str(result.run_dir)),
        ("steps", f"{result.steps:,}"),
        ("time", f"{result.elapsed_s:.1f} s, of which evals {result.eval_s:.1f} s"),
        ("chars/s", f"{result.chars_per_s:,.0f} ({result.step_chars_per_s:,.0f} outside evals)"),
        ("parameters", f"{result.parameters:,}"),
        (
            "final val bpc",
            f"{final.bpc:.4f} (loss {final.loss:.4f}) on all {final.chars + 1:,} val chars",
        ),
    ]
    if result.interval_evals:
        best = f"{result.best_val_bpc:.4f} at step {result.best_step:,} (interval evals)"
        pairs.append(("best val bpc", best))
    pairs.append(("next", f"charlm sample {result.run_dir}"))
    return _key_values("charlm train", pairs)


EVAL_COLUMNS = ["loss (nats/char)", "bpc", "perplexity", "chars", "chars/s"]


def _scores(result: Any) -> list[Cell]:
    return [
        whole(f"{result.loss:.4f}"),
        whole(f"{result.bpc:.4f}"),
        whole(f"{result.perplexity:.3f}"),
        whole(f"{result.chars:,}"),
        whole(f"{result.chars_per_s:,.0f}"),
    ]


def eval_table(run: Path, scored: str, result: Any) -> Fitted:
    """`charlm eval` of one split or file: a single row of scores."""
    header = [text(column) for column in EVAL_COLUMNS]
    grid = Grid(
        header,
        [_scores(result)],
        [True] * 5,
        f"charlm eval: {escape(str(run))} on {escape(scored)}",
    )
    return Fitted(grid, turn=False)


def eval_files_table(run: Path, corpus: Path, found: Any) -> Fitted:
    """`charlm eval --corpus FOLDER`: one row per file and the total."""
    rows = []
    for name, result in [*found.files, ("total", found.total)]:
        shown = Path(name).relative_to(corpus) if corpus.is_dir() and name != "total" else name
        rows.append([text(shown), *_scores(result)])
    header = [text(column) for column in ["file", *EVAL_COLUMNS]]
    title = f"charlm eval: {escape(str(run))} on {escape(str(corpus))}"
    return Fitted(Grid(header, rows, [False] + [True] * 5, title, rows_are="files"))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _number(value: float | None, fmt: str) -> Cell:
    return whole("-" if value is None else format(value, fmt))


STATUS_STYLE = {"finished": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def _status(status: str) -> Cell:
    return Cell(f"[{STATUS_STYLE.get(status, 'white')}]{escape(status)}[/]", whole=True)


def _best_style(runs: list[Any]) -> Callable[[Any], Cell]:
    """Bold the lowest best val bpc among the rows, so the winner stands out."""
    scores = [r.best_val_bpc for r in runs if r.best_val_bpc is not None]
    best = min(scores) if scores else None
    return lambda r: (
        Cell(f"[bold green]{r.best_val_bpc:.4f}[/]", whole=True)
        if best is not None and r.best_val_bpc == best and len(runs) > 1
        else _number(r.best_val_bpc, ".4f")
    )


def runs_table(folder: Path, found: list[Any]) -> Fitted:
    """`charlm runs`: a row per run found."""
    header = [text(c) for c in ("run", "cell", "parameters", "steps", "time", "best val bpc")]
    best = _best_style(found)
    rows = [
        [
            text(run.name),
            text(run.cell or "-"),
            _number(run.parameters, ","),
            _number(run.steps, ","),
            whole(_seconds(run.elapsed_s)),
            best(run),
            _status(run.status),
        ]
        for run in found
    ]
    right = [False, False, True, True, True, True, False]
    title = f"charlm runs: {escape(str(folder))}"
    grid = Grid([*header, text("status")], rows, right, title, rows_are="runs")
    return Fitted(grid, turn=False)  # a list, however long: one row per run


RESULT_COLUMNS = ("best val bpc", "final val bpc", "chars/s", "parameters", "steps", "time")


def _config_value(value: Any) -> Cell:
    """A config value: numbers, booleans and none whole; strings (paths) may fold."""
    return text(value) if isinstance(value, str) else whole(value)


def comparison_table(comparison: Any, title: str) -> Fitted:
    """Rows are runs; columns are the config keys that differ, then the results. Shown on its
    side (runs as columns), or split into tables of a few runs, where that fits better."""
    best = _best_style(comparison.runs)
    rows = []
    for run in comparison.runs:
        values = run.flat_config()
        rows.append(
            [
                text(run.name),
                *[_config_value(values.get(key)) for key in comparison.differing],
                best(run),
                _number(run.final_val_bpc, ".4f"),
                _number(run.chars_per_s, ",.0f"),
                _number(run.parameters, ","),
                _number(run.steps, ","),
                whole(_seconds(run.elapsed_s)),
                _status(run.status),
            ]
        )
    header = [text(c) for c in ("run", *comparison.differing, *RESULT_COLUMNS, "status")]
    keys = len(comparison.differing)
    right = [False] + [False] * keys + [True] * len(RESULT_COLUMNS) + [False]
    same = len(comparison.runs[0].flat_config()) - keys
    caption = f"{same} other config keys are the same in every run"
    return Fitted(Grid(header, rows, right, escape(title), caption, rows_are="runs"))


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
    rows = []
    for entry in report["checkpoints"]:
        status = entry["status"] + (f": {entry['problem']}" if entry["problem"] else "")
        step = "-" if entry["step"] is None else f"{entry['step']:,}"
        rows.append([text(entry["file"]), whole(step), whole(f"{entry['bytes']:,}"), text(status)])
    header = [text(c) for c in ("file", "step", "bytes", "status")]
    grid = Grid(header, rows, [False, True, True, False], "checkpoint files", rows_are="files")
    out.print(Fitted(grid))
    if summary is None:
        err.print("[bold red]error:[/] no intact checkpoint found", markup=True)


def _summary_table(report: dict[str, Any]) -> Fitted:
    summary = report["summary"]

    def bpc(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    pairs = [
        ("described checkpoint", summary["checkpoint"]),
        ("step", f"{summary['step']:,}"),
        ("time trained", f"{summary['elapsed_s']:.1f} s"),
        ("parameters", f"{summary['parameters']:,}"),
        ("vocabulary size", str(summary["vocab_size"])),
        ("best val bpc", f"{bpc(summary['best_val_bpc'])} at step {summary['best_step']:,}"),
        ("last val bpc", bpc(summary["last_val_bpc"])),
        (
            "trained on",
            f"{summary['device']}, {summary['precision']} (torch {summary['torch_version']})",
        ),
    ]
    if report.get("resume"):
        pairs.append(("resume", report["resume"]))
    if report.get("train_further"):
        pairs.append(("train further", report["train_further"]))
    return _key_values(f"charlm info: {escape(str(report['target']))}", pairs)


def corpus_table(report: dict[str, Any]) -> Fitted:
    """`charlm data prepare`: the statistics of `charlm.cache.corpus_statistics`."""

    def shown(pairs: list[list[Any]]) -> str:
        return ", ".join(f"{c!r} {n:,}" for c, n in pairs)

    splits = report["splits"]
    pairs = [
        ("files", f"{report['files']:,}"),
        ("characters", f"{report['chars']:,}"),
        ("vocabulary", f"{report['vocab_size']:,} symbols ({report['dtype']} ids)"),
        ("most frequent", shown(report["most_frequent"])),
        ("least frequent", shown(report["least_frequent"])),
        ("splits", f"train {splits['train']:,} | val {splits['val']:,} | test {splits['test']:,}"),
        ("sha256", report["sha256"]),
        ("cache", f"{report['cache']} ({report['cache_status']})"),
    ]
    return _key_values(f"charlm data prepare: {escape(str(report['corpus']))}", pairs)
