"""One recurrent step per generated character, with as few PyTorch calls as possible.

At batch 1 a character costs a handful of small matrix-vector products, so the time goes into
per-call overhead rather than arithmetic: `nn.LSTM` at T=1 (argument checks, weight flattening,
the packed-sequence machinery) plus embedding, dropout and head calls cost several times the math.
The fast steppers here read the recurrent weights directly (`model.rnn.weight_ih_l{k}` etc.) and
do each step with `addmm`, one `sigmoid` and a few element-wise calls:

- Embedding followed by the first layer's input projection is a lookup table (vocab x gates), so
  layer 0 costs one row gather instead of an embedding plus a matrix product.
- Both biases are folded in once (for the GRU, the hidden bias of the candidate gate stays inside
  the reset product, as in the reset-after form `nn.GRU` uses).
- The rows of every tanh gate are doubled once, so each step uses tanh(a) = 2 sigmoid(2a) - 1:
  on the CPU `tanh` costs several times a `sigmoid`, and one `sigmoid` covers all LSTM gates.
- The state is kept as one tensor per layer, so no stacking or unbinding per step.
- With `precision` fp16 the products read half the bytes (fbgemm's packed fp16 weights on the
  CPU), which is what a single stream's step is bound by; bf16/fp16 elsewhere cast the weights.

The prime is run through the model's own `forward` (one call for the whole prefix); only the
per-character steps use the fast path. Any model the fast path does not understand (another cell,
bidirectional or projected layers, a stand-in module) falls back to calling `model(ids, state)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from charlm.errors import CharlmError
from charlm.model import State

Tensor = torch.Tensor


class Stepper(Protocol):
    """What the decoders need from a model: run a prefix, then one step at a time."""

    def start(self, ids: Tensor) -> tuple[Tensor, Any]:
        """ids [batch, time] from a zero state -> logits [batch, vocab] after the last, state."""
        ...

    def step(self, ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        """ids [batch] -> logits [batch, vocab] for the next character, and the new state."""
        ...

    def reorder(self, state: Any, index: Tensor) -> Any:
        """The state of the streams `index` picks, in that order (beam search)."""
        ...


class ModelStepper:
    """The generic path: call the model itself for every step."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def start(self, ids: Tensor) -> tuple[Tensor, State]:
        logits, state = self.model(ids, None)
        return logits[:, -1], state

    def step(self, ids: Tensor, state: State) -> tuple[Tensor, State]:
        logits, state = self.model(ids.unsqueeze(1), state)
        return logits[:, -1], state

    def reorder(self, state: State, index: Tensor) -> State:
        return tuple(s.index_select(1, index) for s in state)


PRECISIONS = ("fp32", "bf16", "fp16")


class Affine:
    """x @ W + b in fp32: `addmm` on W stored transposed, so no transpose call per step."""

    def __init__(self, w_t: Tensor, b: Tensor | None) -> None:
        self.w_t, self.b = w_t, b

    def __call__(self, x: Tensor, acc: Tensor | None = None) -> Tensor:
        """x @ W (+ b) added to `acc` in place when given (its bias is already in `acc`)."""
        if acc is not None:
            return acc.addmm_(x, self.w_t)
        return torch.mm(x, self.w_t) if self.b is None else torch.addmm(self.b, x, self.w_t)


class PackedFp16Affine(Affine):
    """fp16 weights, fp32 inputs and sums, in fbgemm's packed layout (CPU).

    At one stream a step reads every weight once, so its speed is memory bandwidth: half the
    bytes, about twice the characters per second (docs/benchmarks.md).
    """

    def __init__(self, w_t: Tensor, b: Tensor | None) -> None:
        super().__init__(w_t, b)
        self.packed = torch.ops.quantized.linear_prepack_fp16(w_t.t().contiguous(), b)

    def __call__(self, x: Tensor, acc: Tensor | None = None) -> Tensor:
        y = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return y if acc is None else acc.add_(y)


class CastAffine(Affine):
    """Weights and inputs in bf16/fp16 for the product, fp32 outside it (like autocast)."""

    def __init__(self, w_t: Tensor, b: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__(w_t, b)
        self.w = w_t.t().contiguous().to(dtype)  # [out, in]: `linear`'s fast layout on the CPU
        self.dtype = dtype

    def __call__(self, x: Tensor, acc: Tensor | None = None) -> Tensor:
        y = nn.functional.linear(x.to(self.dtype), self.w).float()
        if acc is not None:
            return acc.add_(y)
        return y if self.b is None else y.add_(self.b)


def fbgemm_fp16() -> bool:
    """Whether this PyTorch has fbgemm's packed fp16 matrix products (x86 CPU builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16"
    )


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise CharlmError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")


def affine_maker(precision: str, device: torch.device) -> Callable[[Tensor, Tensor | None], Affine]:
    """How the fast steppers multiply: fp32 exactly, or with bf16/fp16 weights."""
    check_precision(precision)
    if precision == "fp32":
        return Affine
    if precision == "fp16" and device.type == "cpu" and fbgemm_fp16():
        return PackedFp16Affine
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda w_t, b: CastAffine(w_t, b, dtype)


class _FastStepper:
    """Shared parts of the LSTM and GRU fast paths; weights are copied once, detached.

    `self.layers[k]` holds layer k's input and hidden products as `Affine`s; layer 0's input
    product is a lookup table instead (always fp32: it costs nothing per step).
    """

    gates = 4

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        rnn = model.rnn
        self.model = model
        self.num_layers = int(model.config.num_layers)
        self.hidden = int(model.config.hidden_size)
        gates = self.gates * self.hidden
        make = affine_maker(precision, model.embed.weight.device)
        self.layers: list[tuple[Affine, Affine]] = []
        for k in range(self.num_layers):
            w_ih = getattr(rnn, f"weight_ih_l{k}").detach()
            w_hh = getattr(rnn, f"weight_hh_l{k}").detach()
            b_ih = _bias(rnn, f"bias_ih_l{k}", gates, w_ih)
            b_hh = _bias(rnn, f"bias_hh_l{k}", gates, w_ih)
            w_ih_t, b_in, w_hh_t, b_hid = self.prepare(w_ih, w_hh, b_ih, b_hh)
            if k == 0:
                # The input product of every embedding row: a [vocab, gates] lookup table.
                self.table = torch.addmm(b_in, model.embed.weight.detach(), w_ih_t)
            self.layers.append((make(w_ih_t, b_in), make(w_hh_t, b_hid)))
        self.head = make(model.head.weight.detach().t(), model.head.bias.detach())

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """nn.LSTM/nn.GRU's weights -> (W_ih^T, input bias, W_hh^T, hidden bias or None)."""
        raise NotImplementedError

    def start(self, ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        logits, state = self.model(ids, None)
        return logits[:, -1], self.from_model_state(state)

    def reorder(self, state: list[Tensor], index: Tensor) -> list[Tensor]:
        return [s.index_select(0, index) for s in state]


def _bias(rnn: nn.Module, name: str, size: int, like: Tensor) -> Tensor:
    b = getattr(rnn, name, None)
    return b.detach() if b is not None else like.new_zeros(size)


class LSTMStepper(_FastStepper):
    """nn.LSTM's equations, one step; state is [h_0, c_0, h_1, c_1, ...], each [batch, hidden].

    Gate rows are reordered from i,f,g,o to i,f,o,g, and the g rows doubled, so one `sigmoid`
    covers all four gates: tanh(a) = 2 * sigmoid(2a) - 1, and on the CPU `sigmoid` is several
    times cheaper than `tanh` (doubling is exact in floating point).
    """

    gates = 4

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, None]:
        h = self.hidden
        order = torch.cat(
            [torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)]
        )
        scale = torch.ones(4 * h, dtype=w_ih.dtype)
        scale[3 * h :] = 2.0
        order, scale = order.to(w_ih.device), scale.to(w_ih.device)
        return (
            (w_ih[order] * scale[:, None]).t().contiguous(),
            ((b_ih + b_hh)[order] * scale).contiguous(),
            (w_hh[order] * scale[:, None]).t().contiguous(),
            None,
        )

    def from_model_state(self, state: State) -> list[Tensor]:
        h, c = state
        return [t for k in range(self.num_layers) for t in (h[k], c[k])]

    def to_model_state(self, state: list[Tensor]) -> State:
        return torch.stack(state[0::2]), torch.stack(state[1::2])

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        new: list[Tensor] = []
        x = ids
        for k, (ih, hh) in enumerate(self.layers):
            h, c = state[2 * k], state[2 * k + 1]
            gates = hh(h, self.table.index_select(0, x) if k == 0 else ih(x))
            i, f, o, g2 = gates.sigmoid_().chunk(4, 1)  # g2 = sigmoid(2a): tanh(a) = 2*g2 - 1
            c = torch.addcmul(f * c, i, g2, value=2.0).sub_(i)
            x = o * c.tanh()
            new += (x, c)
        return self.head(x), new


class GRUStepper(_FastStepper):
    """nn.GRU's reset-after equations (gate order r, z, n), one step; state is [h_0, h_1, ...].

    The n rows are doubled, as in the LSTM stepper, so its tanh is a cheaper sigmoid.
    """

    gates = 3

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h2 = 2 * self.hidden
        # r and z add both biases outside any product, so fold b_hh's r,z part into the input
        # bias; n needs b_hn inside r * (W_hn h + b_hn), so it stays with the hidden product.
        b_in = b_ih.clone()
        b_in[:h2] += b_hh[:h2]
        b_hid = torch.zeros_like(b_hh)
        b_hid[h2:] = b_hh[h2:]
        scale = torch.ones_like(b_in)
        scale[h2:] = 2.0
        return (
            (w_ih * scale[:, None]).t().contiguous(),
            b_in * scale,
            (w_hh * scale[:, None]).t().contiguous(),
            b_hid * scale,
        )

    def from_model_state(self, state: State) -> list[Tensor]:
        return [state[0][k] for k in range(self.num_layers)]

    def to_model_state(self, state: list[Tensor]) -> State:
        return (torch.stack(state),)

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h2 = 2 * self.hidden
        new: list[Tensor] = []
        x = ids
        for k, (ih, hh) in enumerate(self.layers):
            h = state[k]
            gi = self.table.index_select(0, x) if k == 0 else ih(x)
            gh = hh(h)
            r, z = (gi[:, :h2] + gh[:, :h2]).sigmoid_().chunk(2, 1)
            n = torch.addcmul(gi[:, h2:], r, gh[:, h2:]).sigmoid_().mul_(2.0).sub_(1.0)
            x = torch.addcmul(n, z, h - n)
            new.append(x)
        return self.head(x), new


def make_stepper(model: nn.Module, fast: bool = True, precision: str = "fp32") -> Stepper:
    """The fast stepper for a plain LSTM/GRU CharLM, else the generic one.

    `precision` bf16/fp16 runs the steps' matrix products with weights in that type (fp32 sums
    on the CPU's fbgemm path); the prime and any model the fast path does not know run in fp32.
    """
    if fast and _fast_ok(model):
        cell = model.config.cell
        return (LSTMStepper if cell == "lstm" else GRUStepper)(model, precision)
    affine_maker(precision, next(model.parameters()).device)  # still reject a bad name
    return ModelStepper(model)


def _fast_ok(model: nn.Module) -> bool:
    """Whether the model has exactly the layout the fast steppers read."""
    config = getattr(model, "config", None)
    rnn = getattr(model, "rnn", None)
    if config is None or rnn is None or getattr(config, "cell", None) not in ("lstm", "gru"):
        return False
    if getattr(config, "impl", "fused") != "fused":
        # The reference cells may be a reset-before GRU, or cells a user has changed: run the
        # model's own forward so sampling computes exactly what the model defines.
        return False
    if getattr(rnn, "bidirectional", False) or getattr(rnn, "proj_size", 0):
        return False
    if not all(hasattr(model, name) for name in ("embed", "head")):
        return False
    if getattr(model.head, "bias", None) is None:
        return False
    return all(
        hasattr(rnn, f"weight_{kind}_l{k}")
        for k in range(int(config.num_layers))
        for kind in ("ih", "hh")
    )
