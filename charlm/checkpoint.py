"""Self-contained, crash-safe checkpoints in one safetensors file.

A checkpoint is everything needed to sample, evaluate or resume: model weights, optimizer state,
the carried hidden state and RNG states as tensors, and a JSON record (config, vocabulary, step,
time, metrics, data position) in the file's metadata. Loading parses a header and raw tensors; it
never unpickles, so a hostile file cannot run code. SHA-256s of the tensors and of the record show
damage or edits; the record is then checked field by field and its model against the tensors'
shapes (charlm/checkpoint_record.py) before anything is built from it. Writes go to a temporary
file that is fsynced and renamed into place, so a crash or a full disk never leaves a half-written
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from charlm import files
from charlm.checkpoint_record import check_record, model_spec
from charlm.errors import CharlmError, CharlmWarning

FORMAT = "charlm-checkpoint"
VERSION = 1
SUFFIX = ".safetensors"
BEST_NAME = "best" + SUFFIX
_STEP_RE = re.compile(r"^step-(\d+)\.safetensors$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: the JSON record and its tensors grouped by prefix."""

    path: Path
    record: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    unverified: str | None = None  # why a checksum could not be checked; None: all checked

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix/`, with the prefix removed."""
        head = prefix + "/"
        return {k[len(head) :]: v for k, v in self.tensors.items() if k.startswith(head)}

    @property
    def step(self) -> int:
        return int(self.record["step"])


def step_name(step: int) -> str:
    return f"step-{step:08d}{SUFFIX}"


def pack_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors and a JSON-able remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unpack_optimizer(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in record.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": record["param_groups"]}


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, so damage to the payload shows."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def record_digest(meta: dict[str, Any]) -> str:
    """SHA-256 over the JSON record (all but this digest, keys sorted): vocabulary, config, step
    and the tensors' digest, so an edit to any of them shows."""
    rest = {k: v for k, v in meta.items() if k != "record_sha256"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> None:
    """Save tensors (flat, '/'-separated names) and a JSON record atomically to `path`."""
    data = checkpoint_bytes(tensors, record)
    files.atomic_write_bytes(path, data, "the checkpoint", "; the previous checkpoint is intact")


def checkpoint_bytes(tensors: dict[str, torch.Tensor], record: dict[str, Any]) -> bytes:
    """The file's bytes: the tensors and the record, which carries a SHA-256 of the tensors and
    one of the record itself, so a loader (and `charlm info`) can tell an intact file from one
    damaged or edited after it was written."""
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {**record, "format": FORMAT, "version": VERSION, "tensors_sha256": tensor_digest(cpu)}
    meta = json.loads(json.dumps(meta))  # the record exactly as a loader will read it back
    meta["record_sha256"] = record_digest(meta)
    return safetensors_save(cpu, metadata={"charlm": json.dumps(meta)})


def load_checkpoint(path: str | Path, warn: bool = True) -> Checkpoint:
    """Load a checkpoint onto the CPU; anything that is not a complete charlm file is an error.

    The checksums of the tensors and of the record are checked, then the record itself (see
    `check_record`). A file without a checksum loads as unverified: `Checkpoint.unverified`
    says why, and with `warn` a `CharlmWarning` says it too.
    """
    path = Path(path)
    if not path.is_file():
        raise CharlmError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CharlmError(f"{path}: is empty (0 bytes); not a valid charlm checkpoint")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises several types for damaged files
        reason = " ".join(str(e).split())[:120]
        raise CharlmError(f"{path}: not a valid charlm checkpoint ({reason})") from None
    try:
        record = json.loads(meta["charlm"])
        if record.get("format") != FORMAT:
            raise ValueError("wrong format tag")
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        raise CharlmError(
            f"{path}: not a valid charlm checkpoint (a safetensors file without charlm metadata)"
        ) from None
    version = record.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CharlmError(f"{path}: checkpoint format version {version!r}: expected a number")
    if version > VERSION:
        raise CharlmError(
            f"{path}: checkpoint format version {version} is newer than this charlm "
            f"reads ({VERSION}); upgrade charlm"
        )
    unverified = _verify(path, record, tensors)
    check_record(path, record, tensors)
    if unverified is not None and warn:
        warnings.warn(f"{path}: {unverified}", CharlmWarning, stacklevel=2)
    return Checkpoint(path=path, record=record, tensors=tensors, unverified=unverified)


def _verify(path: Path, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str | None:
    """Check the recorded digests; return why the file is not fully verified, or None."""

    def damaged(what: str) -> CharlmError:
        return CharlmError(
            f"{path}: damaged checkpoint (its {what} do not match the SHA-256 recorded when it "
            f"was written); use an older checkpoint"
        )

    expected = record.get("record_sha256")
    if expected is not None and record_digest(record) != expected:
        raise damaged("metadata (vocabulary, config, step)")
    expected = record.get("tensors_sha256")
    if expected is not None and tensor_digest(tensors) != expected:
        raise damaged("tensors")
    if record.get("tensors_sha256") is None and record.get("record_sha256") is None:
        return "has no checksum, so damage to it cannot be detected; loaded unverified"
    if record.get("record_sha256") is None:
        return (
            "its metadata has no checksum (written by an older charlm), so an edit to its "
            "vocabulary or config cannot be detected; loaded unverified"
        )
    if record.get("tensors_sha256") is None:
        return (
            "its tensors have no checksum, so damage to them cannot be detected; loaded unverified"
        )
    return None


def is_temp_file(path: Path) -> bool:
    """A leftover of a write that never finished (the writer was killed before the rename)."""
    return path.name.startswith(".") and ".tmp-" in path.name


def remove_temp_files(folder: Path) -> list[Path]:
    """Delete unfinished-write leftovers in a checkpoint folder; return what was removed."""
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if is_temp_file(p) and p.is_file()]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def latest_intact(folder: Path) -> tuple[Checkpoint | None, list[tuple[Path, str]]]:
    """The newest step checkpoint that loads and verifies, and the newer ones that did not."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(step_checkpoints(folder)):
        try:
            return load_checkpoint(path), skipped
        except CharlmError as e:
            skipped.append((path, str(e)))
    return None, skipped


def step_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints in a folder, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(run: str | Path) -> Path:
    """The checkpoint a RUN argument means: a file itself, or a run's best, else its newest."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.exists():
        raise CharlmError(f"{path}: no such run folder or checkpoint file")
    for folder in (path / "checkpoints", path):
        if (folder / BEST_NAME).is_file():
            return folder / BEST_NAME
        steps = step_checkpoints(folder)
        if steps:
            return steps[-1][1]
    raise CharlmError(f"{path}: holds no checkpoint (expected checkpoints/*{SUFFIX})")


DAMAGED_DIR = "damaged"
"""Subfolder of a checkpoint folder where `prune` moves step files that do not load."""


@dataclass(frozen=True)
class SetAside:
    """A step file that did not load, moved out of the rotation instead of being deleted."""

    path: Path  # where it was
    moved_to: Path  # where it is now
    reason: str  # the load error


def prune(folder: Path, keep_last: int) -> list[SetAside]:
    """Keep the newest `keep_last` step checkpoints that load; delete the older ones.

    Newest first, each file is checked until `keep_last` have passed, so a damaged or foreign
    step file never counts among the kept, and a good checkpoint is never deleted to keep one
    that does not load. Files that fail are moved into the `damaged/` subfolder (a user may
    want them), and returned. The best checkpoint is a separate file and not touched.

    A file that passed here once and is unchanged since (same inode, size, mtime and ctime) is
    not read again, so in a steady run a save costs one load (of the file just written, which
    also checks that the write landed) instead of `keep_last`.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    kept = 0
    set_aside: list[SetAside] = []
    for _, path in reversed(step_checkpoints(folder)):
        if kept >= keep_last:
            path.unlink(missing_ok=True)
            continue
        if not _known_good(path):
            try:
                load_checkpoint(path, warn=False)
            except CharlmError as e:
                set_aside.append(SetAside(path, _move_aside(path), str(e)))
                continue
            _remember_verified(path)
        kept += 1
    return set_aside


_VERIFIED: set[tuple[str, int, int, int, int]] = set()
"""Step files that passed `prune`'s load, by (path, inode, size, mtime, ctime)."""


def _stamp(path: Path) -> tuple[str, int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _known_good(path: Path) -> bool:
    return _stamp(path) in _VERIFIED


def _remember_verified(path: Path) -> None:
    stamp = _stamp(path)
    if stamp is not None:
        if len(_VERIFIED) > 4096:  # a long-lived process: start over rather than grow
            _VERIFIED.clear()
        _VERIFIED.add(stamp)


def _move_aside(path: Path) -> Path:
    """Move `path` into `damaged/` beside it, under a name no earlier file there has."""
    target_dir = path.parent / DAMAGED_DIR
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    n = 1
    while target.exists():
        target = target_dir / f"{path.stem}.{n}{path.suffix}"
        n += 1
    os.replace(path, target)
    return target


@dataclass
class Loaded:
    """A model ready to use, with what it was trained with."""

    model: Any  # CharLM
    vocab: Any  # Vocab
    config: Any  # Config
    checkpoint: Checkpoint


def load_run_checkpoint(run: str | Path) -> Checkpoint:
    """Load the checkpoint a RUN argument means: a file itself; for a run folder its best, else
    its newest step checkpoint that loads.

    A best checkpoint that does not load, and newer step files that do not, are passed over
    with a `CharlmWarning` each, so one damaged file never blocks sampling a run.
    """
    path = Path(run)
    if path.is_file():
        return load_checkpoint(path)
    if not path.exists():
        raise CharlmError(f"{path}: no such run folder or checkpoint file")
    for folder in (path / "checkpoints", path):
        best, problem = folder / BEST_NAME, None
        if best.is_file():
            try:
                return load_checkpoint(best)
            except CharlmError as e:
                problem = str(e)
        found, skipped = latest_intact(folder)
        if found is None and (problem or skipped):
            first = problem or skipped[0][1]
            raise CharlmError(f"{first}; and no step checkpoint in {folder} loads either")
        if found is None:
            continue
        for _, reason in skipped:
            warnings.warn(f"{reason}; skipped", CharlmWarning, stacklevel=2)
        if problem is not None:
            warnings.warn(f"{problem}; using {found.path} instead", CharlmWarning, stacklevel=2)
        return found
    raise CharlmError(f"{path}: holds no checkpoint (expected checkpoints/*{SUFFIX})")


def load_model(run: str | Path, device: str = "auto", impl: str | None = None) -> Loaded:
    """Load the checkpoint a RUN argument means and rebuild its model in eval mode.

    The record's config and vocabulary were checked against the file's tensors when it loaded,
    so the model built here is the size of the weights it receives. `impl` runs the same weights
    on the other implementation (`fused` or `reference`); the GRU variant recorded in the
    checkpoint is kept, so one variant is never loaded as the other.
    """
    from dataclasses import replace

    from charlm.model import CharLM, resolve_device

    ckpt = load_run_checkpoint(run)
    path = ckpt.path
    config, vocab = model_spec(path, ckpt.record)
    if impl is not None:
        if impl not in ("fused", "reference"):
            raise CharlmError(f"--impl {impl!r}: expected fused or reference")
        m = config.model
        if impl == "fused" and m.cell == "gru" and m.gru_reset == "before":
            raise CharlmError(
                f"{path}: holds a reset-before GRU, which the fused kernel (reset after) cannot "
                f"run; use --impl reference"
            )
        config = replace(config, model=replace(m, impl=impl))
    model = CharLM(config.model, len(vocab))
    try:
        model.load_state_dict(ckpt.group("model"))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise CharlmError(f"{path}: weights do not match the recorded model ({first})") from None
    model.to(resolve_device(device)).eval()
    return Loaded(model=model, vocab=vocab, config=config, checkpoint=ckpt)
