"""The character language model: embedding -> stacked LSTM/GRU -> linear head.

    e_t = Embedding(char_t);  h_t = cell(e_t, h_{t-1});  y_t = W h_t + b  (logits for char_{t+1})

The model takes its config and the vocabulary size and nothing else. Its recurrent state is always
a tuple of [num_layers, batch, hidden] tensors: (h, c) for the LSTM, (h,) for the GRU, so training,
evaluation and sampling handle both cells the same way.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from charlm.config import ModelConfig
from charlm.cpu.dropout import dropout
from charlm.cpu.gru import gru_sequence

State = tuple[torch.Tensor, ...]


class CharLM(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, config.embedding_dim)
        self.rnn = make_rnn(config)
        self.head = nn.Linear(config.hidden_size, vocab_size)

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """A zero state for `batch_size` streams (what a fresh stream starts from)."""
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        device = device if device is not None else self.head.weight.device
        count = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(count))

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """ids [batch, time] -> logits [batch, time, vocab] and the state after the last step."""
        if state is None:
            state = self.init_state(ids.shape[0], ids.device)
        x = self.embed(ids)
        grad = torch.is_grad_enabled()
        fused = isinstance(self.rnn, (nn.LSTM, nn.GRU))
        layered = fused and grad and self.training and self.rnn.dropout > 0
        if isinstance(self.rnn, nn.GRU) and grad and x.device.type == "cpu":
            # Training on the CPU: the same equations with a hand-written backward (charlm.cpu.gru).
            out, h = gru_sequence(self.rnn, x, state[0])
            new_state: State = (h,)
        elif layered or (fused and bf16_autocast(x)):
            # Dropout between the layers is charlm's, not the fused kernel's; under bf16 autocast
            # on a GPU the layers run in bf16 themselves (see rnn_layers).
            out, new_state = rnn_layers(self.rnn, x, state)
        elif self.config.cell == "lstm":
            out, (h, c) = self.rnn(x, (state[0], state[1]))
            new_state = (h, c)
        else:
            out, h = self.rnn(x, state[0])
            new_state = (h,)
        return self.head(dropout(out, self.config.dropout, self.training)), new_state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def make_rnn(config: ModelConfig) -> nn.Module:
    """The recurrent stack: the fused library kernel or the reference cells, interchangeable.

    Both have the same parameter names and shapes, so a state_dict loads into either.
    """
    between = config.dropout if config.num_layers > 1 else 0.0
    size = (config.embedding_dim, config.hidden_size, config.num_layers)
    if config.impl == "reference":
        from charlm.cells import ReferenceGRU, ReferenceLSTM

        if config.cell == "lstm":
            return ReferenceLSTM(*size, dropout=between)
        return ReferenceGRU(*size, dropout=between, reset=config.gru_reset)
    rnn_cls = nn.LSTM if config.cell == "lstm" else nn.GRU
    return rnn_cls(*size, dropout=between, batch_first=True)


def rnn_layers(rnn: nn.LSTM | nn.GRU, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """nn.LSTM's or nn.GRU's forward (batch_first), one layer at a time, with charlm's dropout
    between the layers.

    Why: inside the fused module the dropout between layers is the kernel's own. On a GPU that is
    cuDNN's, whose random state `torch.cuda.get_rng_state` does not hold, so a resumed run would
    draw other masks than one that never stopped; charlm's dropout draws from torch's generators,
    which a checkpoint saves. On the CPU charlm's dropout is also faster (charlm.cpu.dropout).
    Each layer is still the fused kernel, and without dropout the result is bit for bit the
    module's.
    """
    lstm = isinstance(rnn, nn.LSTM)
    half = torch.bfloat16 if bf16_autocast(x) else None
    finals: list[list[torch.Tensor]] = [[] for _ in state]
    for k in range(rnn.num_layers):
        if k > 0:
            x = dropout(x, rnn.dropout, rnn.training)
        weights = [getattr(rnn, f"{name}_l{k}") for name in ("weight_ih", "weight_hh")]
        if rnn.bias:
            weights += [getattr(rnn, f"{name}_l{k}") for name in ("bias_ih", "bias_hh")]
        layer_state = [s[k : k + 1] for s in state]
        if half is not None:  # bf16 for real: cast here, and keep autocast out of the call
            x, weights = x.to(half), [w.to(half) for w in weights]
            layer_state = [s.to(half) for s in layer_state]
        no_autocast = torch.autocast("cuda", enabled=False) if half else contextlib.nullcontext()
        with no_autocast, layer_weights_copied(x):
            if lstm:
                x, *outs = torch.lstm(
                    x, layer_state, weights, rnn.bias, 1, 0.0, rnn.training, False, True
                )
            else:
                x, h_k = torch.gru(
                    x, layer_state[0], weights, rnn.bias, 1, 0.0, rnn.training, False, True
                )
                outs = [h_k]
        for final, out in zip(finals, outs, strict=True):
            final.append(out)
    # The carried state leaves in the dtype it came in (fp32), whatever the layers ran in.
    return x, tuple(torch.cat(f).to(s.dtype) for f, s in zip(finals, state, strict=True))


@contextlib.contextmanager
def layer_weights_copied(x: torch.Tensor) -> Iterator[None]:
    """cuDNN copies one layer's weights into its own buffer for each call (they are not one
    flat buffer any more), and warns each time; for one layer of a few MB that copy is the
    price of charlm's dropout between layers, so the warning is expected and kept quiet."""
    if not x.is_cuda:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "RNN module weights are not part of single contiguous")
        yield


def bf16_autocast(x: torch.Tensor) -> bool:
    """Whether x is on a GPU under bf16 autocast.

    Why it matters: torch's autocast runs cuDNN's LSTM and GRU in fp16 whatever autocast's dtype
    (on an H200 with torch 2.11, bf16 autocast gave fp16 outputs), and without the gradient
    scaler fp16 needs. Under bf16 autocast charlm casts each layer's weights, input and state to
    bf16 itself and calls the kernel with autocast off, so bf16 means bf16.
    """
    return (
        x.is_cuda
        and torch.is_autocast_enabled("cuda")
        and torch.get_autocast_dtype("cuda") == torch.bfloat16
    )


def detach_state(state: State) -> State:
    """Cut the graph between batches (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)


DEVICES = ("auto", "cpu", "cuda", "mps")
"""What train.device and --device take: `mps` is an Apple GPU (Metal)."""


def check_device(name: str, option: str = "--device", allowed: tuple[str, ...] = DEVICES) -> None:
    """Refuse a device name that is not one of `allowed`, before anything loads."""
    from charlm.errors import CharlmError

    if name not in allowed:
        expected = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        raise CharlmError(f"{option} {name!r}: expected {expected}")


def mps_available() -> bool:
    """Whether torch can use an Apple GPU here (False on other machines and builds)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices torch can use here: the CPU, then CUDA and mps where present."""
    gpus = [("cuda", torch.cuda.is_available()), ("mps", mps_available())]
    return ["cpu", *(name for name, present in gpus if present)]


def accelerator() -> str | None:
    """The GPU `auto` takes: CUDA first, else an Apple GPU (mps); None where there is neither."""
    return next(iter(available_devices()[1:]), None)


def resolve_device(name: str) -> torch.device:
    """`auto` takes CUDA, else mps, else the CPU; asking for a GPU that is not here is a clear
    error naming the devices that are."""
    from charlm.errors import CharlmError

    check_device(name, "device")
    if name == "auto":
        return torch.device(accelerator() or "cpu")
    here = available_devices()
    if name not in here:
        what = "no CUDA GPU" if name == "cuda" else "no Apple GPU (mps)"
        raise CharlmError(
            f"device {name!r} (train.device or --device) was asked for but {what} is available "
            f"to this torch; use {', '.join(here)} or auto"
        )
    return torch.device(name)
