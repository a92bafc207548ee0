"""Training a model: `train` a new run, `resume` one, and what they return or raise.

step.py is one training step, state.py what a checkpoint holds, loop.py the `Trainer` (the loop,
agreement across processes), ending.py the end of the loop (the last step's evals, the
summary), schedule.py the learning rate and the cadence of evals and saves, run.py a new run's
setup, resume.py a resumed one; data.py the corpus splits, signals.py Ctrl-C and SIGTERM,
outcome.py the result, errors and summary.
"""

from charlm.training.data import Data, prepare_data
from charlm.training.loop import Trainer
from charlm.training.outcome import (
    TrainingDiverged,
    TrainingInterrupted,
    TrainResult,
    resume_command,
)
from charlm.training.resume import RESUME_KEYS, resume, resume_config
from charlm.training.run import run_recorded, train
from charlm.training.schedule import lr_at
from charlm.training.step import update_average

__all__ = [
    "RESUME_KEYS",
    "Data",
    "TrainResult",
    "Trainer",
    "TrainingDiverged",
    "TrainingInterrupted",
    "lr_at",
    "prepare_data",
    "resume",
    "resume_command",
    "resume_config",
    "run_recorded",
    "train",
    "update_average",
]
