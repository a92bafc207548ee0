"""train.ema_decay: the run's model is an average of its weights, and resumes stay exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from conftest import tiny_config
from test_trust_resume import EXACT, losses

from charlm.checkpoint import load_checkpoint, load_model, step_checkpoints
from charlm.runs import read_metrics
from charlm.training import Trainer, resume, train

STEPS = {"train.max_steps": 4, "train.checkpoint_interval": 1, "train.keep_last": 10}


def test_the_average_is_what_is_scored_saved_and_sampled(corpus: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    train(tiny_config(corpus, **STEPS, **{"train.eval_interval": 2}), plain)
    averaged = tmp_path / "averaged"
    config = tiny_config(corpus, **STEPS, **{"train.eval_interval": 2, "train.ema_decay": 0.2})
    start = {
        k: v.clone() for k, v in Trainer(config, tmp_path / "unused").model.state_dict().items()
    }
    train(config, averaged)

    # The average does not touch training: the same losses, the same trained weights.
    assert losses(averaged) == losses(plain)
    expected = start
    for step, path in step_checkpoints(plain / "checkpoints"):
        weights = load_checkpoint(path).group("model")
        decay = min(0.2, step / (9 + step))  # ramped: 0.1, 0.18, then the cap
        expected = {k: expected[k] + (1 - decay) * (weights[k] - expected[k]) for k in expected}
        ours = load_checkpoint(averaged / "checkpoints" / path.name)
        for name, value in weights.items():
            assert torch.equal(ours.group("trained")[name], value), (step, name)
            torch.testing.assert_close(ours.group("model")[name], expected[name], rtol=0, atol=1e-6)
    # Evals score the average, so they differ from the plain run's at the same steps.
    vals = [
        [r["val_loss"] for r in read_metrics(run) if "val_loss" in r] for run in (plain, averaged)
    ]
    assert len(vals[0]) == len(vals[1]) == 2 and vals[0] != vals[1]
    # Sampling and evaluation load the average as the run's model.
    loaded = load_model(averaged, "cpu")
    for name, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6)


def test_a_resumed_run_with_an_average_matches_one_that_never_stopped(
    corpus: Path, tmp_path: Path
) -> None:
    extra = {**EXACT, "train.ema_decay": 0.9}
    baseline = tmp_path / "baseline"
    train(tiny_config(corpus, **extra), baseline)
    run = tmp_path / "run"
    shutil.copytree(baseline, run)
    steps = step_checkpoints(run / "checkpoints")
    for _, later in steps[1:]:
        later.unlink()
    resume(run)
    assert losses(run) == losses(baseline)
    final = steps[-1][1].name
    ours, theirs = (load_checkpoint(r / "checkpoints" / final) for r in (run, baseline))
    for group in ("model", "trained"):
        a, b = ours.group(group), theirs.group(group)
        assert a.keys() == b.keys() and a
        for name in b:
            assert torch.equal(a[name], b[name]), (group, name)
