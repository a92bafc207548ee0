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
- LSTM gate rows are reordered from i,f,g,o to i,f,o,g so one `sigmoid` covers three gates.
- The state is kept as one tensor per layer, so no stacking or unbinding per step.

The prime is run through the model's own `forward` (one call for the whole prefix); only the
per-character steps use the fast path. Any model the fast path does not understand (another cell,
bidirectional or projected layers, a stand-in module) falls back to calling `model(ids, state)`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

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


class _FastStepper:
    """Shared parts of the LSTM and GRU fast paths; weights are copied once, detached."""

    def __init__(self, model: nn.Module) -> None:
        rnn = model.rnn
        self.model = model
        self.layers = int(model.config.num_layers)
        hidden = int(model.config.hidden_size)
        self.hidden = hidden
        gates = self.gates * hidden
        weights = []
        for k in range(self.layers):
            w_ih = getattr(rnn, f"weight_ih_l{k}").detach()
            w_hh = getattr(rnn, f"weight_hh_l{k}").detach()
            b_ih = _bias(rnn, f"bias_ih_l{k}", gates, w_ih)
            b_hh = _bias(rnn, f"bias_hh_l{k}", gates, w_ih)
            weights.append(self.prepare(w_ih, w_hh, b_ih, b_hh))
        # Layer 0's input projection of every embedding row: a [vocab, gates] lookup table.
        w_in0, b_in0 = weights[0][0], weights[0][2]
        self.table = torch.addmm(b_in0, model.embed.weight.detach(), w_in0)
        self.weights = weights
        self.head_w = model.head.weight.detach().t()
        self.head_b = model.head.bias.detach()

    gates = 4

    def prepare(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, ...]:
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
    """nn.LSTM's equations, one step; state is [h_0, c_0, h_1, c_1, ...], each [batch, hidden]."""

    gates = 4

    def prepare(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, ...]:
        h = self.hidden
        i_f, o, g = torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)
        order = torch.cat([i_f, o, g]).to(w_ih.device)
        # Transposed once so each step is addmm(bias, x, W^T) without a transpose call.
        return (
            w_ih[order].t().contiguous(),
            w_hh[order].t().contiguous(),
            (b_ih + b_hh)[order].contiguous(),
        )

    def from_model_state(self, state: State) -> list[Tensor]:
        h, c = state
        return [t for k in range(self.layers) for t in (h[k], c[k])]

    def to_model_state(self, state: list[Tensor]) -> State:
        return torch.stack(state[0::2]), torch.stack(state[1::2])

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h3 = 3 * self.hidden
        new: list[Tensor] = []
        x = ids
        for k, (w_ih, w_hh, b) in enumerate(self.weights):
            h, c = state[2 * k], state[2 * k + 1]
            if k == 0:
                gates = self.table.index_select(0, x).addmm_(h, w_hh)
            else:
                gates = torch.addmm(b, x, w_ih).addmm_(h, w_hh)
            ifo = gates[:, :h3].sigmoid()
            i, f, o = ifo.chunk(3, 1)
            c = torch.addcmul(f * c, i, gates[:, h3:].tanh())
            x = o * c.tanh()
            new += (x, c)
        return torch.addmm(self.head_b, x, self.head_w), new


class GRUStepper(_FastStepper):
    """nn.GRU's reset-after equations (gate order r, z, n), one step; state is [h_0, h_1, ...]."""

    gates = 3

    def prepare(self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, ...]:
        h2 = 2 * self.hidden
        # r and z add both biases outside any product, so fold b_hh's r,z part into the input
        # bias; n needs b_hn inside r * (W_hn h + b_hn), so it stays with the hidden product.
        b_in = b_ih.clone()
        b_in[:h2] += b_hh[:h2]
        b_hid = torch.zeros_like(b_hh)
        b_hid[h2:] = b_hh[h2:]
        return w_ih.t().contiguous(), w_hh.t().contiguous(), b_in, b_hid

    def from_model_state(self, state: State) -> list[Tensor]:
        return [state[0][k] for k in range(self.layers)]

    def to_model_state(self, state: list[Tensor]) -> State:
        return (torch.stack(state),)

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h2 = 2 * self.hidden
        new: list[Tensor] = []
        x = ids
        for k, (w_ih, w_hh, b_in, b_hid) in enumerate(self.weights):
            h = state[k]
            gi = self.table.index_select(0, x) if k == 0 else torch.addmm(b_in, x, w_ih)
            gh = torch.addmm(b_hid, h, w_hh)
            r, z = (gi[:, :h2] + gh[:, :h2]).sigmoid().chunk(2, 1)
            n = torch.addcmul(gi[:, h2:], r, gh[:, h2:]).tanh()
            x = torch.addcmul(n, z, h - n)
            new.append(x)
        return torch.addmm(self.head_b, x, self.head_w), new


def make_stepper(model: nn.Module, fast: bool = True) -> Stepper:
    """The fast stepper for a plain LSTM/GRU CharLM, else the generic one."""
    if fast and _fast_ok(model):
        cell = model.config.cell
        return LSTMStepper(model) if cell == "lstm" else GRUStepper(model)
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
