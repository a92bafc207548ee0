"""Splits and batch iterators over an id array (NumPy, so a memory map works as well as RAM).

Training reads contiguous streams: the train split is cut into `batch_size` equal streams and each
step takes the next `seq_len` characters of every stream, so the hidden state at the end of one
batch is the right state to start the next (truncated backprop through time). Each epoch shifts the
cut by a seeded offset so window edges fall in new places; the position is two integers, which a
checkpoint saves and restores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charlm.errors import CharlmError


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def get(self, name: str) -> np.ndarray:
        if name not in ("train", "val", "test"):
            raise CharlmError(f"split {name!r}: expected train, val or test")
        return getattr(self, name)


def split_ids(ids: np.ndarray, val_fraction: float, test_fraction: float = 0.0) -> Splits:
    """Contiguous split: train first, then val, then test at the very end."""
    n = len(ids)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    n_train = n - n_val - n_test
    return Splits(
        train=ids[:n_train], val=ids[n_train : n_train + n_val], test=ids[n_train + n_val :]
    )


@dataclass
class StreamPosition:
    """Where the stream batcher is: the epoch (which fixes the offset) and the step within it."""

    epoch: int = 0
    index: int = 0


class PositionedBatcher:
    """What both batchers save and restore: a position of two integers."""

    position: StreamPosition

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "index": self.position.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = StreamPosition(int(state["epoch"]), int(state["index"]))


class StreamBatcher(PositionedBatcher):
    """Contiguous (x, y) batches of shape [batch_size, seq_len] with state carried across them."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0) -> None:
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        # One spare character per epoch for the offset and one for the shifted target.
        check_train_size(len(ids), batch_size, seq_len, "stream")
        self.stream_len = (len(ids) - seq_len) // batch_size
        self.steps_per_epoch = (self.stream_len - 1) // seq_len
        self.position = StreamPosition()

    def _offset(self, epoch: int) -> int:
        if epoch == 0:
            return 0
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**64)
        return int(torch.randint(0, self.seq_len, (1,), generator=gen))

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The next batch as int64 tensors, and whether it starts a new epoch (reset the state)."""
        pos = self.position
        if pos.index >= self.steps_per_epoch:
            pos.epoch, pos.index = pos.epoch + 1, 0
        fresh = pos.index == 0
        off = self._offset(pos.epoch)
        streams = self.ids[off : off + self.batch_size * self.stream_len].reshape(
            self.batch_size, self.stream_len
        )
        start = pos.index * self.seq_len
        window = np.ascontiguousarray(streams[:, start : start + self.seq_len + 1])
        chunk = torch.from_numpy(window.astype(np.int64))
        pos.index += 1
        return chunk[:, :-1], chunk[:, 1:], fresh


class RandomBatcher(PositionedBatcher):
    """(x, y) windows at seeded random places in the split, each read from a fresh state.

    Draw number k always takes the same windows (its generator is seeded by (seed, k)), so the
    position, kept as epoch and index like `StreamBatcher`'s, is all a checkpoint needs.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0) -> None:
        check_train_size(len(ids), batch_size, seq_len, "random")
        self.ids = ids
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        # An "epoch" is as many windows as cover the split once, for the metrics' epoch column.
        self.steps_per_epoch = max(1, (len(ids) - 1) // (batch_size * seq_len))
        self.position = StreamPosition()

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The next batch as int64 tensors; always fresh (start each window from a zero state)."""
        pos = self.position
        if pos.index >= self.steps_per_epoch:
            pos.epoch, pos.index = pos.epoch + 1, 0
        draw = pos.epoch * self.steps_per_epoch + pos.index
        rng = np.random.default_rng([self.seed, draw])
        starts = rng.integers(0, len(self.ids) - self.seq_len, size=self.batch_size)
        window = self.ids[starts[:, None] + np.arange(self.seq_len + 1)]
        chunk = torch.from_numpy(window.astype(np.int64))
        pos.index += 1
        return chunk[:, :-1], chunk[:, 1:], True


def min_train_chars(batch_size: int, seq_len: int, batching: str) -> int:
    """The shortest train split one batch can be cut from.

    `random`: one window of seq_len + 1 characters. `stream`: StreamBatcher keeps seq_len spare
    characters for the epoch offset and needs seq_len + 1 per stream for one step.
    """
    if batching == "random":
        return seq_len + 1
    return batch_size * (seq_len + 1) + seq_len


def check_train_size(
    n_train: int, batch_size: int, seq_len: int, batching: str, where: str = ""
) -> None:
    """Refuse a train split too short for one batch; callable before any ids exist.

    `where` (the corpus) starts the message when given.
    """
    need = min_train_chars(batch_size, seq_len, batching)
    if n_train >= need:
        return
    prefix = f"{where}: " if where else ""
    if batching == "random":
        raise CharlmError(
            f"{prefix}the train split has {n_train:,} characters, too few for random windows of "
            f"train.seq_len={seq_len}; need at least {need:,} (lower train.seq_len, or use a "
            f"larger corpus)"
        )
    raise CharlmError(
        f"{prefix}the train split has {n_train:,} characters, too few for "
        f"batch_size={batch_size} x seq_len={seq_len}; need at least {need:,} (lower "
        f"train.batch_size or train.seq_len, or use a larger corpus)"
    )


def make_batcher(
    ids: np.ndarray, batching: str, batch_size: int, seq_len: int, seed: int = 0
) -> StreamBatcher | RandomBatcher:
    """The batcher `train.batching` names."""
    kind = RandomBatcher if batching == "random" else StreamBatcher
    return kind(ids, batch_size, seq_len, seed=seed)


def eval_segments(ids: np.ndarray, streams: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cut a split into `streams` contiguous segments of (input, target) pairs, side by side.

    Every character after the first is a target exactly once. The ragged end is padded with
    target -1 (ignored by the loss). Returns inputs, targets ([streams, length]) and the count of
    scored characters.
    """
    pairs = len(ids) - 1
    if pairs < 1:
        raise CharlmError(f"a split of {len(ids)} character(s) is too short to score; need >= 2")
    streams = max(1, min(streams, pairs))
    length = -(-pairs // streams)
    x = np.zeros(streams * length, dtype=np.int64)
    y = np.full(streams * length, -1, dtype=np.int64)
    x[:pairs] = ids[:-1]
    y[:pairs] = ids[1:]
    return (
        torch.from_numpy(x.reshape(streams, length)),
        torch.from_numpy(y.reshape(streams, length)),
        pairs,
    )
