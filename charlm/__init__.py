"""charlm: train character-level LSTM and GRU language models from a YAML config.

Importing the package is cheap (no torch); the heavy modules load on first use so `charlm --help`
answers at once.
"""

from __future__ import annotations

from typing import Any

from charlm.errors import CharlmError

__version__ = "0.1.0"
__all__ = [
    "CharlmError",
    "Model",
    "__version__",
    "evaluate",
    "generate",
    "load",
    "load_config",
    "train",
]

_LAZY = {
    "load_config": ("charlm.config", "load_config"),
    "train": ("charlm.training", "train"),
    "generate": ("charlm.sample", "generate"),
    "evaluate": ("charlm.evaluate", "evaluate_run"),
    "load": ("charlm.api", "load"),
    "Model": ("charlm.api", "Model"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'charlm' has no attribute {name!r}")
