"""MLflow tracking: the resolved config as params (dotted keys), each metrics line at its step,
the final scores, and config.yaml and the final checkpoint as artifacts.

The store is MLflow's own choice, as for any MLflow script: MLFLOW_TRACKING_URI when set, else
MLflow's default (since MLflow 3: ./mlflow.db, with artifacts under ./mlruns/, in the folder
training runs from). The experiment is MLFLOW_EXPERIMENT_NAME, else the name of the folder that
holds the run folder; the MLflow run is named after the run folder, and its id is kept in
RUN/loggers.json so that a resumed run continues it.

After the run is created, every call to MLflow goes through a thread of its own (`Sender`): a
metrics line costs the training loop a queue put (a few microseconds), not a call to the store
(about 4 ms to a local SQLite store, a network round trip to a remote server), and the end of
the run waits for what is still queued.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from charlm import events as ev
from charlm.loggers.base import RunContext, final_checkpoint, final_numbers, flat_config, numbers

PACKAGE = "mlflow"
# Stores kept in a database; MLflow needs SQLAlchemy and Alembic for them (the extra has both).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
FINISH_TIMEOUT_S = 120.0  # how long the end of a run waits for queued calls (artifacts included)


def require() -> None:
    """Import what logging to the configured store needs (an ImportError when missing)."""
    import mlflow

    scheme = mlflow.get_tracking_uri().partition(":")[0].partition("+")[0]
    if scheme in DATABASE_SCHEMES:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401


class Sender:
    """Calls made in order on a thread of their own. The first one that fails stops the rest,
    and its error is raised to the training loop at its next call (the tracker then stops, as
    any failing tracker does) or at `finish`."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name="charlm-mlflow", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except Exception as e:
                self.error = e
                return  # nothing more is sent: the next submit or finish raises this

    def submit(self, job: Callable[[], object]) -> None:
        if self.error is not None:
            raise self.error
        self.jobs.put(job)

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> None:
        """Wait for every queued call; raise the first failure, or a timeout."""
        self.jobs.put(None)
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"the store took over {timeout:g} s; the last calls are lost")
        if self.error is not None:
            raise self.error


class MlflowLogger:
    def __init__(self, run: RunContext) -> None:
        from mlflow.tracking import MlflowClient

        self.client: Any = MlflowClient()
        self.run_dir = run.run_dir
        self.status = "FAILED"  # until the run says it finished or was interrupted
        self.run_id = self._continued(run) or self._created(run)
        run.save("mlflow", {"run_id": self.run_id})
        self.client.log_artifact(self.run_id, str(run.config_file))
        self.sender = Sender()  # from here on nothing waits for the store

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
        self.sender.submit(lambda: self.client.log_batch(self.run_id, metrics=metrics))

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
                path = str(checkpoint)
                upload = self.client.log_artifact
                self.sender.submit(lambda: upload(self.run_id, path, "checkpoints"))
            self.status = "FINISHED"

    def close(self) -> None:
        status = self.status
        self.sender.submit(lambda: self.client.set_terminated(self.run_id, status=status))
        self.sender.finish()


def start(run: RunContext) -> MlflowLogger:
    return MlflowLogger(run)
