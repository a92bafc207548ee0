"""What a run or checkpoint holds, and whether each checkpoint file is intact (`charlm info`).

Every checkpoint file is loaded and its tensors checked against the SHA-256 recorded when it was
written, so a damaged file is reported as damaged instead of failing later in a resume or sample.
Nothing here raises for a damaged file; only a target that does not exist is an error.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from charlm import checkpoint as ckpt
from charlm.errors import CharlmError
from charlm.rundir import CHECKPOINT_DIR


def _check_file(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A report row for one file, and its record when it loaded."""
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
        record = ckpt.load_checkpoint(path).record
    except CharlmError as e:
        entry["problem"] = str(e).removeprefix(f"{path}: ")
        return entry, None
    verified = "tensors_sha256" in record
    entry.update(
        step=int(record.get("step", 0)),
        intact=True,
        status="ok" if verified else "unverified",
        problem=None if verified else "written without a checksum (older charlm)",
    )
    return entry, record


def _summary(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    best = record.get("best_val_loss")
    last = record.get("last_val") or {}
    return {
        "checkpoint": str(path),
        "step": int(record.get("step", 0)),
        "elapsed_s": float(record.get("elapsed_s", 0.0)),
        "parameters": record.get("parameters"),
        "vocab_size": len((record.get("vocab") or {}).get("chars", "")),
        "best_val_bpc": None if best is None else best / math.log(2),
        "best_step": record.get("best_step"),
        "last_val_bpc": last.get("bpc"),
        "device": record.get("device"),
        # What the run trained in (`auto` resolved); older checkpoints only have the config's.
        "precision": record.get("precision")
        or ((record.get("config") or {}).get("train") or {}).get("precision", "fp32"),
        "precision_probe": record.get("precision_probe"),  # auto's timings, when it timed
        "torch_version": record.get("torch_version"),
        "init_from": ((record.get("config") or {}).get("train") or {}).get("init_from"),
        "config": record.get("config"),
    }


def describe(target: str | Path) -> dict[str, Any]:
    """Report on a run folder (every checkpoint file in it) or on one checkpoint file.

    `summary` describes the newest intact step checkpoint (else the best, else the file
    itself) and is None when no file is intact.
    """
    from charlm.training import resume_command

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
        entry, record = _check_file(f)
        entries.append(entry)
        if record is not None:
            records[f] = record
    steps = [f for f in files if f in records and f.name != ckpt.BEST_NAME]
    chosen = steps[-1] if steps else next(iter(records), None)
    return {
        "target": str(path),
        "summary": None if chosen is None else _summary(chosen, records[chosen]),
        "checkpoints": entries,
        "resume": resume_command(run_dir) if run_dir is not None and steps else None,
    }
