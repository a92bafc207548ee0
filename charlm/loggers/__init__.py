"""Experiment trackers fed by a run's progress events: TensorBoard, MLflow and W&B.

`train.loggers` (and the older `train.tensorboard: true`) name them; `selected` is the one place
that decides which run. Each is an extra imported only when a run asks for it: `check_installed`
stops a run whose tracker is not installed before any work, and `Loggers` feeds the started ones.

A tracker is a convenience, never worth a run: one that fails to start or to log (a tracking
server down, a full disk) is warned about once and stopped, and training goes on without it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from charlm import events as ev
from charlm.config import Config
from charlm.errors import CharlmError, missing_package
from charlm.loggers.base import Logger, RunContext

__all__ = ["Loggers", "RunContext", "check_installed", "selected"]


def selected(config: Config) -> tuple[str, ...]:
    """The trackers a run feeds: train.loggers, and tensorboard for train.tensorboard: true."""
    names = config.train.loggers
    if config.train.tensorboard and "tensorboard" not in names:
        return ("tensorboard", *names)
    return names


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"charlm.loggers.{name}")


def check_installed(config: Config) -> None:
    """Refuse a config whose trackers are not installed, naming the extra that installs each."""
    for name in selected(config):
        module = _module(name)
        try:
            module.require()
        except ImportError:
            raise _missing(config, name, module.PACKAGE) from None


def _missing(config: Config, name: str, package: str) -> CharlmError:
    if name in config.train.loggers:
        return missing_package(
            f"train.loggers: {name}", [package], name, f"remove {name} from train.loggers"
        )
    remedy = "set train.tensorboard=false"
    return missing_package("train.tensorboard: true", [package], name, remedy)


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class Loggers:
    """The run's trackers behind its event callback: `emit` feeds each event to every tracker
    still going, then passes it on to `callback` (which also gets the warnings)."""

    def __init__(self, run: RunContext, callback: ev.Callback) -> None:
        self.callback = callback
        self.active: dict[str, Logger] = {}
        for name in selected(run.config):
            try:
                self.active[name] = _module(name).start(run)
            except Exception as e:
                self._warn(name, "could not start", e)

    def _warn(self, name: str, what: str, error: Exception) -> None:
        message = f"{name} logging {what} ({_reason(error)}); training goes on without it"
        self.callback(ev.Warned(message))

    def emit(self, event: ev.Event) -> None:
        for name, logger in list(self.active.items()):
            try:
                logger.handle(event)
            except Exception as e:
                del self.active[name]
                self._warn(name, "stopped", e)
        self.callback(event)

    def close(self) -> None:
        for name, logger in self.active.items():
            try:
                logger.close()
            except Exception as e:
                self._warn(name, "could not finish", e)
        self.active.clear()
