"""Trust in checkpoint files: the record's checksum, unverified files, sizes read from a file, and
sampling a run whose best checkpoint is damaged.

Edited files are written here directly with safetensors, the way a user or an attacker would,
with the record's checksum kept (an edit it must show), removed, or recomputed (a crafted file
that passes it, whose contents must then be checked on their own).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open
from safetensors.torch import save as safetensors_save
from typer.testing import CliRunner

from charlm import checkpoint as ckpt
from charlm.cli import app
from charlm.errors import CharlmError, CharlmWarning
from charlm.evaluate import evaluate_run
from charlm.info import describe
from charlm.training import resume

runner = CliRunner()
Edit = Callable[[dict[str, Any]], None]


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def read_raw(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        record = json.loads((f.metadata() or {})["charlm"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return record, tensors


def rewrite(path: Path, edit: Edit, digest: str = "keep") -> Path:
    """Edit the record of `path` in place; `digest`: keep the old record checksum, drop it,
    drop both checksums (`none`), or recompute it (`forge`)."""
    record, tensors = read_raw(path)
    edit(record)
    if digest in ("drop", "none"):
        record.pop("record_sha256", None)
    if digest == "none":
        record.pop("tensors_sha256", None)
    if digest == "forge":
        record["record_sha256"] = ckpt.record_digest(record)
    path.write_bytes(safetensors_save(tensors, metadata={"charlm": json.dumps(record)}))
    return path


@pytest.fixture
def run(trained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def newest(run: Path) -> Path:
    return ckpt.step_checkpoints(run / "checkpoints")[-1][1]


def reverse_vocab(r: dict[str, Any]) -> None:
    r["vocab"]["chars"] = r["vocab"]["chars"][::-1]


# -- item 5: the record is covered by a checksum ---------------------------------------------
@pytest.mark.parametrize(
    "edit",
    [
        reverse_vocab,
        lambda r: r["config"]["model"].update(hidden_size=64),
        lambda r: r.update(step=r["step"] + 1),
        lambda r: r.update(best_val_loss=0.01),
    ],
    ids=["reversed-vocab", "hidden-size", "step", "score"],
)
def test_an_edited_record_is_refused_naming_the_file(run: Path, edit: Edit) -> None:
    best = rewrite(run / "checkpoints" / ckpt.BEST_NAME, edit)
    with pytest.raises(CharlmError, match=r"damaged checkpoint \(its metadata") as info:
        ckpt.load_checkpoint(best)
    assert str(best) in str(info.value) and "\n" not in str(info.value)
    code, out = cli("sample", str(best), "-n", "5")
    assert code == 1 and out.startswith(f"error: {best}: damaged checkpoint")
    code, out = cli("info", str(best), "--json")
    (entry,) = json.loads(out)["checkpoints"]
    assert code == 1 and entry["status"] == "damaged" and "metadata" in entry["problem"]


def test_a_fresh_checkpoint_carries_both_checksums(trained_run: Path) -> None:
    loaded = ckpt.load_checkpoint(newest(trained_run))
    assert loaded.unverified is None
    assert loaded.record["record_sha256"] == ckpt.record_digest(loaded.record)
    assert loaded.record["tensors_sha256"] == ckpt.tensor_digest(loaded.tensors)


@pytest.mark.parametrize(
    ("digest", "said"),
    [("none", "has no checksum"), ("drop", "its metadata has no checksum (written by an older")],
    ids=["no-checksum", "older-format"],
)
def test_an_unverified_file_loads_with_a_warning(run: Path, digest: str, said: str) -> None:
    best = rewrite(run / "checkpoints" / ckpt.BEST_NAME, lambda r: None, digest)
    with pytest.warns(CharlmWarning, match="loaded unverified") as caught:
        loaded = ckpt.load_checkpoint(best)
    assert said in str(caught[0].message) and str(best) in str(caught[0].message)
    assert loaded.unverified is not None and said in loaded.unverified
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpt.load_checkpoint(best, warn=False).unverified == loaded.unverified
    for target in (run, best):
        code, out = cli("sample", str(target), "-n", "5", "--seed", "1")
        assert code == 0 and f"warning: {best}: {said}" in out
    code, out = cli("eval", str(run), "--json")
    assert code == 0 and f"warning: {best}: {said}" in out
    code, out = cli("info", str(best), "--json")
    (entry,) = json.loads(out)["checkpoints"]
    assert code == 0 and entry["status"] == "unverified" and said in entry["problem"]
    assert entry["intact"] is True


# Edits a record can carry past a checksum recomputed to match: each must be refused by what the
# record says against what the file holds, by sample and eval and by `charlm info` alike.
MISMATCHES: list[tuple[str, Edit, str]] = [
    ("vocab-size", lambda r: r["vocab"].update(chars=r["vocab"]["chars"][:-1]), "embed.weight"),
    ("cell", lambda r: r["config"]["model"].update(cell="gru"), "rnn.weight_ih_l0 has shape"),
    ("hidden-size", lambda r: r["config"]["model"].update(hidden_size=48), "has shape"),
    ("layers", lambda r: r["config"]["model"].update(num_layers=2), "needs tensor model/rnn"),
    ("embedding-1e9", lambda r: r["config"]["model"].update(embedding_dim=10**9), "does not fit"),
    ("hidden-1e30", lambda r: r["config"]["model"].update(hidden_size=10**30), "does not fit"),
    ("layers-1e6", lambda r: r["config"]["model"].update(num_layers=10**6), "does not fit"),
    ("no-config", lambda r: r.pop("config"), "config record"),
    ("bad-config", lambda r: r["config"]["model"].update(cell="rnn"), "model.cell"),
    ("no-vocab", lambda r: r.pop("vocab"), "vocabulary record"),
    ("step-text", lambda r: r.update(step="twenty"), "recorded step 'twenty': expected a whole"),
    ("step-negative", lambda r: r.update(step=-5), "recorded step -5: expected a whole number"),
    ("step-renamed", lambda r: r.update(step=59), "the step in the file's name"),
    ("step-bool", lambda r: r.update(step=True), "recorded step True"),
    ("elapsed-text", lambda r: r.update(elapsed_s="1h"), "recorded elapsed_s '1h'"),
    ("best-loss-text", lambda r: r.update(best_val_loss="low"), "recorded best_val_loss"),
    ("last-val-list", lambda r: r.update(last_val=[1]), "recorded last_val [1]"),
    ("last-val-text", lambda r: r["last_val"].update(bpc="x"), "recorded last_val"),
    ("corpus-null", lambda r: r.update(corpus=None), "recorded corpus None"),
    ("version-text", lambda r: r.update(version="1"), "format version '1'"),
    ("version-new", lambda r: r.update(version=99), "upgrade charlm"),
]


@pytest.mark.parametrize(
    ("edit", "said"), [m[1:] for m in MISMATCHES], ids=[m[0] for m in MISMATCHES]
)
@pytest.mark.parametrize("digest", ["forge", "none"])
def test_a_record_that_does_not_fit_its_file_is_one_line_everywhere(
    run: Path, edit: Edit, said: str, digest: str
) -> None:
    path = rewrite(newest(run), edit, digest)
    with pytest.raises(CharlmError) as info:
        ckpt.load_checkpoint(path, warn=False)
    message = str(info.value)
    assert message.startswith(str(path)) and said in message and "\n" not in message
    code, out = cli("info", str(path), "--json")
    (entry,) = json.loads(out)["checkpoints"]
    assert code == 1 and (entry["status"], entry["intact"]) == ("damaged", False)
    assert said in entry["problem"]
    code, out = cli("sample", str(path), "-n", "5")
    assert code == 1 and out.startswith(f"error: {path}") and said in out
    assert out.count("\n") == 1 or "warning:" in out
    (run / "checkpoints" / ckpt.BEST_NAME).unlink()  # so resume has no other file to use
    for other, _ in ckpt.step_checkpoints(run / "checkpoints")[:-1]:
        (run / "checkpoints" / ckpt.step_name(other)).unlink()
    code, out = cli("train", "--resume", str(run), "train.max_steps=70", "-q")
    assert code == 1 and said in out and "no complete checkpoint" in out


def test_info_ok_means_sample_and_eval_work(run: Path) -> None:
    """`info` on every file says ok exactly when sampling from that file works."""
    checkpoints = run / "checkpoints"
    rewrite(checkpoints / ckpt.BEST_NAME, reverse_vocab, "drop")  # undetectable: unverified
    rewrite(newest(run), lambda r: r["config"]["model"].update(cell="gru"), "forge")
    report = describe(run)
    for entry in report["checkpoints"]:
        code, _ = cli("sample", entry["file"], "-n", "3")
        assert (code == 0) == entry["intact"], entry
    statuses = {Path(e["file"]).name: e["status"] for e in report["checkpoints"]}
    assert statuses[ckpt.BEST_NAME] == "unverified"
    assert statuses[newest(run).name] == "damaged"
    assert report["summary"]["checkpoint"] != str(newest(run))


def test_info_summary_from_a_sparse_record(run: Path) -> None:
    """A record without the optional fields still gives a summary the CLI can print."""
    keep = ("step", "config", "vocab", "format", "version", "tensors_sha256", "record_sha256")
    path = rewrite(newest(run), lambda r: [r.pop(k) for k in list(r) if k not in keep], "forge")
    summary = describe(path)["summary"]
    assert summary["parameters"] == sum(
        t.numel() for t in ckpt.load_checkpoint(path).group("model").values()
    )
    assert summary["best_step"] == 0 and summary["config"]["model"]["cell"] == "lstm"
    code, out = cli("info", str(path))
    assert code == 0 and "parameters" in out


# -- item 7: a damaged best checkpoint ---------------------------------------------------------
def damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sample_and_eval_fall_back_from_a_damaged_best(run: Path) -> None:
    best = run / "checkpoints" / ckpt.BEST_NAME
    damage(best)
    fallback = newest(run)
    with pytest.warns(CharlmWarning, match="damaged checkpoint") as caught:
        loaded = ckpt.load_model(run, device="cpu")
    assert loaded.checkpoint.path == fallback
    assert str(best) in str(caught[0].message) and f"using {fallback} instead" in str(
        caught[0].message
    )
    code, out = cli("sample", str(run), "-n", "5", "--seed", "1")
    assert code == 0 and f"warning: {best}: damaged checkpoint" in out
    assert f"using {fallback} instead" in out
    code, out = cli("eval", str(run), "--json")
    assert code == 0 and f"warning: {best}" in out
    assert json.loads(out.splitlines()[-1])["bpc"] > 0
    with pytest.warns(CharlmWarning):
        assert evaluate_run(run, device="cpu").bpc > 0
    code, out = cli("sample", str(best), "-n", "5")  # a file named on its own: no fallback
    assert code == 1 and "damaged checkpoint" in out


def test_a_damaged_newest_step_is_skipped_when_there_is_no_best(run: Path) -> None:
    (run / "checkpoints" / ckpt.BEST_NAME).unlink()
    steps = ckpt.step_checkpoints(run / "checkpoints")
    damage(steps[-1][1])
    with pytest.warns(CharlmWarning, match="skipped"):
        assert ckpt.load_model(run, device="cpu").checkpoint.path == steps[-2][1]


def test_nothing_loads_is_one_error(run: Path) -> None:
    for path in (run / "checkpoints").iterdir():
        damage(path)
    code, out = cli("sample", str(run), "-n", "5")
    assert code == 1 and out.count("\n") == 1
    assert "best.safetensors: damaged checkpoint" in out and "no step checkpoint" in out


def test_resume_never_falls_back_to_best(run: Path) -> None:
    best = run / "checkpoints" / ckpt.BEST_NAME
    assert ckpt.load_checkpoint(best).step > 0  # a good best...
    for _, path in ckpt.step_checkpoints(run / "checkpoints"):
        damage(path)
    with pytest.raises(CharlmError, match="no complete checkpoint to resume from"):
        resume(run, ["train.max_steps=70"])
    code, out = cli("train", "--resume", str(run), "train.max_steps=70")
    assert code == 1 and "no complete checkpoint" in out and "skipping step-" in out
    assert ckpt.load_checkpoint(best).step > 0  # ...left as it was


def test_a_record_nested_past_the_parser_limit_is_one_error(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "deep.safetensors"
    text = '{"format": "charlm-checkpoint", "step": 1, "x": ' + "[" * 10**5 + "]" * 10**5 + "}"
    path.write_bytes(safetensors_save({"w": torch.ones(1)}, metadata={"charlm": text}))
    with pytest.raises(CharlmError, match="not a valid charlm checkpoint") as info:
        ckpt.load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_path_with_braces_names_itself_in_the_damage_error(run: Path, tmp_path: Path) -> None:
    odd = tmp_path / "{x}" / "best.safetensors"
    odd.parent.mkdir()
    shutil.copy(run / "checkpoints" / ckpt.BEST_NAME, odd)
    rewrite(odd, reverse_vocab)
    with pytest.raises(CharlmError, match="damaged checkpoint") as info:
        ckpt.load_checkpoint(odd)
    assert str(info.value).startswith(str(odd))
