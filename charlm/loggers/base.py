"""What every logger shares: the run it logs, the numbers it is fed, and the missing-extra hint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from charlm import events as ev
from charlm.config import Config, config_to_dict
from charlm.rundir import CONFIG_NAME, Summary, write_json

# RUN/loggers.json: each tracker's id for the run, so that a resumed run continues it.
STATE_NAME = "loggers.json"


class Logger(Protocol):
    """One tracker: fed every event of the run, closed once when the run stops."""

    def handle(self, event: ev.Event) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunContext:
    """The run a logger logs."""

    run_dir: Path
    config: Config
    step: int = 0  # the step the run starts from: 0, or a resumed run's checkpoint step

    @property
    def name(self) -> str:
        """The tracker's run name: the run folder's."""
        return self.run_dir.resolve().name

    @property
    def group(self) -> str:
        """The tracker's experiment or project: the folder holding the run folder (`runs`, or a
        sweep's folder), so a sweep's runs land side by side."""
        return self.run_dir.resolve().parent.name or "charlm"

    @property
    def config_file(self) -> Path:
        return self.run_dir / CONFIG_NAME

    def saved(self, logger: str) -> dict[str, Any]:
        """What `logger` saved for this run, or {} (a new run, or an unreadable file)."""
        try:
            value = json.loads((self.run_dir / STATE_NAME).read_text(encoding="utf-8"))[logger]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return value if isinstance(value, dict) else {}

    def save(self, logger: str, value: dict[str, Any]) -> None:
        path = self.run_dir / STATE_NAME
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        write_json(path, {**(state if isinstance(state, dict) else {}), logger: value})


def flat_config(config: Config) -> dict[str, str]:
    """The resolved config as `section.key` -> text (trackers' params are strings)."""
    return {
        f"{section}.{key}": value if isinstance(value, str) else json.dumps(value)
        for section, body in config_to_dict(config).items()
        for key, value in body.items()
    }


def numbers(event: ev.Logged) -> dict[str, float]:
    """A metrics line's numbers by their metrics.jsonl names, plus train_bpc."""
    found = {
        key: float(value)
        for key, value in event.row.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    if event.train_bpc is not None:
        found["train_bpc"] = event.train_bpc
    return found


def final_numbers(summary: Summary) -> dict[str, float]:
    """A finished run's headline scores: the best interval eval and the final whole-split one."""
    final = summary.final_val or {}
    found = {
        "best_val_loss": summary.best_val_loss,
        "best_val_bpc": summary.best_val_bpc,
        "final_val_loss": final.get("loss"),
        "final_val_bpc": final.get("bpc"),
    }
    return {key: float(value) for key, value in found.items() if value is not None}


def final_checkpoint(run_dir: Path, summary: Summary) -> Path | None:
    """The checkpoint a finished run is remembered by: its best, else its last."""
    for name in (summary.best_checkpoint, summary.last_checkpoint):
        if name and (run_dir / name).is_file():
            return run_dir / name
    return None
