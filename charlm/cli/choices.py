"""The fixed sets of values options take, as Literal types: `--help` lists them (`<a|b|c>`),
Typer refuses any other value in one line, and shells complete them.

Written out here rather than read from the library, whose modules import torch; a test checks
each against the library's own list, and the library still checks what it is given.
"""

from __future__ import annotations

from typing import Literal

Unknown = Literal["error", "skip", "replace"]  # charlm.vocab.UNKNOWN_POLICIES
Impl = Literal["fused", "reference"]  # charlm.config.ModelConfig.impl
Precision = Literal["fp32", "bf16", "int8"]  # charlm.precision.SAMPLE_PRECISIONS
SamplePrecision = Literal["fp32", "bf16", "int8", "auto"]
# Where --device reaches charlm.model.resolve_device (through load_model), which decides what
# this machine has; `auto` picks there too (sample: the faster of CPU and GPU, timed).
Device = Literal["cpu", "cuda", "mps", "auto"]
ServeDevice = Literal["cpu", "cuda", "mps"]  # charlm serve checks its own (no `auto`)
Split = Literal["val", "test", "train"]
ExportFormat = Literal["weights", "onnx", "torchscript"]  # charlm.export.FORMATS
ExportDtype = Literal["fp32", "bf16", "fp16"]  # charlm.export.DTYPES
