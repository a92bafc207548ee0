"""The GRU's training path on the CPU: nn.GRU's equations with a hand-written backward.

Why: on the CPU torch's LSTM is a oneDNN sequence kernel, but its GRU is a loop of small ops whose
backward is autograd replaying every step (about twenty graph nodes per step and layer), and
under bf16 autocast only its products speed up. This layer runs the same reset-after equations

    r, z = sigmoid(W_ir x + b_ir + W_hr h + b_hr), sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn));   h' = (1 - z) * n + z * h

with the input products done for the whole sequence at once, one recurrent product per step, the
step's gate values kept, and a backward that walks the steps with three calls each (the
gradient's share through the recurrent product added in place) and forms the weight gradients as
one product over the whole sequence. Under bf16 autocast the products run in bf16 while the
state and the gates stay in fp32.

It reads the parameters of an `nn.GRU` (same names, shapes and gate order), so models, state
dicts and checkpoints are untouched; `CharLM.forward` uses it only to train on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.cpu.dropout import dropout


def gru_sequence(rnn: nn.GRU, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
    """nn.GRU's forward (batch_first) for x [batch, time, input], h0 [layers, batch, hidden]."""
    mm_dtype = torch.float32
    if torch.is_autocast_enabled("cpu"):
        mm_dtype = torch.get_autocast_dtype("cpu")
    seq = x.transpose(0, 1)  # time-major, so each step's rows are contiguous
    finals = []
    for k in range(rnn.num_layers):
        if k > 0 and rnn.dropout > 0:
            seq = dropout(seq, rnn.dropout, rnn.training)
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{k}", None), getattr(rnn, f"bias_hh_l{k}", None)
        if b_hh is None:
            b_hh = w_hh.new_zeros(w_hh.shape[0])
        gi = F.linear(seq, w_ih, b_ih)  # [time, batch, 3 * hidden], bf16 under autocast
        seq, last = _GRULayer.apply(gi, h0[k].float(), w_hh, b_hh, mm_dtype)
        finals.append(last)
    return seq.transpose(0, 1), torch.stack(finals)


class _GRULayer(torch.autograd.Function):
    """One layer over the whole sequence, given its input products gi = W_i x + b_i."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, mm_dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        with torch.autocast("cpu", enabled=False):
            steps, batch, gates = gi.shape
            hidden = gates // 3
            low = mm_dtype != torch.float32  # products in bf16/fp16, everything else in fp32
            w_t = w_hh.to(mm_dtype).t().contiguous()  # row-major: 10-15% faster per-step products
            b = b_hh.to(mm_dtype)
            ctx.gi_dtype = gi.dtype
            gi = gi.float()  # once here, so no step mixes dtypes (a mixed op copies)
            hs = h0.new_empty(steps + 1, batch, hidden)  # h_0 .. h_T
            hs[0] = h0
            rz = h0.new_empty(steps, batch, 2 * hidden)  # sigmoid outputs r | z
            n = h0.new_empty(steps, batch, hidden)
            gh = h0.new_empty(steps, batch, gates)  # W_h h + b_h per step
            if not low:
                gh.copy_(b)  # each step adds its product in place: no per-step copy of the bias
            gi_rz, gi_n = gi[..., : 2 * hidden].unbind(0), gi[..., 2 * hidden :].unbind(0)
            gh_rz, gh_n = gh[..., : 2 * hidden].unbind(0), gh[..., 2 * hidden :].unbind(0)
            r, z = rz[..., :hidden].unbind(0), rz[..., hidden:].unbind(0)
            n_t, h_t, gh_t, rz_t = n.unbind(0), hs.unbind(0), gh.unbind(0), rz.unbind(0)
            for t in range(steps):
                h = h_t[t]
                if low:
                    gh_t[t].copy_(torch.addmm(b, h.to(mm_dtype), w_t))
                else:
                    torch.addmm(gh_t[t], h, w_t, out=gh_t[t])
                torch.add(gi_rz[t], gh_rz[t], out=rz_t[t]).sigmoid_()
                torch.addcmul(gi_n[t], r[t], gh_n[t], out=n_t[t]).tanh_()
                torch.lerp(n_t[t], h, z[t], out=h_t[t + 1])  # (1 - z) n + z h
        ctx.mm_dtype = mm_dtype
        ctx.save_for_backward(hs, rz, n, gh, w_hh)
        return hs[1:], hs[steps]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, d_out: Tensor, d_last: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        hs, rz, n, gh, w_hh = ctx.saved_tensors
        mm_dtype = ctx.mm_dtype
        with torch.autocast("cpu", enabled=False):
            steps, batch, hidden = n.shape
            r, z = rz[..., :hidden], rz[..., hidden:]
            # With dh the gradient reaching h_t, the pre-activation gradients are dh times
            # per-step factors, computed here for all steps at once:
            #   d pre_n = dh (1 - z)(1 - n^2) = dh a;   d pre_z = dh (h_{t-1} - n) z (1 - z)
            #   d pre_r = d pre_n (W_hn h + b_hn) r (1 - r);   d (W_hn h + b_hn) = d pre_n r
            low = mm_dtype != torch.float32
            one_minus_z = 1 - z
            a = torch.addcmul(one_minus_z, one_minus_z * n, n, value=-1)
            factors = hs.new_empty(steps, batch, 3, hidden)  # d gh = dh * factors (r, z, n)
            torch.mul(a, r, out=factors[:, :, 2])
            f_r = torch.mul(factors[:, :, 2], gh[..., 2 * hidden :], out=factors[:, :, 0])
            f_r.addcmul_(f_r, r, value=-1)  # times (1 - r)
            torch.sub(hs[:-1], n, out=factors[:, :, 1]).mul_(z).mul_(one_minus_z)
            # dh_all[t] collects the gradient reaching h_t: from the output, then (as the loop
            # reaches t + 1) through W_h h_t and through z * h_t.
            dh_all = hs.new_empty(steps, batch, hidden)
            dh_all.copy_(d_out)
            dh_all[-1] += d_last
            dgh = hs.new_empty(steps, batch, 3, hidden, dtype=mm_dtype)
            w = w_hh.to(mm_dtype)
            carry = d_last.float()  # the gradient reaching h0, set at t = 0
            for t in range(steps - 1, -1, -1):
                dh = dh_all[t]
                torch.mul(dh.unsqueeze(1), factors[t], out=dgh[t])
                flat_t = dgh[t].view(batch, 3 * hidden)
                if t == 0:
                    carry = torch.mm(flat_t, w).float().addcmul_(dh, z[0])
                elif low:
                    dh_all[t - 1].add_(torch.mm(flat_t, w)).addcmul_(dh, z[t])
                else:
                    torch.addmm(dh_all[t - 1], flat_t, w, out=dh_all[t - 1]).addcmul_(dh, z[t])
            flat = dgh.view(steps * batch, 3 * hidden)
            d_w = (flat.t() @ hs[:-1].reshape(steps * batch, hidden).to(mm_dtype)).float()
            d_b = flat.sum(0, dtype=torch.float32)
            d_gi = hs.new_empty(steps, batch, 3 * hidden, dtype=ctx.gi_dtype)
            d_gi[..., : 2 * hidden] = dgh[:, :, :2].flatten(2)
            torch.mul(dh_all, a, out=d_gi[..., 2 * hidden :])
        return d_gi, carry, d_w, d_b, None
