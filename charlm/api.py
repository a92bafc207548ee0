"""`charlm.load`: a trained model as one object to sample and score from Python.

The object wraps the pieces `charlm sample` and `charlm eval` use (the loaded checkpoint, the
decoders of `charlm.sample`, `charlm.evaluate.evaluate_ids`), so the same seed gives the same text
as the command, and a bad argument raises the `CharlmError` the command would print.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from charlm.errors import CharlmError

if TYPE_CHECKING:
    from charlm.checkpoint import Loaded
    from charlm.config import Config
    from charlm.evaluate import EvalResult
    from charlm.sample import Sample
    from charlm.sample_options import SampleOptions
    from charlm.vocab import Vocab


def load(
    source: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    impl: str | None = None,
    threads: int | None = None,
) -> Model:
    """Load a run folder (its best checkpoint, else its newest), a checkpoint or an exported
    weights file.

    `device` is cpu, cuda, mps or auto (the CPU or the GPU here, whichever runs a sampling step
    faster, timed as `charlm sample --device auto` does); `precision` is that of
    `charlm sample --precision` (auto is resolved here, once, for one sample); `threads` as
    `charlm sample --threads`.
    """
    from charlm.checkpoint import load_model
    from charlm.model import check_device
    from charlm.precision import check_precision
    from charlm.sample_options import SampleOptions
    from charlm.sample_setup import (
        check_threads,
        choose_device,
        resolve_precision,
        sampling_threads,
    )

    check_precision(precision)
    check_threads(threads)
    check_device(device)
    loaded = load_model(source, "cpu" if device == "auto" else device, impl)
    options = SampleOptions(precision=precision)
    with sampling_threads(loaded.model, options, threads):
        if device == "auto":
            from dataclasses import replace

            loaded = replace(loaded, model=choose_device(loaded.model, options)[0])
        precision = resolve_precision(loaded.model, options)[0].precision
    return Model(loaded, precision, threads)


class Model:
    """A trained character model: `generate`, `stream`, `generate_batch`, `beam`, `score`."""

    def __init__(self, loaded: Loaded, precision: str = "fp32", threads: int | None = None) -> None:
        self.loaded = loaded
        self.precision = precision
        self.threads = threads

    @property
    def vocab(self) -> Vocab:
        return self.loaded.vocab

    @property
    def config(self) -> Config:
        return self.loaded.config

    @property
    def path(self) -> Path:
        """The file the weights came from."""
        return self.loaded.checkpoint.path

    @property
    def module(self) -> Any:
        """The torch module (a `charlm.model.CharLM`), in eval mode."""
        return self.loaded.model

    def __repr__(self) -> str:
        m = self.config.model
        params = self.loaded.model.num_parameters()
        device = next(self.loaded.model.parameters()).device.type
        return (
            f"<charlm.Model {m.cell} {m.num_layers}x{m.hidden_size}, {len(self.vocab)} symbols, "
            f"{params:,} parameters, step {self.loaded.checkpoint.step}, {device}, "
            f"{self.precision}, from {self.path}>"
        )

    def options(
        self,
        length: int = 200,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        unknown: str = "error",
        num_samples: int = 1,
        beam: int | None = None,
    ) -> SampleOptions:
        """The checked `SampleOptions` the other methods decode with."""
        from charlm.sample_options import SampleOptions
        from charlm.vocab import check_unknown_policy

        check_unknown_policy(unknown)
        return SampleOptions(
            length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            num_samples=num_samples, stops=(stop,) if isinstance(stop, str) else tuple(stop),
            unknown=unknown, precision=self.precision, beam=beam,
        )  # fmt: skip

    def generate(
        self,
        prime: str = "",
        length: int = 200,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        unknown: str = "error",
    ) -> str:
        """One continuation of `prime` (not repeated), as `charlm sample` prints it after the
        prime; it ends early with the first `stop` string produced."""
        return "".join(
            self.stream(
                prime, length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                stop=stop, unknown=unknown,
            )
        )  # fmt: skip

    def stream(
        self,
        prime: str = "",
        length: int = 200,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        unknown: str = "error",
    ) -> Iterator[str]:
        """The characters of `generate` as they are made, in constant memory for any length
        (nothing is kept). The prime is checked before this returns. While the iterator is
        alive, torch runs on the threads sampling uses; they are put back when it ends."""
        from charlm.sample import generate_batch

        options = self.options(
            length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
            unknown=unknown,
        )  # fmt: skip
        rows = generate_batch(self.loaded.model, self.vocab, prime, options)
        return self._threaded(char for (char,) in rows)

    def generate_batch(
        self,
        prime: str = "",
        num_samples: int = 2,
        length: int = 200,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        unknown: str = "error",
    ) -> list[Sample]:
        """`num_samples` continuations drawn in one batch (sample i is the one seed + i gives
        alone), each with its log-likelihood."""
        from charlm.sample import sample_batch

        options = self.options(
            length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop,
            unknown=unknown, num_samples=num_samples,
        )  # fmt: skip
        with self._threads(options):
            return sample_batch(self.loaded.model, self.vocab, prime, options)

    def beam(
        self,
        prime: str = "",
        width: int = 4,
        length: int = 200,
        num_samples: int = 1,
        stop: str | Sequence[str] = (),
        unknown: str = "error",
    ) -> list[Sample]:
        """The likeliest continuations a beam of `width` finds, best first (no randomness)."""
        from charlm.sample import beam_search

        options = self.options(
            length, stop=stop, unknown=unknown, num_samples=num_samples, beam=width
        )
        with self._threads(options):
            return beam_search(self.loaded.model, self.vocab, prime, options)

    def score(self, text: str, unknown: str = "error", streams: int = 1) -> EvalResult:
        """Mean loss (nats per character), bits per character and perplexity of `text`, read in
        order with the state carried (`streams=1`: the exact single-pass score)."""
        from charlm.evaluate import evaluate_ids
        from charlm.vocab import check_unknown_policy

        check_unknown_policy(unknown)
        ids = self.vocab.encode(text, unknown)
        if len(ids) < 2:
            raise CharlmError("text: too short to score; need at least 2 characters")
        return evaluate_ids(self.loaded.model, ids, streams=streams)

    def _threads(self, options: SampleOptions) -> Any:
        from charlm.sample_setup import sampling_threads

        return sampling_threads(self.loaded.model, options, self.threads)

    def _threaded(self, chars: Iterator[str]) -> Iterator[str]:
        with self._threads(self.options()):
            yield from chars
