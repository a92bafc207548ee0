"""`charlm export`: a run's model as a weights-only, ONNX or TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charlm.cli.app import friendly
from charlm.cli.choices import ExportDtype, ExportFormat
from charlm.cli.options import RunArg


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


FORMAT_HELP = (
    "weights (safetensors, read by charlm.load, sample and eval), onnx (one recurrent step; "
    "needs the export extra) or torchscript (the same step). See docs/api.md."
)
DTYPE_HELP = "weights only: store them in bf16 or fp16 (half the size) instead of fp32."
Format = Annotated[ExportFormat, typer.Option("--format", "-f", help=FORMAT_HELP)]
Out = Annotated[Path, typer.Option("--out", "-o", help="The file to write.")]
Dtype = Annotated[ExportDtype | None, typer.Option("--dtype", help=DTYPE_HELP, show_default=False)]
Force = Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")]


@friendly
def export(run: RunArg, fmt: Format, out: Out, dtype: Dtype = None, force: Force = False) -> None:
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
