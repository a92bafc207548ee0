"""Experiment trackers (train.loggers): choosing them, missing extras, what each one logged (read
back from TensorBoard's event files, MLflow's store and W&B's offline run file), and a tracker
that fails while the run goes on."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from charlm import events as ev
from charlm.cli import app
from charlm.config import load_config
from charlm.errors import CharlmError
from charlm.loggers import selected
from charlm.loggers.base import flat_config
from charlm.runs import read_summary
from charlm.training import resume, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TEN_STEPS = {"train.max_steps": 10, "train.eval_interval": 5, "train.checkpoint_interval": 5}


# ------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[mlflow]", ("mlflow",)),
        ("[wandb, mlflow]", ("wandb", "mlflow")),
        ("tensorboard,wandb", ("tensorboard", "wandb")),
        ("[]", ()),
        ("", ()),
    ],
)
def test_loggers_override_is_a_list(value: str, expected: tuple[str, ...]) -> None:
    assert load_config(None, [f"train.loggers={value}"]).train.loggers == expected


def test_loggers_from_yaml_and_back(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  loggers: [mlflow, wandb]\n", encoding="utf-8")
    config = load_config(path)
    assert config.train.loggers == ("mlflow", "wandb")
    assert flat_config(config)["train.loggers"] == '["mlflow", "wandb"]'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "[mlflow, neptune]",
            "train.loggers: 'neptune' is not accepted; expected one of tensorboard, mlflow, wandb",
        ),
        ("[wandb, wandb]", "train.loggers: wandb is listed twice; give each logger once"),
    ],
)
def test_bad_loggers_are_one_line_errors(value: str, message: str) -> None:
    with pytest.raises(CharlmError) as caught:
        load_config(None, [f"train.loggers={value}"])
    assert str(caught.value) == message
    result = CliRunner().invoke(app, ["train", f"train.loggers={value}"])
    assert result.exit_code != 0 and f"error: {message}" in result.output


def test_tensorboard_true_adds_tensorboard_once() -> None:
    def names(*overrides: str) -> tuple[str, ...]:
        return selected(load_config(None, list(overrides)))

    assert names() == ()
    assert names("train.tensorboard=true") == ("tensorboard",)
    assert names("train.tensorboard=true", "train.loggers=[mlflow]") == ("tensorboard", "mlflow")
    assert names("train.tensorboard=true", "train.loggers=[wandb,tensorboard]") == (
        "wandb",
        "tensorboard",
    )


# ------------------------------------------------------------------------ missing extras
@pytest.mark.parametrize(
    ("overrides", "modules", "hint"),
    [
        (
            {"train.tensorboard": True},
            ["tensorboard", "torch.utils.tensorboard"],
            "train.tensorboard: true needs the tensorboard package, which is not installed; "
            "install it with pip install tensorboard (or pip install -e '.[tensorboard]' in the "
            "charlm checkout) or set train.tensorboard=false",
        ),
        (
            {"train.loggers": "[mlflow]"},
            ["mlflow"],
            "train.loggers: mlflow needs the mlflow package, which is not installed; install it "
            "with pip install mlflow (or pip install -e '.[mlflow]' in the charlm checkout) or "
            "remove mlflow from train.loggers",
        ),
        (
            {"train.loggers": "[wandb]"},
            ["wandb"],
            "train.loggers: wandb needs the wandb package, which is not installed; install it "
            "with pip install wandb (or pip install -e '.[wandb]' in the charlm checkout) or "
            "remove wandb from train.loggers",
        ),
    ],
)
def test_missing_tracker_is_a_clear_error_before_anything_starts(
    tmp_path: Path,
    corpus_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    overrides: dict[str, Any],
    modules: list[str],
    hint: str,
) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    with pytest.raises(CharlmError) as caught:
        train(tiny_config(corpus_file, **overrides), tmp_path / "run")
    assert str(caught.value) == hint
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_training_without_trackers_never_imports_them(tmp_path: Path, corpus_file: Path) -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from charlm.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0\n"
        "from conftest import tiny_config\n"
        "from charlm.training import train\n"
        f"train(tiny_config({str(corpus_file)!r}, **{TEN_STEPS!r}), {str(tmp_path / 'run')!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'wandb', 'tensorboard'}))"
    )
    path = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------ TensorBoard
def test_tensorboard_logs_each_metric_at_its_step(tmp_path: Path, corpus_file: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    both = {"train.tensorboard": True, "train.loggers": "[tensorboard]"}  # one logger, not two
    train(tiny_config(corpus_file, **TEN_STEPS, **both), run)
    (events_file,) = (run / "tensorboard").iterdir()
    logged = EventAccumulator(str(events_file))
    logged.Reload()
    tags = logged.Tags()
    assert set(tags["scalars"]) == {
        "loss/train", "bpc/train", "loss/val", "bpc/val", "lr", "speed/chars_per_s",
    }  # fmt: skip
    assert [s.step for s in logged.Scalars("bpc/val")] == [5, 10]
    assert [s.step for s in logged.Scalars("loss/train")] == [5, 10]  # log_interval is 5
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged.Scalars("bpc/val")[-1].value == pytest.approx(rows[-1]["val_bpc"])
    assert tags["tensors"] == ["config/text_summary"]


# ----------------------------------------------------------------------------------- MLflow
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # MLflow's own use of SQLAlchemy
def test_mlflow_logs_params_metrics_artifacts_and_a_resume_continues_the_run(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default store is in the current folder
    run = tmp_path / "sweep" / "first"
    config = tiny_config(corpus_file, **TEN_STEPS, **{"train.loggers": "[mlflow]"})
    train(config, run)
    resume(run, ["train.max_steps=20"])

    (run_id,) = [json.loads((run / "loggers.json").read_text())["mlflow"]["run_id"]]
    client = MlflowClient(mlflow_default_uri())
    logged = client.get_run(run_id)
    assert logged.info.run_name == "first" and logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "sweep"
    assert logged.data.params == flat_config(config)
    history = client.get_metric_history(run_id, "val_bpc")
    assert [m.step for m in history] == [5, 10, 15, 20]  # both attempts, one MLflow run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx([r["val_bpc"] for r in rows])
    assert {"train_loss", "train_bpc", "lr", "chars_per_s", "best_val_bpc"} <= set(
        logged.data.metrics
    )
    assert [f.path for f in client.list_artifacts(run_id)] == ["checkpoints", "config.yaml"]
    (checkpoint,) = client.list_artifacts(run_id, "checkpoints")
    assert checkpoint.path == "checkpoints/best.safetensors"


def mlflow_default_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def test_mlflow_calls_leave_the_training_loop_at_once_and_keep_their_order() -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    import threading

    from charlm.loggers.mlflow import Sender

    sender, done, gate = Sender(), [], threading.Event()
    sender.submit(gate.wait)  # a store that does not answer yet
    for i in range(5):
        sender.submit(lambda i=i: done.append(i))  # returns although the first call still waits
    assert done == []
    gate.set()
    sender.finish()
    assert done == [0, 1, 2, 3, 4] and not sender.thread.is_alive()

    failing = Sender()
    failing.submit(lambda: 1 / 0)
    failing.thread.join(5)
    assert not failing.thread.is_alive()  # the first failure ends the thread
    with pytest.raises(ZeroDivisionError):
        failing.submit(lambda: done.append("never"))  # raised to the loop at its next call
    with pytest.raises(ZeroDivisionError):
        failing.finish()
    assert "never" not in done


def test_an_mlflow_store_failing_mid_run_is_warned_once_and_the_run_finishes(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)

    def full(self: MlflowClient, run_id: str, metrics: Any = (), **kwargs: Any) -> None:
        if metrics:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "log_batch", full)  # params still go in: start works
    events: list[ev.Event] = []
    config = tiny_config(corpus_file, **TEN_STEPS, **{"train.loggers": "[mlflow]"})
    result = train(config, tmp_path / "run", events.append)
    assert result.steps == 10
    warnings = [e.message for e in events if isinstance(e, ev.Warned)]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow logging ")
    assert "No space left on device" in warnings[0]
    summary = read_summary(tmp_path / "run")
    assert summary is not None and summary.status == "finished"


def test_unreachable_tracking_server_is_warned_and_the_run_goes_on(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    events: list[ev.Event] = []
    config = tiny_config(corpus_file, **TEN_STEPS, **{"train.loggers": "[mlflow]"})
    result = train(config, tmp_path / "run", events.append)
    assert result.steps == 10
    (warning,) = [e.message for e in events if isinstance(e, ev.Warned)]
    assert warning.startswith("mlflow logging could not start (")
    assert warning.endswith("); training goes on without it") and "\n" not in warning


def test_a_tracker_failing_mid_run_is_warned_once_and_stopped(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from charlm.loggers.tensorboard import TensorBoardLogger

    calls: list[ev.Event] = []

    def full_disk(self: TensorBoardLogger, event: ev.Event) -> None:
        calls.append(event)
        if isinstance(event, ev.Logged):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardLogger, "handle", full_disk)
    events: list[ev.Event] = []
    run = tmp_path / "run"
    train(tiny_config(corpus_file, **TEN_STEPS, **{"train.tensorboard": True}), run, events.append)
    warnings = [e.message for e in events if isinstance(e, ev.Warned)]
    assert warnings == [
        "tensorboard logging stopped ([Errno 28] No space left on device); "
        "training goes on without it"
    ]
    assert sum(isinstance(e, ev.Logged) for e in calls) == 1  # never fed again
    # the run's own callback was: step 5, then the last step's training numbers and its scores
    assert sum(isinstance(e, ev.Logged) for e in events) == 3
    summary = read_summary(run)
    assert summary is not None and summary.status == "finished"


# -------------------------------------------------------------------------------------- W&B
def read_wandb_records(path: Path) -> list[Any]:
    """The records of a W&B offline run file: a 7-byte header, then LevelDB-log records (a
    7-byte header each: CRC, length, type) in 32 KiB blocks, each a wandb Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def test_wandb_logs_offline_by_default_and_a_resume_continues_the_run(
    tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no `wandb login` here
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    run = tmp_path / "runs" / "first"
    config = tiny_config(corpus_file, **TEN_STEPS, **{"train.loggers": "[wandb]"})
    train(config, run)
    resume(run, ["train.max_steps=20"])

    run_id = json.loads((run / "loggers.json").read_text())["wandb"]["id"]
    attempts = sorted((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(attempts) == 2  # offline, inside the run folder, one W&B run id for both
    records = [r for a in attempts for r in read_wandb_records(a / f"run-{run_id}.wandb")]

    def of(kind: str) -> list[Any]:
        return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]

    first_run = of("run")[0]
    assert first_run.project == "runs" and first_run.display_name == "first"
    logged_config = {_key(u): json.loads(u.value_json) for u in first_run.config.update}
    assert logged_config["train"]["loggers"] == ["wandb"]
    assert logged_config["model"]["hidden_size"] == config.model.hidden_size
    history = [{_key(i): json.loads(i.value_json) for i in h.item} for h in of("history")]
    val = [(h["_step"], h["val_bpc"]) for h in history if "val_bpc" in h]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert val == [(r["step"], pytest.approx(r["val_bpc"])) for r in rows]
    assert all("train_bpc" in h and "lr" in h and "chars_per_s" in h for h in history)
    assert {"best_val_bpc", "final_val_bpc"} <= {_key(u) for s in of("summary") for u in s.update}
    artifacts = of("artifact")
    assert [a.type for a in artifacts] == ["model", "model"]  # one per finished attempt
    assert {entry.path for entry in artifacts[-1].manifest.contents} == {
        "best.safetensors",
        "config.yaml",
    }
    assert len(of("exit")) == 2
