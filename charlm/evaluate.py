"""Score a model: mean cross-entropy in nats per character, bits per character, perplexity.

The split is scored in order with the hidden state carried, the standard way for character models
(short windows from a fresh state read worse and are not comparable). For speed it is cut into a
few long contiguous segments scored side by side, each carrying its own state; `streams` records
how many, and `streams=1` is the exact single-pass score. `evaluate_windows` scores the other way,
fixed windows from a fresh state each, to compare with models that are scored like that.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlm.batches import eval_segments, split_ids
from charlm.errors import CharlmError
from charlm.model import CharLM
from charlm.precision import check_precision

EVAL_CHUNK = 256


@dataclass(frozen=True)
class EvalResult:
    loss: float
    bpc: float
    perplexity: float
    chars: int
    streams: int
    seconds: float

    @property
    def chars_per_s(self) -> float:
        return self.chars / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chars_per_s": round(self.chars_per_s, 1)}

    @classmethod
    def from_total(cls, total: float, chars: int, streams: int, began: float) -> EvalResult:
        """The scores of a summed loss over `chars` characters, timed from `began`."""
        loss = total / chars
        return cls(
            loss=loss,
            bpc=loss / math.log(2),
            perplexity=math.exp(min(loss, 700.0)),
            chars=chars,
            streams=streams,
            seconds=time.perf_counter() - began,
        )


@contextmanager
def scoring(model: CharLM, precision: str | None) -> Iterator[torch.device]:
    """The model in eval mode for the block (its mode put back after); -> its device.

    `precision` is one named sampling precision: `auto` (the sampler's timed pick) is refused,
    as by `charlm eval`."""
    if precision is not None:
        check_precision(precision, auto=False)
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


def summed_loss(
    model: CharLM, x: torch.Tensor, y: torch.Tensor, chunk_len: int, precision: str | None
) -> torch.Tensor:
    """The float64 sum of the losses of y given x, every row from a zero state (-1: unscored);
    through the model's forward, or with `precision` through the sampling steps."""
    chunks = (
        model_chunks(model, x, chunk_len)
        if precision is None
        else step_chunks(model, x, chunk_len, precision)
    )
    # An Apple GPU (mps) has no float64: there the sum is kept on the CPU, a copy per chunk.
    home = torch.device("cpu") if x.device.type == "mps" else x.device
    total = torch.zeros((), dtype=torch.float64, device=home)
    for t, logits in chunks:
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            y[:, t : t + chunk_len].reshape(-1),
            ignore_index=-1,
            reduction="sum",
        )
        total += loss.to(home).double()
    return total


@torch.no_grad()
def evaluate_ids(
    model: CharLM,
    ids: np.ndarray,
    streams: int = 20,
    chunk_len: int = EVAL_CHUNK,
    rows: Callable[[int], slice] | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    precision: str | None = None,
) -> EvalResult:
    """Mean next-character loss over every character of `ids` after the first.

    For data-parallel evals, `rows(n_segments)` picks this process's segments and `reduce`
    adds up the float64 loss sums of all processes. With `precision` the text is scored through
    the sampling steps in that precision (`charlm.stepper`) instead of the model's forward: what
    sampling in it costs the model, in the same units. It is one named precision: `auto` (the
    sampler's timed pick) is refused here as by `charlm eval`.
    """
    start = time.perf_counter()
    with scoring(model, precision) as device:
        x, y, count = eval_segments(ids, streams)
        n_streams = x.shape[0]
        if rows is not None:
            x, y = x[rows(n_streams)], y[rows(n_streams)]
        total = summed_loss(model, x.to(device), y.to(device), chunk_len, precision)
    if reduce is not None:
        total = reduce(total)
    return EvalResult.from_total(float(total), count, n_streams, start)


@torch.no_grad()
def evaluate_windows(
    model: CharLM,
    ids: np.ndarray,
    window: int,
    batch: int = 64,
    chunk_len: int = EVAL_CHUNK,
    precision: str | None = None,
) -> EvalResult:
    """Mean loss over windows of `window` characters, each read from a fresh (zero) state.

    The windows tile `ids` from the start without overlap; the last `len(ids) % window`
    characters, too few for a window, are left out. A window's first character is context only:
    characters 2..`window` are each predicted from the ones before them in the same window, so
    the score is that of a model given at most `window - 1` characters of context (as
    transformer character models are scored over fixed blocks). `batch` windows run side by
    side; `streams` in the result is the number of windows. `precision` as in `evaluate_ids`.
    """
    if window < 2:
        raise CharlmError(f"window {window}: too short; need at least 2 characters")
    if window > len(ids):
        raise CharlmError(f"window {window}: longer than the text ({len(ids)} characters)")
    if batch < 1:
        raise CharlmError(f"batch {batch}: need at least 1 window at a time")
    start = time.perf_counter()
    n_windows = len(ids) // window
    windows = torch.from_numpy(np.asarray(ids[: n_windows * window], dtype=np.int64))
    windows = windows.reshape(n_windows, window)
    total = 0.0
    with scoring(model, precision) as device:
        for first in range(0, n_windows, batch):
            part = windows[first : first + batch].to(device)  # each row from a zero state
            total += float(summed_loss(model, part[:, :-1], part[:, 1:], chunk_len, precision))
    return EvalResult.from_total(total, n_windows * (window - 1), n_windows, start)


def model_chunks(
    model: CharLM, x: torch.Tensor, chunk_len: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, logits [streams, chunk, vocab]) through the model's forward, state carried."""
    state = model.init_state(x.shape[0], x.device)
    for t in range(0, x.shape[1] if x.shape[0] else 0, chunk_len):
        logits, state = model(x[:, t : t + chunk_len], state)
        yield t, logits


def step_chunks(
    model: CharLM, x: torch.Tensor, chunk_len: int, precision: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """The same logits as `model_chunks`, computed one step at a time as sampling does."""
    from charlm.stepper import make_stepper

    if not x.shape[0]:
        return
    stepper = make_stepper(model, precision=precision)
    logits, state = stepper.start(x[:, :1])
    steps = [logits]
    for t in range(1, x.shape[1] + 1):
        if len(steps) == chunk_len or t == x.shape[1]:
            yield t - len(steps), torch.stack(steps, 1)
            steps = []
        if t < x.shape[1]:
            logits, state = stepper.step(x[:, t], state)
            steps.append(logits)


def evaluate_run(
    run: str | Path,
    corpus: str | Path | None = None,
    split: str = "val",
    device: str = "auto",
    streams: int | None = None,
    unknown: str = "error",
    impl: str | None = None,
    precision: str | None = None,
    window: int | None = None,
) -> EvalResult:
    """Score a run's checkpoint on a split of its own corpus, or on any text file or folder.

    `unknown` is the policy for characters of `corpus` outside the vocabulary (see
    `Vocab.encode`); the run's own corpus is encoded as in training. `precision` scores
    through the sampling steps (see `evaluate_ids`). With `window`, fresh windows of that many
    characters are scored instead of carried-state streams (see `evaluate_windows`).
    """
    from dataclasses import replace

    from charlm.cache import prepare_corpus
    from charlm.checkpoint import load_model
    from charlm.corpus import load_corpus

    loaded = load_model(run, eval_device(device, precision), impl)
    data = loaded.config.data
    n_streams = streams if streams is not None else loaded.config.train.eval_streams
    if corpus is not None:
        text = load_corpus(replace(data, corpus=str(corpus))).text
        try:
            ids = loaded.vocab.encode(text, unknown)
        except CharlmError as e:
            raise CharlmError(f"{corpus}: {e}") from None
        if len(ids) < 2:
            raise CharlmError(f"{corpus}: too short to score; need at least 2 characters")
        return _score(loaded.model, ids, n_streams, precision, window)
    record = loaded.checkpoint.record.get("corpus", {})
    spec = record.get("resolved", data.corpus)
    found = prepare_corpus(replace(data, corpus=spec))  # the id cache training built
    changed = record.get("sha256") and found.sha256 != record["sha256"]
    if changed or found.vocab != loaded.vocab:
        raise CharlmError(
            f"{found.source}: the corpus changed since training, so its {split} split is not "
            f"the one the model was trained beside; score a file with --corpus PATH instead"
        )
    part = split_ids(found.ids, data.val_fraction, data.test_fraction).get(split)
    if len(part) < 2:
        raise CharlmError(
            f"split {split!r} of {found.source} has {len(part)} characters; nothing to score "
            f"(set data.test_fraction when training to have a test split)"
        )
    return _score(loaded.model, part, n_streams, precision, window)


def eval_device(device: str, precision: str | None) -> str:
    """`auto` scores on the CPU where the precision only exists there (int8), else as asked."""
    return "cpu" if device == "auto" and precision == "int8" else device


def _score(
    model: CharLM, ids: np.ndarray, streams: int, precision: str | None, window: int | None
) -> EvalResult:
    if window is None:
        return evaluate_ids(model, ids, streams, precision=precision)
    return evaluate_windows(model, ids, window, precision=precision)


@dataclass(frozen=True)
class FilesResult:
    """Per-file scores of a folder (or glob) and their character-weighted total."""

    files: tuple[tuple[str, EvalResult], ...]
    total: EvalResult
    skipped: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The total at the top level (so readers of `loss` keep working) plus each file."""
        return {
            **self.total.to_dict(),
            "files": [{"file": name, **result.to_dict()} for name, result in self.files],
            "skipped": list(self.skipped),
        }


def combine(results: list[EvalResult]) -> EvalResult:
    """The score of several texts together: losses weighted by their scored characters."""
    chars = sum(r.chars for r in results)
    loss = sum(r.loss * r.chars for r in results) / chars
    return EvalResult(
        loss=loss,
        bpc=loss / math.log(2),
        perplexity=math.exp(min(loss, 700.0)),
        chars=chars,
        streams=max(r.streams for r in results),
        seconds=sum(r.seconds for r in results),
    )


def evaluate_files(
    run: str | Path,
    corpus: str | Path,
    device: str = "auto",
    streams: int | None = None,
    unknown: str = "error",
    impl: str | None = None,
    precision: str | None = None,
) -> FilesResult:
    """Score every file of a folder or glob on its own (state reset between files), and the total.

    Each file's numbers are exactly what `evaluate_run(run, corpus=file)` gives for that file.
    Files with fewer than 2 characters have nothing to score and are listed in `skipped`.
    """
    from charlm.checkpoint import load_model
    from charlm.corpus import normalise_newlines, read_file, resolve_files

    loaded = load_model(run, eval_device(device, precision), impl)
    data = loaded.config.data
    n_streams = streams if streams is not None else loaded.config.train.eval_streams
    scored: list[tuple[str, EvalResult]] = []
    skipped: list[str] = []
    for path in resolve_files(str(corpus), data.encoding):
        text = read_file(path, data.encoding, data.errors)
        if data.newline == "lf":
            text = normalise_newlines(text)
        if len(text) < 2:
            skipped.append(str(path))
            continue
        try:
            ids = loaded.vocab.encode(text, unknown)
        except CharlmError as e:
            raise CharlmError(f"{path}: {e}") from None
        scored.append((str(path), evaluate_ids(loaded.model, ids, n_streams, precision=precision)))
    if not scored:
        raise CharlmError(f"{corpus}: no file with at least 2 characters to score")
    return FilesResult(
        files=tuple(scored), total=combine([r for _, r in scored]), skipped=tuple(skipped)
    )
