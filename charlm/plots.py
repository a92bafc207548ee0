"""PNG plots of training curves, drawn headless with matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` and an Agg canvas directly, never pyplot, so
plotting works without a display, leaves no global state behind, and ignores any `MPLBACKEND`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from charlm.errors import CharlmError
from charlm.runs import RunInfo, read_run

DPI = 100
CURVES_SIZE = (8.0, 4.5)  # inches: 800 x 450 pixels
COMPARE_SIZE = (13.0, 5.0)  # inches: 1300 x 500 pixels
CURVES_NAME = "curves.png"


def _integer_steps(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _log_x(ax: Any) -> None:
    """A log x axis labelled in plain numbers (2000, not 2x10^3)."""
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _figure(size: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_plot_path(path: Path) -> None:
    """Refuse a plot whose folder does not exist: a typo would otherwise grow a tree of folders."""
    folder = path.absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise CharlmError(f"--plot {path}: the folder {folder} {what}; create it first")


def _save(fig: Any, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as e:
        raise CharlmError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    return path


def _describe(run: RunInfo) -> str:
    model = run.config.get("model")
    model = model if isinstance(model, dict) else {}
    parts = [f"{model.get('num_layers', '?')}x{model.get('hidden_size', '?')} {run.cell or '?'}"]
    if run.parameters:
        parts.append(f"{run.parameters:,} params")
    return ", ".join(parts)


def eval_scope(run: RunInfo) -> str:
    """What the interval evals scored: the whole val split, or its first train.eval_chars."""
    chars = run.interval_eval_chars
    return "whole split" if chars is None else f"first {chars:,} val chars"


def scores_line(run: RunInfo) -> str:
    """The run's scores, each saying what it scored: the final eval (always the whole val split,
    from summary.json) and the best of the evals that picked the best checkpoint (the first
    train.eval_chars of val, when set)."""
    final, best = run.final_whole_bpc, run.best_val_bpc
    parts = [
        f"final val {final:.3f} bpc (whole split)"
        if final is not None
        else f"no final eval ({run.status})"
    ]
    if best is not None:
        parts.append(f"best eval {best:.3f} ({eval_scope(run)})")
    return "; ".join(parts)


def _train_bpc(run: RunInfo) -> list[dict[str, float]]:
    """Train loss as bits per character, with the step and time it was logged at."""
    return [
        {**row, "bpc": row["train_loss"] / math.log(2)}
        for row in run.metrics
        if "train_loss" in row
    ]


def curves_figure(run: RunInfo) -> Any:
    """Train and val bpc against step, the final whole-split score as a star at the last step."""
    train = [(r["step"], r["bpc"]) for r in _train_bpc(run)]
    val = [(r["step"], r["val_bpc"]) for r in run.val_points]
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", lw=1.2)
    if val:
        label = f"val evals ({eval_scope(run)})"
        ax.plot(*zip(*val, strict=True), label=label, color="tab:orange", marker="o", ms=3, lw=2)
    final = run.final_whole_bpc
    if final is not None and run.steps is not None:
        label = f"final val {final:.3f} (whole split)"
        ax.plot([run.steps], [final], ls="none", marker="*", ms=12, color="tab:red", label=label)
    ax.set_title(f"{run.name}: {_describe(run)}\n{scores_line(run)}", fontsize="medium")
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("bits per character")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend()
    return fig


def plot_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Train and val bits per character against step for one run; `RUN/curves.png` by default."""
    run = read_run(run_dir)
    return _save(curves_figure(run), Path(path) if path is not None else run.path / CURVES_NAME)


def _shared_scope(runs: Sequence[RunInfo]) -> str | None:
    """The interval evals' `eval_scope` when every plotted run shares it, else None."""
    scopes = {eval_scope(run) for run in runs if run.val_points}
    return scopes.pop() if len(scopes) == 1 else None


def _run_label(run: RunInfo, scope_shown: bool) -> str:
    final, best = run.final_whole_bpc, run.best_val_bpc
    scores = [f"final {final:.3f}" if final is not None else run.status]
    if best is not None:
        scores.append(f"best {best:.3f}" + ("" if scope_shown else f" ({eval_scope(run)})"))
    return f"{run.name}: {', '.join(scores)}"


def _draw_run(axes: Sequence[Any], run: RunInfo, colour: str, scale: float, label: str) -> None:
    """One run on both axes (by step, by time): val solid with dots, train faint, final star."""
    by_step, by_time = axes
    val, train = run.val_points, _train_bpc(run)
    faint = {"color": colour, "lw": 1.0, "alpha": 0.35}
    by_step.plot([r["step"] for r in train], [r["bpc"] for r in train], **faint)
    by_step.plot([p["step"] for p in val], [p["val_bpc"] for p in val], color=colour,
                 marker="o", ms=3, lw=1.8, label=label)  # fmt: skip
    timed, timed_train = (
        [p for p in val if "elapsed_s" in p],
        [r for r in train if "elapsed_s" in r],
    )
    by_time.plot([r["elapsed_s"] / scale for r in timed_train], [r["bpc"] for r in timed_train],
                 **faint)  # fmt: skip
    by_time.plot([p["elapsed_s"] / scale for p in timed], [p["val_bpc"] for p in timed],
                 color=colour, marker="o", ms=3, lw=1.8)  # fmt: skip
    final = run.final_whole_bpc
    if final is not None and run.steps is not None and run.elapsed_s is not None:
        star = {"ls": "none", "marker": "*", "ms": 11, "color": colour}
        by_step.plot([run.steps], [final], **star)
        by_time.plot([run.elapsed_s / scale], [final], **star)


def comparison_figure(runs: Sequence[RunInfo], log_x: bool = False) -> Any:
    """Val bpc (solid) and train bpc (faint, same colour) against step and against training
    time, one colour per run; a star marks each run's final whole-split score."""
    from matplotlib.lines import Line2D

    fig = _figure(COMPARE_SIZE)
    axes = fig.subplots(1, 2)
    minutes = max((run.elapsed_s or 0.0 for run in runs), default=0.0) >= 180
    scope = _shared_scope(runs)
    for i, run in enumerate(runs):
        label = _run_label(run, scope is not None)
        _draw_run(axes, run, f"C{i % 10}", 60.0 if minutes else 1.0, label)
    by_step, by_time = axes
    by_step.set_xlabel("step")
    by_time.set_xlabel("training time (min)" if minutes else "training time (s)")
    for ax, what in ((by_step, "step"), (by_time, "wall-clock time")):
        ax.set_ylabel("bits per character")
        ax.grid(True, alpha=0.3)
        ax.set_title(f"val (solid) and train (faint) bpc by {what}")
        if log_x:
            _log_x(ax)
    if not log_x:
        _integer_steps(by_step)
    if any(run.val_points for run in runs):
        keys = [
            Line2D([], [], color="gray", alpha=0.35, label="train"),
            Line2D([], [], color="gray", marker="o", ms=3, label="val evals"),
            Line2D([], [], color="gray", ls="none", marker="*", ms=11, label="final (whole split)"),
        ]
        by_step.legend(handles=keys, fontsize="small")
        title = "run: final val bpc (whole split), best eval"
        title += f" ({scope})" if scope is not None else ""
        by_time.legend(*by_step.get_legend_handles_labels(), title=title, fontsize="small")
    return fig


def plot_comparison(runs: Sequence[RunInfo], path: str | Path, log_x: bool = False) -> Path:
    """`comparison_figure` of the runs, saved as a PNG."""
    fig = comparison_figure(runs, log_x)
    check_plot_path(Path(path))
    return _save(fig, Path(path))
