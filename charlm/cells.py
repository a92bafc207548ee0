"""Reference LSTM and GRU, written line by line from the equations of the design note cells.md.

Why this module exists: ``nn.LSTM`` and ``nn.GRU`` are opaque fused kernels, and ``nn.GRU`` only
offers the "reset after" candidate. These classes spell the equations out so a reader can check
them, change them, and train the classic "reset before" GRU, while staying drop-in compatible
with the torch modules: same constructor arguments, same parameter names, shapes and gate row
order (LSTM: i, f, g, o; GRU: r, z, n), same ``forward`` signature and return values
(always ``batch_first``). A ``state_dict`` therefore moves between the two in either direction.

Layout, top to bottom:

1. the element-wise gate equations (``lstm_pointwise``, ``gru_pointwise_after``,
   ``gru_pointwise_before``), the only place the maths lives;
2. the single-step cells (``lstm_cell``, ``gru_cell``) that add the matrix products;
3. the sequence modules ``ReferenceLSTM`` and ``ReferenceGRU``.

Speed comes from the structure of the loop, not from tricks: the input half of every gate is one
matrix product over the whole sequence, the hidden half is one stacked product per step (two
for the reset-before GRU, whose candidate product needs ``r_t`` first), and per-step inputs and
outputs move through ``unbind``/``stack``, which keep autograd at one node per sequence instead of
one full-size gradient buffer per step. The element-wise functions run eagerly: neither
TorchScript nor torch.compile made them faster where measured (docs/benchmarks.md), and
``bench/bench_cells.py --fusion`` can measure them compiled again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GRU_RESETS",
    "ReferenceGRU",
    "ReferenceLSTM",
    "gru_cell",
    "gru_pointwise_after",
    "gru_pointwise_before",
    "lstm_cell",
    "lstm_pointwise",
]

GRU_RESETS = ("before", "after")
"""``before``: classic GRU (cells.md); ``after``: the fused-kernel form of nn.GRU and cuDNN."""


# --------------------------------------------------------------------------------------------
# 1. The element-wise equations. Arguments are pre-activations: the sums W · [h_{t-1}, x_t] + b
#    computed by the caller, stacked along dim 1 in torch's gate order.
# --------------------------------------------------------------------------------------------


def lstm_pointwise(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
    """LSTM step after the products: ``gates`` is [B, 4H] = W · [h_{t-1}, x_t] + b, rows i, f, g, o.

    Returns (h_t, C_t).
    """
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i)  # i_t  = σ(W_i · [h_{t-1}, x_t] + b_i)
    f = torch.sigmoid(f)  # f_t  = σ(W_f · [h_{t-1}, x_t] + b_f)
    g = torch.tanh(g)  # C~_t = tanh(W_C · [h_{t-1}, x_t] + b_C)
    o = torch.sigmoid(o)  # o_t  = σ(W_o · [h_{t-1}, x_t] + b_o)
    c = f * c_prev + i * g  # C_t  = f_t * C_{t-1} + i_t * C~_t
    h = o * torch.tanh(c)  # h_t  = o_t * tanh(C_t)
    return h, c


def gru_pointwise_after(x_part: Tensor, h_part: Tensor, h_prev: Tensor) -> Tensor:
    """GRU step, reset AFTER the hidden product (nn.GRU / cuDNN form).

    ``x_part`` = W_x x_t + b_x and ``h_part`` = W_h h_{t-1} + b_h, each [B, 3H] with rows r, z, n;
    they stay separate because the reset gate multiplies only the hidden part of the candidate.
    """
    x_r, x_z, x_n = x_part.chunk(3, dim=1)
    h_r, h_z, h_n = h_part.chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)  # r_t  = σ(W_r · [h_{t-1}, x_t] + b_r)
    z = torch.sigmoid(x_z + h_z)  # z_t  = σ(W_z · [h_{t-1}, x_t] + b_z)
    n = torch.tanh(x_n + r * h_n)  # h~_t = tanh(W_hx x_t + b_hx + r_t * (W_hh h_{t-1} + b_hh))
    return z * h_prev + (1 - z) * n  # h_t  = z_t * h_{t-1} + (1 - z_t) * h~_t


def gru_pointwise_before(x_n: Tensor, rh_part: Tensor, z: Tensor, h_prev: Tensor) -> Tensor:
    """Second half of a classic GRU step (reset BEFORE the product, cells.md).

    ``x_n`` = W_hx x_t + b_hx and ``rh_part`` = W_hh (r_t * h_{t-1}) + b_hh, each [B, H]; the
    caller computes r_t and z_t first (see ``gru_cell``) because ``rh_part`` needs r_t.
    """
    n = torch.tanh(x_n + rh_part)  # h~_t = tanh(W_h · [r_t * h_{t-1}, x_t] + b_h)
    return z * h_prev + (1 - z) * n  # h_t  = z_t * h_{t-1} + (1 - z_t) * h~_t


def _gru_gates_rz(x_rz: Tensor, h_rz: Tensor) -> tuple[Tensor, Tensor]:
    """Reset and update gates from their [B, 2H] input and hidden parts (rows r, z)."""
    r, z = torch.sigmoid(x_rz + h_rz).chunk(2, dim=1)  # r_t, z_t = σ(W_{r,z} · [h, x] + b_{r,z})
    return r, z


# --------------------------------------------------------------------------------------------
# 2. Single-step cells: products plus the equations above. The sequence modules run exactly
#    these steps, with the input products hoisted out of the time loop.
# --------------------------------------------------------------------------------------------


def _lstm_step(x_part: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM step given x_part = W_ih x_t + b_ih + b_hh and w_hh_t = W_hh^T (one product)."""
    return lstm_pointwise(torch.addmm(x_part, h, w_hh_t), c)


def _gru_step_after(x_part: Tensor, h: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> Tensor:
    """One reset-after GRU step given x_part = W_ih x_t + b_ih (one stacked hidden product)."""
    return gru_pointwise_after(x_part, torch.addmm(b_hh, h, w_hh_t), h)


def _gru_step_before(
    x_part: Tensor, h: Tensor, w_rz_t: Tensor, b_rz: Tensor, w_n_t: Tensor, b_n: Tensor
) -> Tensor:
    """One reset-before GRU step: a stacked product for r and z, then one for the candidate."""
    hidden = h.shape[1]
    x_rz, x_n = x_part.split([2 * hidden, hidden], dim=1)
    r, z = _gru_gates_rz(x_rz, torch.addmm(b_rz, h, w_rz_t))
    return gru_pointwise_before(x_n, torch.addmm(b_n, r * h, w_n_t), z, h)


def lstm_cell(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
) -> tuple[Tensor, Tensor]:
    """One LSTM step: x [B, in], state (h_{t-1}, C_{t-1}) each [B, H] -> (h_t, C_t).

    W · [h_{t-1}, x_t] + b is computed as W_ih x_t + W_hh h_{t-1} + (b_ih + b_hh), the same
    product split into its input and hidden columns, which is how nn.LSTM stores it.
    """
    h, c = state
    return _lstm_step(F.linear(x, weight_ih, bias_ih + bias_hh), h, c, weight_hh.t())


def gru_cell(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    reset: str = "after",
) -> Tensor:
    """One GRU step: x [B, in], h_{t-1} [B, H] -> h_t, with the candidate of ``reset``.

    ``reset="after"``: h~_t = tanh(W_hx x_t + b_hx + r_t * (W_hh h_{t-1} + b_hh)) (nn.GRU).
    ``reset="before"``: h~_t = tanh(W_hx x_t + b_hx + W_hh (r_t * h_{t-1}) + b_hh) (cells.md).
    """
    _check_reset(reset)
    x_part = F.linear(x, weight_ih, bias_ih)
    if reset == "after":
        return _gru_step_after(x_part, h, weight_hh.t(), bias_hh)
    w_rz, w_n = _split_candidate(weight_hh)
    b_rz, b_n = _split_candidate(bias_hh)
    return _gru_step_before(x_part, h, w_rz.t(), b_rz, w_n.t(), b_n)


def _split_candidate(t: Tensor) -> tuple[Tensor, Tensor]:
    """Split stacked GRU rows (r, z, n) into the (r, z) block and the n block."""
    hidden = t.shape[0] // 3
    rz, n = t.split([2 * hidden, hidden], dim=0)
    return rz, n


def _check_reset(reset: str) -> None:
    if reset not in GRU_RESETS:
        raise ValueError(f"reset must be one of {GRU_RESETS}, got {reset!r}")


# --------------------------------------------------------------------------------------------
# 3. Sequence modules, drop-in for nn.LSTM / nn.GRU with batch_first=True.
# --------------------------------------------------------------------------------------------


class _ReferenceRNN(nn.Module):
    """Parameters, initialisation and layer stacking shared by the LSTM and the GRU."""

    gate_count: int  # 4 for the LSTM, 3 for the GRU: rows of each weight are gate_count * H

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        if input_size <= 0 or hidden_size <= 0 or num_layers <= 0:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1], got {dropout}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.batch_first = True  # read by code written against nn.LSTM; never False here
        rows = self.gate_count * hidden_size
        for k in range(num_layers):
            cols = input_size if k == 0 else hidden_size
            # Registered in nn.LSTM's order so state_dict keys line up one to one.
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(rows, cols)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(rows, hidden_size)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.empty(rows)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.empty(rows)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every weight and bias, as torch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _layer_params(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (
            getattr(self, f"weight_ih_l{k}"),
            getattr(self, f"weight_hh_l{k}"),
            getattr(self, f"bias_ih_l{k}"),
            getattr(self, f"bias_hh_l{k}"),
        )

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[2] != self.input_size or x.shape[1] == 0:
            raise ValueError(
                f"expected input [batch, time>0, {self.input_size}], got {list(x.shape)}"
            )

    def _check_state(self, s: Tensor, x: Tensor, name: str) -> None:
        want = (self.num_layers, x.shape[0], self.hidden_size)
        if tuple(s.shape) != want:
            raise ValueError(f"expected {name} of shape {list(want)}, got {list(s.shape)}")

    def _between_layers(self, seq: Tensor, k: int) -> Tensor:
        """Dropout on a layer's output, except the last layer's (nn.LSTM semantics)."""
        if k < self.num_layers - 1 and self.dropout > 0.0:
            return F.dropout(seq, self.dropout, self.training)
        return seq

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        return s + (f", dropout={self.dropout}" if self.dropout else "")


class ReferenceLSTM(_ReferenceRNN):
    """Multi-layer LSTM from the cells.md equations; same parameters and API as nn.LSTM
    (batch_first=True), so either module's state_dict loads into the other."""

    gate_count = 4

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ) -> None:
        super().__init__(input_size, hidden_size, num_layers, dropout)

    def forward(
        self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, T, in], state (h_0, c_0) each [L, B, H] or None (zeros).

        Returns (out [B, T, H] = h_t of the last layer, (h_n, c_n) each [L, B, H]).
        """
        self._check_input(x)
        if state is None:
            zeros = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        self._check_state(state[0], x, "h_0")
        self._check_state(state[1], x, "c_0")
        seq = x.transpose(0, 1)  # time-major, so each step's slice is contiguous
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            # Input part of all four gates, all steps, one product; both biases folded in.
            x_parts = F.linear(seq, w_ih, b_ih + b_hh).unbind(0)
            w_hh_t = w_hh.t()
            h, c = state[0][k], state[1][k]
            outs: list[Tensor] = []
            for x_part in x_parts:
                h, c = _lstm_step(x_part, h, c, w_hh_t)
                outs.append(h)
            h_n.append(h)
            c_n.append(c)
            seq = self._between_layers(torch.stack(outs), k)
        return seq.transpose(0, 1), (torch.stack(h_n), torch.stack(c_n))


class ReferenceGRU(_ReferenceRNN):
    """Multi-layer GRU from the cells.md equations; same parameters and API as nn.GRU
    (batch_first=True).

    ``reset="after"`` is numerically nn.GRU; ``reset="before"`` is the classic GRU of cells.md
    on the same parameter layout (b_ih and b_hh still add up). They are different models: a
    checkpoint must record which one it holds.
    """

    gate_count = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        reset: str = "after",
    ) -> None:
        _check_reset(reset)
        super().__init__(input_size, hidden_size, num_layers, dropout)
        self.reset = reset

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, T, in], state h_0 [L, B, H] or None (zeros).

        Returns (out [B, T, H] = h_t of the last layer, h_n [L, B, H]).
        """
        self._check_input(x)
        if state is None:
            state = x.new_zeros(self.num_layers, x.shape[0], self.hidden_size)
        self._check_state(state, x, "h_0")
        seq = x.transpose(0, 1)
        h_n: list[Tensor] = []
        for k in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self._layer_params(k)
            x_parts = F.linear(seq, w_ih, b_ih).unbind(0)  # all gates, all steps, one product
            h = state[k]
            outs: list[Tensor] = []
            if self.reset == "after":
                w_hh_t = w_hh.t()
                for x_part in x_parts:
                    h = _gru_step_after(x_part, h, w_hh_t, b_hh)
                    outs.append(h)
            else:
                w_rz, w_n = _split_candidate(w_hh)
                b_rz, b_n = _split_candidate(b_hh)
                w_rz_t, w_n_t = w_rz.t(), w_n.t()
                for x_part in x_parts:
                    h = _gru_step_before(x_part, h, w_rz_t, b_rz, w_n_t, b_n)
                    outs.append(h)
            h_n.append(h)
            seq = self._between_layers(torch.stack(outs), k)
        return seq.transpose(0, 1), torch.stack(h_n)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reset={self.reset!r}"
