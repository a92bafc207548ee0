"""The character vocabulary: sorted characters <-> integer ids.

Encoding is vectorised with NumPy (a lookup over Unicode code points), so a corpus of millions of
characters encodes in well under a second.

A vocabulary built with `min_count > 1` has an unknown symbol (U+FFFD, recorded in `to_dict`) that
stands for every rare character; `encode(text, unknown=...)` decides what happens to characters
outside the vocabulary: `error` (the default) names them, `skip` drops them, `replace` maps them to
the unknown symbol. Any code point is a valid symbol, lone surrogates included, although a decoded
corpus never holds one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charlm.errors import CharlmError

UNKNOWN_CHAR = "\ufffd"
UNKNOWN_POLICIES = ("error", "skip", "replace")


def check_unknown_policy(policy: str) -> None:
    if policy not in UNKNOWN_POLICIES:
        raise CharlmError(f"--unknown {policy!r}: expected one of {', '.join(UNKNOWN_POLICIES)}")


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _codes: np.ndarray = field(init=False, repr=False, compare=False)
    unknown_char: str | None = None

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise CharlmError("vocabulary: expected distinct single characters")
        if self.unknown_char is not None and self.unknown_char not in self.chars:
            raise CharlmError("vocabulary: the unknown symbol is not one of its characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})
        object.__setattr__(self, "_codes", np.array([ord(c) for c in self.chars], dtype=np.int64))

    @classmethod
    def from_text(cls, text: str, min_count: int = 1) -> Vocab:
        """Every character of `text`; with `min_count > 1` the rarer ones share UNKNOWN_CHAR."""
        if min_count <= 1:
            return cls(tuple(sorted(set(text))))
        kept = {c for c, n in Counter(text).items() if n >= min_count}
        return cls(tuple(sorted(kept | {UNKNOWN_CHAR})), unknown_char=UNKNOWN_CHAR)

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._index

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned type that holds every id."""
        return np.uint8 if len(self) <= 256 else np.uint16 if len(self) <= 65536 else np.uint32

    def unknown(self, text: str) -> Counter[str]:
        """Characters of `text` outside the vocabulary, with their counts."""
        return Counter(c for c in text if c not in self._index)

    def encode(self, text: str, unknown: str = "error") -> np.ndarray:
        """Ids of `text`; characters outside the vocabulary follow the `unknown` policy."""
        check_unknown_policy(unknown)
        if unknown == "replace" and self.unknown_char is None:
            raise CharlmError(
                "--unknown replace: this model's vocabulary has no unknown symbol (it was trained "
                "with data.min_char_count=1); use --unknown skip, or retrain with "
                "data.min_char_count=2 or more"
            )
        if not text:
            return np.zeros(0, dtype=self.dtype)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if len(self.chars):
            order = np.argsort(self._codes)
            sorted_codes = self._codes[order]
            pos = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
            found = sorted_codes[pos] == codes
            ids = order[pos]
        else:  # an empty vocabulary (from empty text) knows no character
            found = np.zeros(len(codes), dtype=bool)
            ids = np.zeros(len(codes), dtype=np.int64)
        if found.all():
            return ids.astype(self.dtype)
        if unknown == "skip":
            return ids[found].astype(self.dtype)
        if unknown == "replace":
            assert self.unknown_char is not None  # checked above
            return np.where(found, ids, self._index[self.unknown_char]).astype(self.dtype)
        missing = self.unknown(text)
        shown = ", ".join(f"{c!r} x{n}" for c, n in missing.most_common(5))
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        fixes = "--unknown skip or --unknown replace" if self.unknown_char else "--unknown skip"
        raise CharlmError(
            f"text has {len(missing)} character(s) not in the model's vocabulary: {shown}{more}; "
            f"to go on without them use {fixes}"
        )

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars), "unknown": self.unknown_char}

    @classmethod
    def from_dict(cls, raw: Any) -> Vocab:
        """Read `to_dict`'s record; records from before the unknown symbol have no `unknown`."""
        if not isinstance(raw, dict) or not isinstance(raw.get("chars"), str) or not raw["chars"]:
            raise CharlmError("vocabulary record: expected {'chars': '<the characters>'}")
        unknown = raw.get("unknown")
        if unknown is not None and not (isinstance(unknown, str) and len(unknown) == 1):
            raise CharlmError("vocabulary record: 'unknown' must be one character or null")
        return cls(tuple(raw["chars"]), unknown_char=unknown)
