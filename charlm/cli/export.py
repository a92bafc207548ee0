"""`charlm export`: a run's model as a weights-only, ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path

import typer

from charlm.cli.app import friendly
from charlm.cli.choices import ExportDtype, ExportFormat
from charlm.cli.complete import complete_run
from charlm.cli.sample import RUN_HELP


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


@friendly
def export(
    run: Path = typer.Argument(..., help=RUN_HELP, autocompletion=complete_run),
    fmt: ExportFormat = typer.Option(
        ...,
        "--format",
        "-f",
        help="weights (safetensors, read by charlm.load, sample and eval), onnx (one recurrent "
        "step; needs the export extra) or torchscript (the same step). See docs/api.md.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The file to write."),
    dtype: ExportDtype | None = typer.Option(
        None,
        "--dtype",
        help="weights only: store them in bf16 or fp16 (half the size) instead of fp32.",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Write a run's model as a weights-only, ONNX or TorchScript file.

    The file's size is reported; the step formats are checked against PyTorch on a probe before
    the file is kept.
    """
    from charlm.export import TOLERANCE
    from charlm.export import export as run_export

    done = run_export(run, fmt, out, dtype=dtype, force=force)
    typer.echo(
        f"wrote {done.path} ({done.format}{', ' + dtype if dtype else ''}): "
        f"{_mb(done.bytes)}; the checkpoint {done.checkpoint} is {_mb(done.checkpoint_bytes)}"
    )
    if done.max_diff is not None:
        typer.echo(
            f"checked: max logit difference from PyTorch {done.max_diff:.3g} over a "
            f"{done.probe_steps}-step probe (limit {TOLERANCE:g})"
        )
