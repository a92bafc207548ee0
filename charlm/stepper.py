"""One recurrent step per generated character, with as few PyTorch calls as possible.

At batch 1 a character costs a handful of small matrix-vector products, so the time goes into
per-call overhead rather than arithmetic: `nn.LSTM` at T=1 (argument checks, weight flattening,
the packed-sequence machinery) plus embedding, dropout and head calls cost several times the math.
The fast steppers here read the recurrent weights directly (`model.rnn.weight_ih_l{k}` etc.) and
do each layer's step with one `addmm`, one `sigmoid` and a few element-wise calls:

- Embedding followed by the first layer's input projection is a lookup table (vocab x gates), so
  layer 0 costs one row gather instead of an embedding plus a matrix product.
- Both biases are folded in once (for the GRU, the hidden bias of the candidate gate stays inside
  the reset product, as in the reset-after form `nn.GRU` uses).
- LSTM gate rows are reordered from i,f,g,o to i,f,o,g and the g rows doubled, so one `sigmoid`
  covers all four gates: tanh(x) = 2 sigmoid(2x) - 1, and c = f c + i (2 s - 1) is two calls.
- A layer's new h is multiplied once, by its own recurrent weights and the next layer's input
  weights (or the head) side by side: one product per layer and step instead of two, and one
  cast of h with bf16 weights. (In fp32 this timed about even with two products.) The
  recurrent half is kept in the state for the next step.
- Those fused matrices are laid out once in oneDNN's packed format for the batch size in use
  (charlm.cpu.packed), so a step runs only the product: 1.2-1.4x for batch-32 fp32 steps, 1.1-1.2x
  for bf16 steps at batch 1, 2.4x for the 2x512 LSTM's bf16 step (docs/benchmarks.md). An fp32
  step at batch 1 on one thread keeps torch.mm, which was as fast there.
- The state is a flat list of tensors, so no stacking or unbinding per step. The gates are
  written in place into a buffer kept per batch size, whose per-gate views are made once, and
  at batch 1 on the CPU the lookup table is read by a list index: two calls fewer per layer
  and step than splitting a new gate tensor and an `index_select` (about 1.08x a batch-1 step).
- With `precision="bf16"` the weights are stored in bf16 and each product runs in bf16 (a bf16
  product of these shapes runs at about twice fp32's rate with AVX-512 BF16; whole steps at
  batch 32 gained 1.2-1.4x); the sums, gates and state stay fp32, and the prime runs in fp32.
- With `precision="int8"` each fused matrix is stored in int8 with a scale per output column and
  multiplied by fbgemm's dynamic int8 kernel, which quantizes h to 8 bits per call (one call,
  bias included; charlm.cpu.packed.Int8Weight). A 2x256 LSTM's step weights shrink from 3.1 MB to
  0.8 MB and stay in a core's L2 cache, and the integer products run at about twice fp32's rate
  with AVX-512 VNNI. CPU only; a trained Tiny Shakespeare model's val loss moved by 0.0002
  nats or less (docs/sampling.md).

The prime is run through the model's own `forward` (one call for the whole prefix); only the
per-character steps use the fast path. Any model the fast path does not understand (another cell,
bidirectional or projected layers, a stand-in module) falls back to calling `model(ids, state)`.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from charlm import precision
from charlm.cpu.packed import FixedWeight, Int8Unavailable, Int8Weight
from charlm.errors import CharlmError
from charlm.model import State
from charlm.precision import SAMPLE_PRECISIONS, check_precision

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

    def join(self, states: list[Any]) -> Any:
        """One batch's state from the states of several batches, in order (continuous batching)."""
        ...


class ModelStepper:
    """The generic path: call the model itself for every step (under autocast for bf16)."""

    def __init__(self, model: nn.Module, low: torch.dtype | None = None) -> None:
        self.model = model
        self.low = low

    def start(self, ids: Tensor) -> tuple[Tensor, State]:
        return self._call(ids, None)

    def step(self, ids: Tensor, state: State) -> tuple[Tensor, State]:
        return self._call(ids.unsqueeze(1), state)

    def _call(self, ids: Tensor, state: State | None) -> tuple[Tensor, State]:
        if self.low is None:
            logits, state = self.model(ids, state)
            return logits[:, -1], state
        try:
            with torch.autocast(ids.device.type, self.low):
                logits, state = self.model(ids, state)
        except RuntimeError as e:  # e.g. a fused kernel with no bf16 version on this CPU
            raise CharlmError(
                f"--precision bf16: this model does not run in bf16 on {ids.device.type} "
                f"({str(e).splitlines()[0]}); use --precision fp32"
            ) from None
        return logits[:, -1].float(), tuple(s.float() for s in state)

    def reorder(self, state: State, index: Tensor) -> State:
        return tuple(s.index_select(1, index) for s in state)

    def join(self, states: list[State]) -> State:
        return tuple(torch.cat(parts, 1) for parts in zip(*states, strict=True))


class _FastStepper:
    """Shared parts of the LSTM and GRU fast paths; weights are copied once, detached.

    A layer's new hidden state is read by two matrices: its own recurrent weights (at the next
    step) and the next layer's input weights, or the head, at this step. Both are concatenated
    column-wise into one [hidden, gates + next] matrix, so each layer costs one product per
    step and the recurrent part of the next step's gates is ready when it starts. The state
    therefore carries, per layer, that precomputed recurrent product next to h (and c).
    """

    gates = 4
    sigmoids = 4  # gates that go through the one sigmoid call

    def __init__(self, model: nn.Module, low: torch.dtype | None = None) -> None:
        rnn = model.rnn
        self.model = model
        self.low = low  # the products' dtype, None for fp32
        self.layers = int(model.config.num_layers)
        hidden = int(model.config.hidden_size)
        self.hidden = hidden
        self.width = self.gates * hidden
        layers = []
        for k in range(self.layers):
            w_ih = getattr(rnn, f"weight_ih_l{k}").detach()
            w_hh = getattr(rnn, f"weight_hh_l{k}").detach()
            b_ih = _bias(rnn, f"bias_ih_l{k}", self.width, w_ih)
            b_hh = _bias(rnn, f"bias_hh_l{k}", self.width, w_ih)
            layers.append(self.prepare(w_ih, w_hh, b_ih, b_hh))
        # Layer 0's input projection of every embedding row: a [vocab, gates] lookup table.
        w_in0, b_in0 = layers[0][0], layers[0][2]
        self.table = torch.addmm(b_in0, model.embed.weight.detach(), w_in0)
        # Its rows as views, for one stream on the CPU: a list index instead of an index_select
        # call (0.3 against 3.6 us). On a GPU, reading the id would wait for the device.
        self.rows = list(self.table.split(1)) if self.table.device.type == "cpu" else None
        self.scratch: dict[int, list[tuple[Tensor, tuple[Tensor, ...]]]] = {}
        head = (model.head.weight.detach().t(), model.head.bias.detach())
        self.fused: list[tuple[FixedWeight | Int8Weight, Tensor]] = []
        for k, (_, w_hh, _, b_rec) in enumerate(layers):
            w_next, b_next = (layers[k + 1][0], layers[k + 1][2]) if k + 1 < self.layers else head
            w = torch.cat([w_hh, w_next], 1)
            b = torch.cat([b_rec, b_next]).contiguous()
            if low is torch.int8:
                self.fused.append((Int8Weight(w.contiguous(), b), b))
            else:
                self.fused.append((FixedWeight(w.to(low or w.dtype).contiguous()), b))

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> (W_ih^T, W_hh^T, input-side bias, recurrent-side bias), gate columns in step order."""
        raise NotImplementedError

    def product(self, h: Tensor, w: FixedWeight | Int8Weight, b: Tensor) -> Tensor:
        """b + h @ w in fp32; with bf16 weights the product runs in bf16 and the sum in fp32;
        with int8 weights, in integers with the bias added in fp32."""
        if self.low is None or isinstance(w, Int8Weight):
            return w.addmm(b, h)
        return torch.add(b, w.mm(h.to(self.low)))

    def recurrent(self, k: int, h: Tensor) -> Tensor:
        """Layer k's recurrent product h @ W_hh^T (+ its bias), as a step leaves it for the next."""
        w, b = self.fused[k]
        part = w.w[:, : self.width]  # once per prime, so not worth a packed copy
        return torch.add(b[: self.width], torch.mm(h.to(part.dtype), part))

    def lookup(self, ids: Tensor) -> Tensor:
        """Layer 0's input product for ids [batch]: rows of the lookup table."""
        if self.rows is not None and ids.shape[0] == 1:
            return self.rows[int(ids)]
        return self.table.index_select(0, ids)

    def gate_buffer(self, k: int, batch: int) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Layer k's buffer for its sigmoid gates at this batch size, and a view of each gate.
        Made once: a step writes the gates into it in place, where splitting a new tensor into
        gates would cost a call per step and layer (about 5 us). Scratch only, never part of a
        returned state."""
        if batch not in self.scratch:
            made = []
            for _ in range(self.layers):
                buf = self.table.new_empty(batch, self.sigmoids * self.hidden)
                made.append((buf, buf.split(self.hidden, 1)))
            self.scratch[batch] = made
        return self.scratch[batch][k]

    def start(self, ids: Tensor) -> tuple[Tensor, list[Tensor]]:
        # The prime runs once, through the model's own forward in fp32, whatever the precision.
        logits, state = self.model(ids, None)
        return logits[:, -1], self.from_model_state(state)

    def reorder(self, state: list[Tensor], index: Tensor) -> list[Tensor]:
        return [s.index_select(0, index) for s in state]

    def join(self, states: list[list[Tensor]]) -> list[Tensor]:
        return [torch.cat(parts, 0) for parts in zip(*states, strict=True)]


def _bias(rnn: nn.Module, name: str, size: int, like: Tensor) -> Tensor:
    b = getattr(rnn, name, None)
    return b.detach() if b is not None else like.new_zeros(size)


class LSTMStepper(_FastStepper):
    """nn.LSTM's equations, one step; state is [h_0, c_0, r_0, h_1, c_1, r_1, ...], each
    [batch, ...], where r_k = h_k @ W_hh_k^T."""

    gates = 4

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h = self.hidden
        i_f, o, g = torch.arange(0, 2 * h), torch.arange(3 * h, 4 * h), torch.arange(2 * h, 3 * h)
        order = torch.cat([i_f, o, g]).to(w_ih.device)
        # The g rows doubled (exact in floating point): the step's one sigmoid then gives
        # sigmoid(2 g), from which tanh(g) = 2 sigmoid(2 g) - 1.
        scale = torch.ones(4 * h, 1, dtype=w_ih.dtype, device=w_ih.device)
        scale[3 * h :] = 2
        w_ih, w_hh = w_ih[order] * scale, w_hh[order] * scale
        bias = (b_ih + b_hh)[order] * scale.view(-1)
        # Transposed once so each step is addmm(bias, x, W^T) without a transpose call; both
        # biases sit on the input side, which the lookup table or the layer below already adds.
        return w_ih.t(), w_hh.t(), bias, torch.zeros_like(b_ih)

    def from_model_state(self, state: State) -> list[Tensor]:
        h, c = state
        return [t for k in range(self.layers) for t in (h[k], c[k], self.recurrent(k, h[k]))]

    def to_model_state(self, state: list[Tensor]) -> State:
        return torch.stack(state[0::3]), torch.stack(state[1::3])

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        width = self.width
        new: list[Tensor] = []
        x = self.lookup(ids)  # this layer's input product, bias included
        for k, (w, b) in enumerate(self.fused):
            c, rec = state[3 * k + 1], state[3 * k + 2]
            buf, (i, f, o, g2) = self.gate_buffer(k, ids.shape[0])
            torch.add(x, rec, out=buf).sigmoid_()  # g2 = sigmoid(2 g)
            c = torch.addcmul(f * c, i, g2, value=2).sub_(i)  # f c + i tanh(g)
            h = o * _tanh(c)
            out = self.product(h, w, b)  # [next step's recurrent product | next layer's input]
            new += (h, c, out[:, :width])
            x = out[:, width:]
        return x, new


class GRUStepper(_FastStepper):
    """nn.GRU's reset-after equations (gate order r, z, n), one step; state is
    [h_0, r_0, h_1, r_1, ...], where r_k = h_k @ W_hh_k^T + b_hn (the n gate's hidden bias)."""

    gates = 3
    sigmoids = 2  # r and z; n has its tanh

    def prepare(
        self, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h2 = 2 * self.hidden
        # r and z add both biases outside any product, so fold b_hh's r,z part into the input
        # bias; n needs b_hn inside r * (W_hn h + b_hn), so it stays with the hidden product.
        b_in = b_ih.clone()
        b_in[:h2] += b_hh[:h2]
        b_rec = torch.zeros_like(b_hh)
        b_rec[h2:] = b_hh[h2:]
        return w_ih.t(), w_hh.t(), b_in, b_rec

    def from_model_state(self, state: State) -> list[Tensor]:
        h = state[0]
        return [t for k in range(self.layers) for t in (h[k], self.recurrent(k, h[k]))]

    def to_model_state(self, state: list[Tensor]) -> State:
        return (torch.stack(state[0::2]),)

    def step(self, ids: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        width, h2 = self.width, 2 * self.hidden
        new: list[Tensor] = []
        x = self.lookup(ids)
        for k, (w, b) in enumerate(self.fused):
            h, rec = state[2 * k], state[2 * k + 1]
            buf, (r, z) = self.gate_buffer(k, ids.shape[0])
            torch.add(x[:, :h2], rec[:, :h2], out=buf).sigmoid_()
            n = _tanh(torch.addcmul(x[:, h2:], r, rec[:, h2:]))
            h = torch.lerp(n, h, z)  # (1 - z) n + z h
            out = self.product(h, w, b)
            new += (h, out[:, :width])
            x = out[:, width:]
        return x, new


TANH_BY_SIGMOID = 4096
"""From this many elements tanh is computed as 2 sigmoid(2x) - 1: torch's CPU tanh (accurate to
an ulp) costs about 3 ns an element, its sigmoid under 1, so at batch 32 the four calls beat one."""


def _tanh(x: Tensor) -> Tensor:
    if x.numel() < TANH_BY_SIGMOID or x.device.type != "cpu":
        return x.tanh()
    s = torch.add(x, x).sigmoid_()  # x + x, not x * 2: a Python scalar costs a tensor copy
    return s.add_(s).sub_(1)


def make_stepper(
    model: nn.Module, fast: bool = True, precision: str = "fp32", batch: int = 1
) -> Stepper:
    """The fast stepper for a plain LSTM/GRU CharLM, else the generic one. `precision="auto"`
    takes `choose_precision`'s pick for steps of `batch` rows."""
    check_precision(precision)
    if precision == "auto":
        precision = auto_precision(model, batch, fast)[0]
    low = SAMPLE_PRECISIONS[precision]
    if fast and _fast_ok(model):
        cell = model.config.cell
        try:
            return LSTMStepper(model, low) if cell == "lstm" else GRUStepper(model, low)
        except Int8Unavailable as e:
            raise CharlmError(f"--precision int8: {e}; use --precision fp32") from None
    if low is torch.int8:
        raise CharlmError(
            "--precision int8: only plain LSTM and GRU models trained with the fused "
            "implementation have int8 steps; use --precision fp32"
        )
    return ModelStepper(model, low)


def auto_precision(
    model: nn.Module, batch: int = 1, fast: bool = True
) -> tuple[str, dict[str, float]]:
    """Sampling's `auto`: `precision.choose_precision` over the steppers this model can have."""
    names = precision.sample_candidates(model, fast, _fast_ok(model))
    build = lambda name: make_stepper(model, fast, name, batch)  # noqa: E731
    return precision.choose_precision(model, build, names, batch)


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
