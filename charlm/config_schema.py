"""The config's schema: three frozen dataclasses (`data`, `model`, `train`), each key with its
default and its help beside it. Loading, overrides and validation are charlm.config's, which
re-exports these names; this module imports nothing of charlm's, so anything may import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

BUILTIN_CORPUS = "builtin:stdlib"
# torch seeds are 64-bit; signed leaves room for the seed + rank + step offsets of dropout.
MAX_SEED = 2**63 - 1
# Experiment trackers a run can feed (charlm.loggers runs them).
LoggerName = Literal["tensorboard", "mlflow", "wandb"]


def _help(text: str) -> Any:
    return {"help": text}


@dataclass(frozen=True)
class DataConfig:
    corpus: str | None = field(
        default=None,
        metadata=_help(
            "Text file, folder (all text files under it, sorted) or glob. Empty means the "
            f"built-in corpus `{BUILTIN_CORPUS}` (this Python's standard-library sources)."
        ),
    )
    val_fraction: float = field(default=0.1, metadata=_help("Last fraction of the text for val."))
    test_fraction: float = field(
        default=0.0, metadata=_help("Fraction at the very end for test (0: no test split).")
    )
    encoding: str = field(default="utf-8", metadata=_help("Text encoding of the corpus files."))
    errors: Literal["strict", "replace"] = field(
        default="strict",
        metadata=_help("Undecodable bytes: `strict` stops with an error, `replace` uses U+FFFD."),
    )
    newline: Literal["lf", "keep"] = field(
        default="lf",
        metadata=_help(
            "Line endings: `lf` turns \\r\\n and lone \\r into \\n (one newline symbol whatever "
            "system wrote the file), `keep` leaves them as they are."
        ),
    )
    min_char_count: int = field(
        default=1,
        metadata=_help(
            "Characters seen fewer times than this become one unknown symbol (U+FFFD), so stray "
            "characters do not swamp the vocabulary (1: off)."
        ),
    )
    separator: str = field(
        default="",
        metadata=_help(
            "Text put between the files of a folder or glob corpus; escapes such as \\n and "
            "\\t are understood (empty: the files are joined as they are)."
        ),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=_help(
            "Folder for the cached id file of the encoded corpus. Empty: a `.charlm-cache` folder "
            "beside the corpus file (inside a folder corpus); the user cache folder (on Linux "
            "$XDG_CACHE_HOME/charlm, else ~/.cache/charlm; on macOS ~/Library/Caches/charlm; on "
            "Windows %LOCALAPPDATA%\\charlm\\Cache) for the built-in corpus, a glob, or a place "
            "that cannot be written."
        ),
    )


@dataclass(frozen=True)
class ModelConfig:
    cell: Literal["lstm", "gru"] = field(default="lstm", metadata=_help("Recurrent cell."))
    embedding_dim: int = field(default=64, metadata=_help("Size of the character embedding."))
    hidden_size: int = field(default=256, metadata=_help("Hidden units per recurrent layer."))
    num_layers: int = field(default=2, metadata=_help("Stacked recurrent layers."))
    dropout: float = field(
        default=0.0, metadata=_help("Dropout between layers and before the output head.")
    )
    impl: Literal["fused", "reference"] = field(
        default="fused",
        metadata=_help(
            "`fused`: nn.LSTM / nn.GRU (cuDNN on GPU, oneDNN's LSTM on CPU; a GRU trains on the "
            "CPU through charlm/cpu/gru.py); `reference`: the cells written out from their "
            "equations in charlm/cells.py (same weights, same numbers)."
        ),
    )
    gru_reset: Literal["after", "before"] = field(
        default="after",
        metadata=_help(
            "GRU candidate: the reset gate applied `after` the hidden product (nn.GRU and cuDNN) "
            "or `before` it (the classic GRU; model.impl=reference only). A different model, "
            "not a different kernel."
        ),
    )


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = field(default=32, metadata=_help("Parallel streams per step."))
    seq_len: int = field(default=128, metadata=_help("Characters per stream per step (BPTT)."))
    lr: float = field(default=3e-3, metadata=_help("Peak learning rate (AdamW)."))
    min_lr_ratio: float = field(
        default=0.05, metadata=_help("Cosine decay ends at lr * min_lr_ratio.")
    )
    warmup_steps: int = field(default=50, metadata=_help("Linear warm-up steps."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    beta1: float = field(default=0.9, metadata=_help("AdamW's first-moment decay."))
    beta2: float = field(default=0.99, metadata=_help("AdamW's second-moment decay."))
    max_steps: int | None = field(
        default=2000, metadata=_help("Step budget (empty: none). The first budget hit stops.")
    )
    max_time: float | None = field(
        default=None, metadata=_help("Training-time budget in seconds (empty: none).")
    )
    eval_interval: int | None = field(
        default=200, metadata=_help("Steps between val evaluations (empty: by time only).")
    )
    eval_every_s: float | None = field(
        default=None,
        metadata=_help(
            "Also evaluate once this many seconds of training have passed since the last eval "
            "(empty: by steps only); a GPU runs thousands of steps a minute."
        ),
    )
    eval_chars: int | None = field(
        default=None,
        metadata=_help(
            "Score evals, and pick the best checkpoint, on the first N val characters (empty: "
            "all); the run's final score is always the whole val split."
        ),
    )
    eval_streams: int = field(
        default=20, metadata=_help("Val is scored as this many contiguous segments side by side.")
    )
    log_interval: int = field(default=10, metadata=_help("Steps between metrics.jsonl lines."))
    checkpoint_interval: int | None = field(
        default=500, metadata=_help("Steps between checkpoints (empty: by time only).")
    )
    checkpoint_every_s: float | None = field(
        default=None,
        metadata=_help(
            "Also checkpoint once this many seconds have passed since the last checkpoint "
            "(empty: by steps only)."
        ),
    )
    keep_last: int = field(default=3, metadata=_help("Step checkpoints kept (plus the best)."))
    grad_clip: float = field(
        default=1.0, metadata=_help("Clip the global gradient norm to this (0: off).")
    )
    ema_decay: float | None = field(
        default=None,
        metadata=_help(
            "Keep an exponential moving average of the weights, updated every step with this "
            "decay (0.995 weighs roughly the last 200 steps; early on less, min(decay, "
            "(1 + step) / (10 + step))), and evaluate, checkpoint and sample that instead of "
            "the latest weights (empty: off)."
        ),
    )
    seed: int = field(default=1337, metadata=_help("Seed for weights, dropout and sampling."))
    device: Literal["auto", "cpu", "cuda", "mps"] = field(
        default="auto",
        metadata=_help(
            "`cuda` (an NVIDIA GPU), `mps` (an Apple GPU) or `cpu`; `auto` takes CUDA, else mps, "
            "else the CPU."
        ),
    )
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = field(
        default="fp32",
        metadata=_help(
            "Matrix products in `fp32` (strict, also on a GPU), `tf32` (a CUDA GPU's TF32 "
            "products; fp32 elsewhere), or autocast to `bf16` or `fp16` (fp16 on CUDA only, with "
            "a gradient scaler); `auto`: times a training step at start and takes bf16 where the "
            "hardware has it and the step runs at least 1.1x faster in it, else fp32 on a CPU "
            "and tf32 on a CUDA GPU (on mps: fp32); decided once per run. Weights and optimizer "
            "state stay fp32."
        ),
    )
    tensorboard: bool = field(
        default=False,
        metadata=_help(
            "Also log metrics to RUN/tensorboard/; the same as tensorboard in train.loggers."
        ),
    )
    loggers: tuple[LoggerName, ...] = field(
        default=(),
        metadata=_help(
            "Experiment trackers to feed the run's config and metrics, e.g. [mlflow, wandb]: "
            "any of tensorboard, mlflow, wandb, each an extra (`pip install -e '.[mlflow]'`)."
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=_help(
            "Fine-tune: start from this run's (best, else newest) checkpoint or checkpoint file. "
            "Weights, vocabulary and model keys come from it; optimizer, schedule, step and "
            "data position start fresh (empty: a new model)."
        ),
    )
    batching: Literal["stream", "random"] = field(
        default="stream",
        metadata=_help(
            "`stream`: contiguous streams with the hidden state carried from batch to batch; "
            "`random`: windows at seeded random places, each from a fresh state."
        ),
    )


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
