"""The options of `charlm sample` as one checked value, and the stop strings as typed.

`SampleOptions` is checked when made, so every instance is one the decoders in `charlm.sample`
accept, and the errors name the command line option a user typed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from charlm.errors import CharlmError
from charlm.precision import check_precision

# Below this, logits / T overflow float32 (or 1 / T is inf) and the argmax picks the first inf,
# not the likeliest symbol; any T this small is greedy to every digit anyway.
MIN_TEMPERATURE = 1e-6


@dataclass(frozen=True, kw_only=True)
class SampleOptions:
    """What to decode: how many characters, how each is picked, when a sample stops.

    `temperature` None means "not given": 1 when sampling. `beam` set means beam search of that
    width, which takes none of the sampling options (temperature, top_k, top_p) because it does
    not sample. The options are checked when made, so every instance is one the decoders accept;
    the errors name the `charlm sample` option.
    """

    length: int = 200
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1
    stops: tuple[str, ...] = ()
    unknown: str = "error"
    precision: str = "fp32"
    beam: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stops", tuple(self.stops))
        self._check()

    def _check(self) -> None:
        if self.beam is not None:
            self._check_beam(self.beam)
        temperature = 1.0 if self.temperature is None else self.temperature
        if self.length < 1:
            raise CharlmError(f"--length {self.length}: expected a positive number of characters")
        if not temperature >= 0 or math.isinf(temperature):
            raise CharlmError(
                f"--temperature {temperature}: expected a finite number >= 0 (0 = greedy)"
            )
        if 0 < temperature < MIN_TEMPERATURE:
            raise CharlmError(
                f"--temperature {temperature}: expected 0 (greedy) or at least "
                f"{MIN_TEMPERATURE:g}; smaller values are greedy anyway, and the smallest "
                f"overflow the scaled logits to inf"
            )
        if self.top_k is not None and self.top_k < 1:
            raise CharlmError(f"--top-k {self.top_k}: expected a whole number >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise CharlmError(f"--top-p {self.top_p}: expected a number in (0, 1]")
        if self.num_samples < 1:
            raise CharlmError(f"--num-samples {self.num_samples}: expected a whole number >= 1")
        if "" in self.stops:
            raise CharlmError("--stop '': expected a non-empty string")
        check_precision(self.precision)

    def _check_beam(self, beam: int) -> None:
        """Beam search is deterministic: sampling options would be silently ignored; refuse them."""
        if beam < 1:
            raise CharlmError(f"--beam {beam}: expected a whole number >= 1")
        sampling = {"--temperature": self.temperature, "--top-k": self.top_k, "--top-p": self.top_p}
        given = [name for name, value in sampling.items() if value is not None]
        if given:
            raise CharlmError(
                f"--beam searches for the likeliest text and does not sample; "
                f"drop {', '.join(given)}"
            )
        if self.num_samples > beam:
            raise CharlmError(
                f"--num-samples {self.num_samples} with --beam {beam}: a beam of {beam} keeps at "
                f"most {beam} continuations; use --num-samples <= --beam"
            )

    @property
    def batch(self) -> int:
        """The rows each step runs: the beam width, else the number of samples."""
        return self.beam if self.beam is not None else self.num_samples


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "0": "\0"}


def parse_stops(texts: Iterable[str]) -> tuple[str, ...]:
    r"""Stop strings as typed on a shell line: `\n`, `\t`, `\r`, `\0` and `\\` are escapes."""
    stops = []
    for text in texts:
        stop = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), text)
        if not stop:
            raise CharlmError("--stop '': expected a non-empty string")
        stops.append(stop)
    return tuple(stops)
