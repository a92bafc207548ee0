"""Optional TensorBoard logging, for users who already keep their experiments there.

TensorBoard is an extra (`pip install -e '.[tensorboard]'` in this checkout), so the import is
checked before a run starts and a missing package is a `CharlmError`, not a traceback an hour
into training. The logger consumes the trainer's `log` events, so the training loop itself knows
nothing about it.
"""

from __future__ import annotations

import math
from pathlib import Path

from charlm import events as ev
from charlm.errors import CharlmError

TENSORBOARD_DIR = "tensorboard"
MISSING = (
    "train.tensorboard: true needs the tensorboard package, which is not installed; "
    "install it with pip install tensorboard (or pip install -e '.[tensorboard]' in the charlm "
    "checkout) or set train.tensorboard=false"
)


def summary_writer_class() -> type:
    """torch's SummaryWriter, or a CharlmError saying how to install the extra."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CharlmError(MISSING) from None
    return SummaryWriter


# metrics.jsonl key -> TensorBoard tag; related curves share a prefix so they share a card.
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_bpc": "bpc/val",
    "lr": "lr",
    "chars_per_s": "speed/chars_per_s",
}


class TensorBoardLogger:
    """Writes each logged metric as a scalar at its step under RUN/tensorboard/."""

    def __init__(self, run_dir: Path, config_yaml: str, purge_step: int | None = None) -> None:
        """`purge_step`: the first step a resumed run redoes, so TensorBoard hides what the
        interrupted attempt logged from there on (the resumed run logs those steps again)."""
        writer_class = summary_writer_class()
        self.writer = writer_class(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        # Indented by four spaces so TensorBoard's markdown shows it as a code block.
        self.writer.add_text("config", "    " + config_yaml.replace("\n", "\n    "), 0)

    def handle(self, event: ev.Event) -> None:
        if not isinstance(event, ev.Logged):
            return
        row = event.row
        for key, tag in TAGS.items():
            if key in row:
                self.writer.add_scalar(tag, float(row[key]), event.step)
        if event.train_loss is not None:
            self.writer.add_scalar("bpc/train", event.train_loss / math.log(2), event.step)

    def wrap(self, callback: ev.Callback) -> ev.Callback:
        """A callback that logs each event here, then passes it on to `callback`."""

        def both(event: ev.Event) -> None:
            self.handle(event)
            callback(event)

        return both

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
