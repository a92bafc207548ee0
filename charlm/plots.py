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


def plot_curves(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Train and val bits per character against step for one run; `RUN/curves.png` by default."""
    run = read_run(run_dir)
    out = Path(path) if path is not None else run.path / CURVES_NAME
    train = [(r["step"], r["train_loss"] / math.log(2)) for r in run.metrics if "train_loss" in r]
    val = [(r["step"], r["val_bpc"]) for r in run.val_points]
    fig = _figure(CURVES_SIZE)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train", color="tab:blue", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="val", color="tab:orange", marker="o", ms=3, lw=2)
    best = run.best_val_bpc
    title = f"{run.name}: {_describe(run)}"
    if best is not None:
        title += f" (best val {best:.3f} bpc)"
    ax.set_title(title)
    ax.set_xlabel("step")
    _integer_steps(ax)
    ax.set_ylabel("bits per character")
    ax.grid(True, alpha=0.3)
    if train or val:
        ax.legend()
    return _save(fig, out)


def plot_comparison(runs: Sequence[RunInfo], path: str | Path) -> Path:
    """Val bpc against step and against training time, one line per run, in one PNG."""
    fig = _figure(COMPARE_SIZE)
    by_step, by_time = fig.subplots(1, 2)
    minutes = max((run.elapsed_s or 0.0 for run in runs), default=0.0) >= 180
    for i, run in enumerate(runs):
        points = run.val_points
        if not points:
            continue
        best = run.best_val_bpc
        label = run.name if best is None else f"{run.name} ({best:.3f})"
        style = {"color": f"C{i % 10}", "marker": "o", "ms": 3, "lw": 1.8, "label": label}
        by_step.plot([p["step"] for p in points], [p["val_bpc"] for p in points], **style)
        scale = 60.0 if minutes else 1.0
        timed = [p for p in points if "elapsed_s" in p]
        times = [p["elapsed_s"] / scale for p in timed]
        by_time.plot(times, [p["val_bpc"] for p in timed], **style)
    by_step.set_xlabel("step")
    _integer_steps(by_step)
    by_time.set_xlabel("training time (min)" if minutes else "training time (s)")
    for ax in (by_step, by_time):
        ax.set_ylabel("val bits per character")
        ax.grid(True, alpha=0.3)
    by_step.set_title("val bpc by step")
    by_time.set_title("val bpc by wall-clock time")
    if any(run.val_points for run in runs):
        by_time.legend(title="run (best val bpc)", fontsize="small")
    check_plot_path(Path(path))
    return _save(fig, Path(path))
