"""Weights & Biases: the resolved config, each metrics line at its step, the final scores in the
run summary, and the final checkpoint with config.yaml (a `model` artifact).

Offline unless W&B has been set up here (WANDB_MODE, WANDB_API_KEY or an identity token in the
environment, or a `wandb login` kept in ~/.netrc): the run is then written under RUN/wandb/ for
`wandb sync` to upload later, and training never waits on the network. The project is
WANDB_PROJECT, else the name of the folder that holds the run folder; the W&B run is named after
the run folder, and its id is kept in RUN/loggers.json so that a resumed run continues it.
"""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlsplit

from charlm import events as ev
from charlm.config import config_to_dict
from charlm.loggers.base import RunContext, final_checkpoint, final_numbers, numbers

PACKAGE = "wandb"
SETUP_VARIABLES = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")


def require() -> None:
    import wandb  # noqa: F401


def set_up() -> bool:
    """Whether the user has set W&B up here (else runs are logged offline)."""
    if any(os.environ.get(name) for name in SETUP_VARIABLES):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLogger:
    def __init__(self, run: RunContext) -> None:
        import wandb

        run_id = run.saved("wandb").get("id")
        self.run_dir = run.run_dir
        self.exit_code = 1  # until the run says it finished
        self.run: Any = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or run.group,
            name=run.name,
            id=run_id if isinstance(run_id, str) else None,
            resume="allow",
            dir=str(run.run_dir),
            config=config_to_dict(run.config),
            allow_val_change=True,  # a resume may change a budget or the device
            mode=None if set_up() else "offline",
            settings=wandb.Settings(console="off"),  # the terminal stays charlm's
        )
        run.save("wandb", {"id": self.run.id})
        self.config_file = run.config_file

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.Logged):
            self.run.log(numbers(event), step=event.step)
        elif isinstance(event, ev.Ended):
            import wandb

            self.run.summary.update(final_numbers(event.summary))
            checkpoint = final_checkpoint(self.run_dir, event.summary)
            if checkpoint is not None:
                artifact = wandb.Artifact(f"model-{self.run.id}", type="model")
                artifact.add_file(str(checkpoint))
                artifact.add_file(str(self.config_file))  # what loading the checkpoint needs
                self.run.log_artifact(artifact)
            self.exit_code = 0

    def close(self) -> None:
        self.run.finish(exit_code=self.exit_code)


def start(run: RunContext) -> WandbLogger:
    return WandbLogger(run)
