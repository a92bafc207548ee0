"""TensorBoard logging, for users who already keep their experiments there: each metric as a
scalar at its step under RUN/tensorboard/, and the resolved config as text."""

from __future__ import annotations

from charlm import events as ev
from charlm.config import dump_yaml
from charlm.loggers.base import RunContext, numbers

PACKAGE = "tensorboard"
TENSORBOARD_DIR = "tensorboard"

# metrics.jsonl key -> TensorBoard tag; related curves share a prefix so they share a card.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_bpc": "bpc/val",
    "lr": "lr",
    "chars_per_s": "speed/chars_per_s",
    "train_bpc": "bpc/train",
}


def summary_writer_class() -> type:
    """torch's SummaryWriter (an ImportError without the tensorboard package)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def require() -> None:
    summary_writer_class()


class TensorBoardLogger:
    """Writes each logged metric as a scalar at its step under RUN/tensorboard/."""

    def __init__(self, run: RunContext) -> None:
        # A resumed run redoes the steps after its checkpoint: `purge_step` makes TensorBoard
        # hide what the interrupted attempt logged from there on, so the curves read as one run.
        purge_step = run.step + 1 if run.step else None
        writer_class = summary_writer_class()
        self.writer = writer_class(
            log_dir=str(run.run_dir / TENSORBOARD_DIR), purge_step=purge_step
        )
        # Indented by four spaces so TensorBoard's markdown shows it as a code block.
        config_yaml = dump_yaml(run.config)
        self.writer.add_text("config", "    " + config_yaml.replace("\n", "\n    "), 0)

    def handle(self, event: ev.Event) -> None:
        if not isinstance(event, ev.Logged):
            return
        values = numbers(event)
        for key, tag in TAGS.items():
            if key in values:
                self.writer.add_scalar(tag, values[key], event.step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def start(run: RunContext) -> TensorBoardLogger:
    return TensorBoardLogger(run)
