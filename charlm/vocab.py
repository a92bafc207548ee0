"""The character vocabulary: sorted characters <-> integer ids.

Encoding is vectorised with NumPy (a lookup over Unicode code points), so a corpus of millions of
characters encodes in well under a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charlm.errors import CharlmError


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _codes: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise CharlmError("vocabulary: expected distinct single characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})
        object.__setattr__(self, "_codes", np.array([ord(c) for c in self.chars], dtype=np.int64))

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(tuple(sorted(set(text))))

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

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`; characters outside the vocabulary are a clear error."""
        if not text:
            return np.zeros(0, dtype=self.dtype)
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        order = np.argsort(self._codes)
        sorted_codes = self._codes[order]
        pos = np.searchsorted(sorted_codes, codes)
        pos = np.minimum(pos, len(sorted_codes) - 1)
        found = sorted_codes[pos] == codes
        if not found.all():
            missing = self.unknown(text)
            shown = ", ".join(f"{c!r} x{n}" for c, n in missing.most_common(5))
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise CharlmError(
                f"text has {len(missing)} character(s) not in the model's vocabulary: {shown}{more}"
            )
        return order[pos].astype(self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, raw: Any) -> Vocab:
        if not isinstance(raw, dict) or not isinstance(raw.get("chars"), str) or not raw["chars"]:
            raise CharlmError("vocabulary record: expected {'chars': '<the characters>'}")
        return cls(tuple(raw["chars"]))
