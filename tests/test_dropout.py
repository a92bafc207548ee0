"""charlm.cpu.dropout and the LSTM's layer-by-layer training path that uses it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import charlm.model
from charlm.config import ModelConfig
from charlm.cpu.dropout import dropout
from charlm.model import CharLM, rnn_layers


def test_drops_p_of_the_elements_in_every_lane_and_scales_the_rest_exactly() -> None:
    torch.manual_seed(0)
    x = torch.ones(4 * 250_000)
    out = dropout(x, 0.1, True)
    kept = out != 0
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert torch.all(out[kept] == torch.tensor(scale))
    # Each element comes from one of four 16-bit lanes of a 64-bit draw; every lane must drop its
    # share (a lane stuck at kept would show as a fraction near 1).
    for lane in range(4):
        assert abs(kept[lane::4].float().mean().item() - 0.9) < 0.004
    assert abs(out.mean().item() - 1.0) < 0.003  # unbiased: E[out] = x


@pytest.mark.parametrize("p", [0.02, 0.5, 0.9])
def test_the_keep_fraction_follows_p(p: float) -> None:
    torch.manual_seed(1)
    kept = (dropout(torch.ones(400_000), p, True) != 0).float().mean().item()
    assert abs(kept - (1 - p)) < 0.004


def test_seeded_masks_repeat_and_the_gradient_is_the_mask() -> None:
    x = torch.randn(3, 5, 7, requires_grad=True)
    torch.manual_seed(5)
    a = dropout(x, 0.3, True)
    torch.manual_seed(5)
    b = dropout(x, 0.3, True)
    assert torch.equal(a, b)
    assert not torch.equal(a, dropout(x, 0.3, True))  # the generator moved on
    a.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(x.grad * x.detach(), a.detach())  # d out / d x = mask * scale


def test_off_in_eval_and_at_zero() -> None:
    x = torch.randn(4, 4)
    assert dropout(x, 0.5, False) is x
    assert dropout(x, 0.0, True) is x


def test_rnn_layers_equal_nn_lstm_without_dropout() -> None:
    torch.manual_seed(0)
    rnn = nn.LSTM(5, 7, 3, batch_first=True)
    x, h, c = torch.randn(4, 9, 5), torch.randn(3, 4, 7), torch.randn(3, 4, 7)
    results = []
    for forward in (lambda: rnn(x, (h, c)), lambda: rnn_layers(rnn, x, (h, c))):
        rnn.zero_grad()
        out, (h_n, c_n) = forward()
        (out.sum() + (h_n * c_n).sum()).backward()
        results.append([out, h_n, c_n, *(p.grad.clone() for p in rnn.parameters())])
    for mine, theirs in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_rnn_layers_equal_nn_gru_without_dropout() -> None:
    torch.manual_seed(0)
    rnn = nn.GRU(5, 7, 3, batch_first=True)
    x, h = torch.randn(4, 9, 5), torch.randn(3, 4, 7)
    results = []
    for forward in (lambda: rnn(x, h), lambda: rnn_layers(rnn, x, (h,))):
        rnn.zero_grad()
        out, h_n = forward()
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n
        (out.sum() + (h_n * h_n).sum()).backward()
        results.append([out, h_n, *(p.grad.clone() for p in rnn.parameters())])
    for mine, theirs in zip(*results, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-6)


def test_rnn_layers_dropout_follows_the_torch_generator() -> None:
    """The masks come from torch's generator, so restoring its state (as a resume does) draws
    the same masks again; the fused kernels' own dropout would not (cuDNN keeps its own)."""
    torch.manual_seed(0)
    for rnn in (nn.LSTM(5, 7, 3, dropout=0.5, batch_first=True), nn.GRU(5, 7, 3, dropout=0.5)):
        rnn.batch_first = True
        x = torch.randn(4, 9, 5)
        state = tuple(torch.zeros(3, 4, 7) for _ in range(2 if isinstance(rnn, nn.LSTM) else 1))
        saved = torch.get_rng_state()
        first, _ = rnn_layers(rnn, x, state)
        second, _ = rnn_layers(rnn, x, state)
        torch.set_rng_state(saved)
        again, _ = rnn_layers(rnn, x, state)
        assert torch.equal(first, again) and not torch.equal(first, second)


def test_the_model_trains_the_lstm_layer_by_layer_only_with_dropout_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = charlm.model.rnn_layers
    monkeypatch.setattr(charlm.model, "rnn_layers", lambda *a: calls.append(1) or real(*a))
    ids = torch.randint(0, 11, (3, 10))
    torch.manual_seed(0)
    model = CharLM(ModelConfig(cell="lstm", embedding_dim=6, hidden_size=8, dropout=0.5), 11)
    model(ids)
    assert calls == [1]
    with torch.no_grad():
        model(ids)
    model.eval()
    model(ids)
    assert calls == [1]  # evaluation and no-grad calls keep nn.LSTM
    model.train()
    with torch.no_grad():
        plain, _ = model.rnn(model.embed(ids))
    dropped, _ = rnn_layers(model.rnn, model.embed(ids), model.init_state(3))
    assert (dropped - plain).abs().max() > 1e-3  # the dropout between the layers is applied
