"""MLflow tracking: the resolved config as params (dotted keys), each metrics line at its step,
the final scores, and config.yaml and the final checkpoint as artifacts.

The store is MLflow's own choice, as for any MLflow script: MLFLOW_TRACKING_URI when set, else
MLflow's default (since MLflow 3: ./mlflow.db, with artifacts under ./mlruns/, in the folder
training runs from). The experiment is MLFLOW_EXPERIMENT_NAME, else the name of the folder that
holds the run folder; the MLflow run is named after the run folder, and its id is kept in
RUN/loggers.json so that a resumed run continues it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from charlm import events as ev
from charlm.loggers.base import RunContext, final_checkpoint, final_numbers, flat_config, numbers

PACKAGE = "mlflow"
# Stores kept in a database; MLflow needs SQLAlchemy and Alembic for them (the extra has both).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch


def require() -> None:
    """Import what logging to the configured store needs (an ImportError when missing)."""
    import mlflow

    scheme = mlflow.get_tracking_uri().partition(":")[0].partition("+")[0]
    if scheme in DATABASE_SCHEMES:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401


class MlflowLogger:
    def __init__(self, run: RunContext) -> None:
        from mlflow.tracking import MlflowClient

        self.client: Any = MlflowClient()
        self.run_dir = run.run_dir
        self.status = "FAILED"  # until the run says it finished or was interrupted
        self.run_id = self._continued(run) or self._created(run)
        run.save("mlflow", {"run_id": self.run_id})
        self.client.log_artifact(self.run_id, str(run.config_file))

    def _continued(self, run: RunContext) -> str | None:
        """The MLflow run of the run being resumed, marked running again; None when there is
        none in this store (a new run, or one logged to another store)."""
        from mlflow.exceptions import MlflowException

        run_id = run.saved("mlflow").get("run_id")
        if not isinstance(run_id, str):
            return None
        try:
            found = self.client.get_run(run_id)
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        if found.info.lifecycle_stage == "deleted":
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _created(self, run: RunContext) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.group
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(name)
        )
        tags = {"charlm.run_dir": str(run.run_dir.resolve())}
        run_id = self.client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
        params = [Param(key, value) for key, value in flat_config(run.config).items()]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_CALL])
        return run_id

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def handle(self, event: ev.Event) -> None:
        if isinstance(event, ev.Logged):
            self._metrics(numbers(event), event.step)
        elif isinstance(event, ev.Interrupted):
            self.status = "KILLED"
        elif isinstance(event, ev.Ended):
            summary = event.summary
            self._metrics(final_numbers(summary), summary.steps or 0)
            checkpoint = final_checkpoint(self.run_dir, summary)
            if checkpoint is not None:
                self.client.log_artifact(self.run_id, str(checkpoint), "checkpoints")
            self.status = "FINISHED"

    def close(self) -> None:
        self.client.set_terminated(self.run_id, status=self.status)


def start(run: RunContext) -> MlflowLogger:
    return MlflowLogger(run)
