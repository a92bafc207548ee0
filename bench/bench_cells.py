"""Training throughput of the reference cells against a naive loop and torch's fused kernels.

Each row trains the same character model, Embedding(vocab, emb) -> recurrent stack -> Linear,
with cross-entropy and AdamW, and reports characters per second of forward + backward + step.
Prints one Markdown table.

    python bench/bench_cells.py --steps 10 --threads 2 --fusion eager,script
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Run as a plain script from any checkout: import the charlm next to this file, not whichever
# copy happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlm import cells
from charlm.cells import ReferenceGRU, ReferenceLSTM

VOCAB = 65
EMBED = 64

FUSION_BACKENDS = ("eager", "script", "compile")
# The element-wise functions the reference cells call by name from their step functions; a
# fusion backend replaces these module attributes with compiled versions for the rows using it.
POINTWISE = ("lstm_pointwise", "gru_pointwise_after", "gru_pointwise_before", "_gru_gates_rz")
EAGER: dict[str, Callable[..., Any]] = {name: getattr(cells, name) for name in POINTWISE}


def compile_pointwise(backend: str) -> dict[str, Callable[..., Any]]:
    """The cells' element-wise functions as ``backend`` builds them (compile builds lazily)."""
    if backend == "eager":
        return dict(EAGER)
    if backend == "script":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.x deprecates TorchScript
            return {name: torch.jit.script(fn) for name, fn in EAGER.items()}
    if backend == "compile":
        return {name: torch.compile(fn, dynamic=False) for name, fn in EAGER.items()}
    raise SystemExit(f"--fusion: unknown backend {backend!r}; expected one of {FUSION_BACKENDS}")


def use_pointwise(functions: dict[str, Callable[..., Any]]) -> None:
    """Make the reference cells call ``functions`` until the next call (this script only)."""
    for name, fn in functions.items():
        setattr(cells, name, fn)


class NaiveRNN(nn.Module):
    """The slow textbook loop: a weight matrix per gate and per input, one product each per step.

    Only the three things the reference cells do differently are left out (input products
    hoisted over the sequence, stacked hidden product, one element-wise function); per-step
    inputs still come from ``unbind`` so the baseline is not slowed by indexing overhead.
    """

    def __init__(self, kind: str, input_size: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.kind = kind
        self.gates = ("i", "f", "g", "o") if kind == "lstm" else ("r", "z", "n")
        self.layers = nn.ModuleList()
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden_size
            layer = nn.ParameterDict()
            for g in self.gates:
                layer[f"w_x{g}"] = nn.Parameter(torch.empty(hidden_size, n_in))
                layer[f"w_h{g}"] = nn.Parameter(torch.empty(hidden_size, hidden_size))
                layer[f"b_x{g}"] = nn.Parameter(torch.empty(hidden_size))
                layer[f"b_h{g}"] = nn.Parameter(torch.empty(hidden_size))
            self.layers.append(layer)
        bound = hidden_size**-0.5
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    @torch.no_grad()
    def copy_from(self, fused: nn.Module) -> None:
        """Take the weights of an nn.LSTM / nn.GRU (rows stacked in the same gate order)."""
        for k, layer in enumerate(self.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                chunks = getattr(fused, f"{name}_l{k}").chunk(len(self.gates))
                kind = "w" if name.startswith("weight") else "b"
                side = "x" if "_ih" in name else "h"
                for g, chunk in zip(self.gates, chunks, strict=True):
                    layer[f"{kind}_{side}{g}"].copy_(chunk)

    def forward(self, x: Tensor) -> Tensor:
        seq = list(x.unbind(1))
        for p in self.layers:

            def pre(g: str, x_t: Tensor, h: Tensor, p: nn.ParameterDict = p) -> Tensor:
                return F.linear(x_t, p[f"w_x{g}"], p[f"b_x{g}"]) + F.linear(
                    h, p[f"w_h{g}"], p[f"b_h{g}"]
                )

            h = seq[0].new_zeros(
                seq[0].shape[0], p["w_hi" if self.kind == "lstm" else "w_hr"].shape[0]
            )
            c = torch.zeros_like(h)
            outs = []
            for x_t in seq:
                if self.kind == "lstm":
                    i = torch.sigmoid(pre("i", x_t, h))
                    f = torch.sigmoid(pre("f", x_t, h))
                    g = torch.tanh(pre("g", x_t, h))
                    o = torch.sigmoid(pre("o", x_t, h))
                    c = f * c + i * g
                    h = o * torch.tanh(c)
                else:  # reset after, as nn.GRU
                    r = torch.sigmoid(pre("r", x_t, h))
                    z = torch.sigmoid(pre("z", x_t, h))
                    n = torch.tanh(
                        F.linear(x_t, p["w_xn"], p["b_xn"]) + r * F.linear(h, p["w_hn"], p["b_hn"])
                    )
                    h = z * h + (1 - z) * n
                outs.append(h)
            seq = outs
        return torch.stack(seq, dim=1)


class CharModel(nn.Module):
    """Embedding -> recurrent stack -> logits; ``rnn`` returns its output first or alone."""

    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.rnn = rnn
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, chars: Tensor) -> Tensor:
        out = self.rnn(self.embed(chars))
        return self.head(out[0] if isinstance(out, tuple) else out)


def build(variant: str, hidden: int, layers: int) -> nn.Module:
    kind, impl = variant.rsplit(":", 1)
    if impl == "naive":
        return NaiveRNN("lstm" if kind == "lstm" else "gru", EMBED, hidden, layers)
    if impl == "fused":
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        return cls(EMBED, hidden, layers, batch_first=True)
    if kind == "lstm":
        return ReferenceLSTM(EMBED, hidden, layers)
    return ReferenceGRU(EMBED, hidden, layers, reset=kind.split("-")[1])


def check_naive_matches_fused() -> None:
    """The naive baseline must compute the same model, or the comparison means nothing."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, EMBED)
    for kind, cls in (("lstm", nn.LSTM), ("gru", nn.GRU)):
        fused = cls(EMBED, 8, 2, batch_first=True)
        naive = NaiveRNN(kind, EMBED, 8, 2)
        naive.copy_from(fused)
        torch.testing.assert_close(naive(x), fused(x)[0], atol=1e-5, rtol=1e-4)


class Row:
    """One table row: a model, its optimiser and the fusion backend its cells run with."""

    def __init__(self, label: str, impl: str, variant: str, fusion: str, args: argparse.Namespace):
        self.label, self.impl = label, impl
        self.pointwise = compile_pointwise(fusion)
        torch.manual_seed(0)
        self.model = CharModel(build(variant, args.hidden, args.layers), args.hidden)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        data = torch.randint(0, VOCAB, (args.batch, args.seq + 1))
        self.inputs, self.targets = data[:, :-1], data[:, 1:]
        self.times: list[float] = []

    def step(self) -> float:
        """One training step (forward + backward + AdamW); returns its wall time in seconds."""
        use_pointwise(self.pointwise)
        start = time.perf_counter()
        logits = self.model(self.inputs)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), self.targets.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


def plan_rows(args: argparse.Namespace) -> list[Row]:
    rows = []
    groups = [("LSTM", "lstm", "nn.LSTM"), ("GRU (reset after)", "gru-after", "nn.GRU")]
    groups.append(("GRU (reset before)", "gru-before", None))
    for label, kind, torch_name in groups:
        if torch_name:
            rows.append(Row(label, "naive per-gate loop", f"{kind}:naive", "eager", args))
        for fusion in args.fusion.split(","):
            impl = "reference (charlm.cells)" + ("" if fusion == "eager" else f", {fusion}")
            rows.append(Row(label, impl, f"{kind}:reference", fusion, args))
        if torch_name:
            rows.append(Row(label, f"fused {torch_name}", f"{kind}:fused", "eager", args))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per row")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--fusion",
        default="eager",
        help="comma-separated backends for the reference cells' element-wise functions "
        "(eager, script, compile; compile spends ~20 s or more compiling during warm-up)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check_naive_matches_fused()
    rows = plan_rows(args)
    for row in rows:
        for _ in range(args.warmup):
            row.step()
    # Round robin, one step of every row in turn: on a shared or throttled machine every row
    # sees the same background load, so the ratios stay meaningful.
    for _ in range(args.steps):
        for row in rows:
            row.times.append(row.step())
    use_pointwise(EAGER)
    print_table(rows, args)


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    chars = args.batch * args.seq
    median = {id(r): statistics.median(r.times) for r in rows}
    print(
        f"B={args.batch}, T={args.seq}, H={args.hidden}, layers={args.layers}, "
        f"threads={args.threads}, torch {torch.__version__}; {args.warmup} warm-up + "
        f"{args.steps} timed steps per row, interleaved; chars/s from the median step\n"
    )
    print(
        "| model | implementation | chars/s | ms/step (median) | ms/step (best) "
        "| vs naive | vs fused |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        same = [r for r in rows if r.label == row.label]
        naive = next((median[id(r)] for r in same if r.impl.startswith("naive")), None)
        fused = next((median[id(r)] for r in same if r.impl.startswith("fused")), None)
        secs = median[id(row)]
        print(
            f"| {row.label} | {row.impl} | {chars / secs:,.0f} | {secs * 1e3:.0f} | "
            f"{min(row.times) * 1e3:.0f} | {f'{naive / secs:.2f}x' if naive else '-'} | "
            f"{f'{fused / secs:.2f}x' if fused else '-'} |"
        )


if __name__ == "__main__":
    main()
