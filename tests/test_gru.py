"""charlm.cpu.gru: the GRU's CPU training path computes what nn.GRU computes, gradients too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from charlm.config import ModelConfig
from charlm.cpu.gru import gru_sequence
from charlm.model import CharLM


def _gru(layers: int, bias: bool = True, seed: int = 0) -> nn.GRU:
    torch.manual_seed(seed)
    rnn = nn.GRU(5, 7, layers, batch_first=True, bias=bias)
    with torch.no_grad():  # init biases are small; make every term of the equations matter
        for p in rnn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return rnn


def _run(rnn: nn.GRU, forward, x: torch.Tensor, h0: torch.Tensor, seed: int = 1):
    """Outputs and every gradient of a loss that reads both the outputs and the final state."""
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    rnn.zero_grad()
    out, last = forward(x, h0)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    ((out * weights).sum() + (last**2).sum()).backward()
    grads = [p.grad.clone() for p in rnn.parameters()]
    return [out.detach(), last.detach(), x.grad, h0.grad, *grads]


@pytest.mark.parametrize(("layers", "bias"), [(1, True), (3, True), (2, False)])
def test_outputs_and_gradients_equal_nn_gru(layers: int, bias: bool) -> None:
    rnn = _gru(layers, bias)
    x, h0 = torch.randn(4, 9, 5), torch.randn(layers, 4, 7)
    theirs = _run(rnn, rnn, x, h0)
    mine = _run(rnn, lambda a, b: gru_sequence(rnn, a, b), x, h0)
    assert len(mine) == 4 + 4 * layers - (0 if bias else 2 * layers)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_single_step_sequence_equals_nn_gru() -> None:
    """One step: the backward's loop runs only its last case (the gradient to h0)."""
    rnn = _gru(2)
    x, h0 = torch.randn(3, 1, 5), torch.randn(2, 3, 7)
    theirs = _run(rnn, rnn, x, h0)
    mine = _run(rnn, lambda a, b: gru_sequence(rnn, a, b), x, h0)
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_products_are_bf16_and_results_stay_close() -> None:
    rnn = _gru(2)
    x, h0 = torch.randn(4, 9, 5), torch.randn(2, 4, 7)
    exact = _run(rnn, rnn, x, h0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _run(rnn, lambda a, b: gru_sequence(rnn, a, b), x, h0)
    assert low[0].dtype == torch.float32  # the state and the gates stay fp32
    assert all(g.dtype == torch.float32 for g in low[2:])
    differs = False
    for a, b in zip(low, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)
        differs |= not torch.equal(a, b)
    assert differs  # bf16 products round differently: the autocast really reached them


def test_charlm_trains_the_gru_through_it_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(cell="gru", embedding_dim=6, hidden_size=8, num_layers=2), 11)
    ids = torch.randint(0, 11, (3, 10))
    calls: list[int] = []
    import charlm.model

    real = charlm.model.gru_sequence
    monkeypatch.setattr(charlm.model, "gru_sequence", lambda *a: calls.append(1) or real(*a))
    logits, (h,) = model(ids)  # grad enabled: the hand-written backward
    with torch.no_grad():
        expected, (h_ref,) = model(ids)  # nn.GRU itself
    assert calls == [1]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    logits.sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None and model.rnn.weight_hh_l0.grad.abs().sum() > 0


def test_dropout_between_layers_only_in_training() -> None:
    torch.manual_seed(0)
    rnn = nn.GRU(5, 7, 2, batch_first=True, dropout=0.5)
    x, h0 = torch.randn(4, 9, 5), torch.zeros(2, 4, 7)
    rnn.eval()
    with torch.no_grad():
        expected, _ = rnn(x, h0)
    torch.testing.assert_close(gru_sequence(rnn, x, h0)[0], expected, rtol=1e-5, atol=1e-5)
    rnn.train()
    dropped, _ = gru_sequence(rnn, x, h0)
    assert (dropped - expected).abs().max() > 1e-3
