"""What a run or checkpoint holds, and whether each checkpoint file is intact (`charlm info`).

Every checkpoint file goes through the checks loading does (the SHA-256s of its tensors and its
record, the record's fields, its config and vocabulary against the tensors' shapes), so `ok`
means sample and eval will load it, and a damaged file is reported as damaged instead of failing
later in a resume or sample. Nothing here raises for a damaged file; only a target that does not
exist is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from charlm import checkpoint as ckpt
from charlm.checkpoint_record import model_spec
from charlm.errors import CharlmError
from charlm.rundir import CHECKPOINT_DIR


def _check_file(path: Path) -> tuple[dict[str, Any], ckpt.Checkpoint | None]:
    """A report row for one file, and the checkpoint when it loaded as sample and eval would."""
    entry: dict[str, Any] = {
        "file": str(path),
        "step": None,
        "bytes": path.stat().st_size,
        "intact": False,
        "status": "damaged",
        "problem": None,
    }
    if ckpt.is_temp_file(path):
        entry.update(status="incomplete", problem="an unfinished write; safe to delete")
        return entry, None
    try:
        loaded = ckpt.load_checkpoint(path, warn=False)
        if "config" not in loaded.record or "vocab" not in loaded.record:
            raise CharlmError(f"{path}: records no config or vocabulary; sample and eval need both")
    except CharlmError as e:
        entry["problem"] = str(e).removeprefix(f"{path}: ")
        return entry, None
    entry.update(
        step=loaded.step,
        intact=True,
        status="ok" if loaded.unverified is None else "unverified",
        problem=loaded.unverified,
    )
    return entry, loaded


def _summary(loaded: ckpt.Checkpoint) -> dict[str, Any]:
    """The described checkpoint's numbers (its record's types were checked when it loaded)."""
    from charlm.config import config_to_dict

    path, record = loaded.path, loaded.record
    config, _ = model_spec(path, record)
    best = record.get("best_val_loss")
    counted = sum(t.numel() for t in loaded.group("model").values())
    last = record.get("last_val") or {}
    return {
        "checkpoint": str(path),
        "step": int(record.get("step", 0)),
        "elapsed_s": float(record.get("elapsed_s", 0.0)),
        "parameters": record.get("parameters", counted),
        "vocab_size": len((record.get("vocab") or {}).get("chars", "")),
        "best_val_bpc": None if best is None else best / math.log(2),
        "best_step": record.get("best_step", 0),
        "last_val_bpc": last.get("bpc"),
        "device": record.get("device"),
        # What the run trained in (`auto` resolved); older checkpoints only have the config's.
        "precision": record.get("precision") or config.train.precision,
        "precision_probe": record.get("precision_probe"),  # auto's timings, when it timed
        "torch_version": record.get("torch_version"),
        "init_from": config.train.init_from,
        "config": config_to_dict(config),
    }


def describe(target: str | Path) -> dict[str, Any]:
    """Report on a run folder (every checkpoint file in it) or on one checkpoint file.

    `summary` describes the newest intact step checkpoint (else the best, else the file
    itself) and is None when no file is intact. A run folder's `resume` is the command that
    resumes it, when a resume has work to do; a finished run gets `train_further` instead, the
    resume with its spent budgets doubled.
    """
    from charlm.training.resume import resume_offer

    path = Path(target)
    if not path.exists():
        raise CharlmError(f"{path}: no such run folder or checkpoint file")
    run_dir: Path | None = None
    if path.is_file():
        files = [path]
    else:
        folder = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path
        run_dir = path if folder != path else None
        files = [p for _, p in ckpt.step_checkpoints(folder)]
        if (folder / ckpt.BEST_NAME).is_file():
            files.append(folder / ckpt.BEST_NAME)
        files += sorted(p for p in folder.iterdir() if ckpt.is_temp_file(p) and p.is_file())
        if not files:
            raise CharlmError(f"{path}: holds no checkpoint (expected checkpoints/*{ckpt.SUFFIX})")
    entries, records = [], {}
    for f in files:
        entry, loaded = _check_file(f)
        entries.append(entry)
        if loaded is not None:
            records[f] = loaded
    steps = [f for f in files if f in records and f.name != ckpt.BEST_NAME]
    chosen = steps[-1] if steps else next(iter(records), None)
    resume, further = None, None
    if run_dir is not None and steps:  # a resume starts from the newest intact step checkpoint
        resume, further = resume_offer(run_dir, records[steps[-1]])
    return {
        "target": str(path),
        "summary": None if chosen is None else _summary(records[chosen]),
        "checkpoints": entries,
        "resume": resume,
        "train_further": further,
    }
