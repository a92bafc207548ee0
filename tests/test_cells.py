"""Reference cells against torch's fused modules and against the cells.md equations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from charlm import cells
from charlm.cells import ReferenceGRU, ReferenceLSTM

IN, HID = 5, 6
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _pair(kind: str, layers: int) -> tuple[nn.Module, nn.Module]:
    """A torch module and a reference module holding the same weights (copied torch -> ref)."""
    if kind == "lstm":
        fused: nn.Module = nn.LSTM(IN, HID, layers, batch_first=True)
        ref: nn.Module = ReferenceLSTM(IN, HID, layers)
    else:
        fused = nn.GRU(IN, HID, layers, batch_first=True)
        ref = ReferenceGRU(IN, HID, layers, reset="after")
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _flat(out: tuple) -> list[Tensor]:
    """(out, state) -> [out, h_n] or [out, h_n, c_n]."""
    seq, state = out
    return [seq, *state] if isinstance(state, tuple) else [seq, state]


# ------------------------------------------------------------------ against nn.LSTM / nn.GRU


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (3, 7), (8, 20)])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_torch_outputs_and_gradients(
    kind: str, layers: int, batch: int, steps: int, with_state: bool
) -> None:
    fused, ref = _pair(kind, layers)
    x = torch.randn(batch, steps, IN)
    state = None
    if with_state:
        h0 = torch.randn(layers, batch, HID)
        state = (h0, torch.randn(layers, batch, HID)) if kind == "lstm" else h0

    results = []
    for module in (fused, ref):
        xi = x.clone().requires_grad_()
        leaves: list[Tensor] = []
        si = None
        if state is not None:
            leaves = [s.clone().requires_grad_() for s in (state if kind == "lstm" else (state,))]
            si = tuple(leaves) if kind == "lstm" else leaves[0]
        outs = _flat(module(xi, si))
        # Fixed random weights so every output element contributes its own gradient.
        gen = torch.Generator().manual_seed(1)
        loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
        loss.backward()
        state_grads = [s.grad for s in leaves]
        grads = {n: p.grad for n, p in module.named_parameters()}
        results.append((outs, xi.grad, state_grads, grads))

    (f_out, f_xg, f_sg, f_pg), (r_out, r_xg, r_sg, r_pg) = results
    assert r_out[0].shape == (batch, steps, HID)
    for a, b in zip(f_out, r_out, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(r_xg, f_xg, atol=ATOL, rtol=1e-4)
    for a, b in zip(f_sg, r_sg, strict=True):
        torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-4)
    assert set(f_pg) == set(r_pg)
    for name, g in f_pg.items():
        assert r_pg[name] is not None, name
        torch.testing.assert_close(r_pg[name], g, atol=ATOL, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_state_dict_moves_both_ways_and_init_matches_torch(kind: str) -> None:
    layers = 2
    fused, ref = _pair(kind, layers)
    f_sd, r_sd = fused.state_dict(), ref.state_dict()
    assert list(f_sd) == list(r_sd)
    assert all(f_sd[k].shape == r_sd[k].shape for k in f_sd)
    fresh = ReferenceLSTM(IN, HID, layers) if kind == "lstm" else ReferenceGRU(IN, HID, layers)
    fused.load_state_dict(fresh.state_dict())  # reference -> torch
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in fresh.state_dict().items())
    bound = 1 / math.sqrt(HID)
    values = torch.cat([p.flatten() for p in fresh.parameters()])
    assert values.abs().max() <= bound
    assert values.abs().max() > 0.9 * bound  # spread over the whole range, not a tiny init


# ------------------------------------------------------------ against the cells.md equations


def _sigmoid(v: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-v))


def _gate(module: nn.Module, k: int, gate: int, hidden: int) -> tuple[Tensor, Tensor]:
    """(W, b) of one gate in cells.md form: W acts on [h, x], b = b_ih + b_hh."""
    rows = slice(gate * hidden, (gate + 1) * hidden)
    w_ih = getattr(module, f"weight_ih_l{k}")[rows]
    w_hh = getattr(module, f"weight_hh_l{k}")[rows]
    b = getattr(module, f"bias_ih_l{k}")[rows] + getattr(module, f"bias_hh_l{k}")[rows]
    return torch.cat([w_hh, w_ih], dim=1), b


def _transcribe_lstm(module: ReferenceLSTM, xs: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """cells.md LSTM for one sequence xs [T, in], one layer: lists of h_t and C_t."""
    hidden = module.hidden_size
    (w_i, b_i), (w_f, b_f), (w_c, b_c), (w_o, b_o) = (_gate(module, 0, g, hidden) for g in range(4))
    h, c = torch.zeros(hidden, dtype=xs.dtype), torch.zeros(hidden, dtype=xs.dtype)
    hs, cs = [], []
    for x in xs:
        hx = torch.cat([h, x])
        f = _sigmoid(w_f @ hx + b_f)
        i = _sigmoid(w_i @ hx + b_i)
        c_tilde = torch.tanh(w_c @ hx + b_c)
        c = f * c + i * c_tilde
        o = _sigmoid(w_o @ hx + b_o)
        h = o * torch.tanh(c)
        hs.append(h)
        cs.append(c)
    return hs, cs


def _transcribe_gru(module: ReferenceGRU, xs: Tensor, reset: str) -> list[Tensor]:
    """cells.md GRU (reset before) or the nn.GRU note (reset after), one layer: list of h_t."""
    hidden = module.hidden_size
    (w_r, b_r), (w_z, b_z) = _gate(module, 0, 0, hidden), _gate(module, 0, 1, hidden)
    n_rows = slice(2 * hidden, 3 * hidden)
    w_hx, b_hx = module.weight_ih_l0[n_rows], module.bias_ih_l0[n_rows]
    w_hh, b_hh = module.weight_hh_l0[n_rows], module.bias_hh_l0[n_rows]
    h = torch.zeros(hidden, dtype=xs.dtype)
    hs = []
    for x in xs:
        hx = torch.cat([h, x])
        z = _sigmoid(w_z @ hx + b_z)
        r = _sigmoid(w_r @ hx + b_r)
        if reset == "before":
            w_h = torch.cat([w_hh, w_hx], dim=1)
            h_tilde = torch.tanh(w_h @ torch.cat([r * h, x]) + (b_hx + b_hh))
        else:
            h_tilde = torch.tanh(w_hx @ x + b_hx + r * (w_hh @ h + b_hh))
        h = z * h + (1 - z) * h_tilde
        hs.append(h)
    return hs


@torch.no_grad()
def test_lstm_follows_equations_step_by_step() -> None:
    ref = ReferenceLSTM(2, 3).double()
    xs = torch.randn(5, 2, dtype=torch.float64)
    hs, cs = _transcribe_lstm(ref, xs)
    out, (h_n, c_n) = ref(xs[None])
    state = (torch.zeros(1, 3, dtype=xs.dtype), torch.zeros(1, 3, dtype=xs.dtype))
    params = [getattr(ref, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    for t, (h_t, c_t) in enumerate(zip(hs, cs, strict=True)):
        torch.testing.assert_close(out[0, t], h_t)
        state = cells.lstm_cell(xs[t : t + 1], state, *params)  # the public single-step cell
        torch.testing.assert_close(state[0][0], h_t)
        torch.testing.assert_close(state[1][0], c_t)
    torch.testing.assert_close(h_n[0, 0], hs[-1])
    torch.testing.assert_close(c_n[0, 0], cs[-1])


@pytest.mark.parametrize("reset", ["before", "after"])
@torch.no_grad()
def test_gru_follows_equations_step_by_step(reset: str) -> None:
    ref = ReferenceGRU(2, 3, reset=reset).double()
    xs = torch.randn(5, 2, dtype=torch.float64)
    hs = _transcribe_gru(ref, xs, reset)
    out, h_n = ref(xs[None])
    h = torch.zeros(1, 3, dtype=xs.dtype)
    params = [getattr(ref, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    for t, h_t in enumerate(hs):
        torch.testing.assert_close(out[0, t], h_t)
        h = cells.gru_cell(xs[t : t + 1], h, *params, reset=reset)
        torch.testing.assert_close(h[0], h_t)
    torch.testing.assert_close(h_n[0, 0], hs[-1])


@torch.no_grad()
def test_gru_before_and_after_are_different_models() -> None:
    after = ReferenceGRU(4, 8, num_layers=2, reset="after")
    before = ReferenceGRU(4, 8, num_layers=2, reset="before")
    before.load_state_dict(after.state_dict())  # same layout, so this loads
    x = torch.randn(3, 10, 4)
    out_a, h_a = after(x)
    out_b, h_b = before(x)
    assert out_a.shape == out_b.shape
    assert (out_a - out_b).abs().max() > 1e-3
    assert (h_a - h_b).abs().max() > 1e-3
    # With every reset gate forced open (r = 1) the two candidates coincide.
    for module in (after, before):
        for k in range(2):
            getattr(module, f"bias_ih_l{k}")[:8] = 50.0
    torch.testing.assert_close(before(x)[0], after(x)[0])


# ---------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("make", ["lstm", "gru-before", "gru-after"])
def test_gradcheck_float64(make: str) -> None:
    layers, batch, steps, n_in, hidden = 2, 2, 3, 2, 3
    if make == "lstm":
        module: nn.Module = ReferenceLSTM(n_in, hidden, layers)
    else:
        module = ReferenceGRU(n_in, hidden, layers, reset=make.split("-")[1])
    module = module.double()
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    x = torch.randn(batch, steps, n_in, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(layers, batch, hidden, dtype=torch.float64, requires_grad=True)

    def f(x: Tensor, h0: Tensor, c0: Tensor, *ps: Tensor) -> tuple[Tensor, ...]:
        state = (h0, c0) if make == "lstm" else h0
        return tuple(_flat(functional_call(module, dict(zip(names, ps, strict=True)), (x, state))))

    assert torch.autograd.gradcheck(f, (x, h0, c0, *params))


# ------------------------------------------------------------------------------------ dropout


@pytest.mark.parametrize("kind", ["lstm", "gru-before", "gru-after"])
def test_dropout_between_layers(kind: str) -> None:
    def build(layers: int, p: float) -> nn.Module:
        if kind == "lstm":
            return ReferenceLSTM(IN, HID, layers, dropout=p)
        return ReferenceGRU(IN, HID, layers, dropout=p, reset=kind.split("-")[1])

    x = torch.randn(4, 6, IN)
    plain, dropped = build(2, 0.0), build(2, 0.5)
    dropped.load_state_dict(plain.state_dict())
    plain_eval = plain.eval()(x)[0]
    torch.testing.assert_close(dropped.eval()(x)[0], plain_eval)  # eval: no effect
    torch.testing.assert_close(plain.train()(x)[0], plain_eval)  # p = 0: train == eval
    train_out = dropped.train()(x)[0]
    assert (train_out - plain_eval).abs().max() > 1e-3  # p > 0, training: outputs change
    # Not applied after the last layer: a one-layer model ignores it.
    single, single_dropped = build(1, 0.0), build(1, 0.5)
    single_dropped.load_state_dict(single.state_dict())
    torch.testing.assert_close(single_dropped.train()(x)[0], single.eval()(x)[0])


# ---------------------------------------------------------------------------------- errors


def test_bad_reset_raises() -> None:
    with pytest.raises(ValueError, match="reset"):
        ReferenceGRU(IN, HID, reset="middle")
    with pytest.raises(ValueError, match="reset"):
        cells.gru_cell(
            torch.randn(1, 2), torch.randn(1, 3), *ReferenceGRU(2, 3).parameters(), reset="x"
        )


def test_bad_shapes_raise() -> None:
    lstm = ReferenceLSTM(IN, HID, num_layers=2)
    with pytest.raises(ValueError, match="input"):
        lstm(torch.randn(3, IN))
    with pytest.raises(ValueError, match="h_0"):
        lstm(torch.randn(3, 4, IN), (torch.zeros(1, 3, HID), torch.zeros(2, 3, HID)))
    with pytest.raises(ValueError, match="dropout"):
        ReferenceGRU(IN, HID, dropout=1.5)
