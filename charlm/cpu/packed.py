"""Products with a weight that stays fixed over many calls, in oneDNN's packed layout on the CPU.

Why: a recurrent step multiplies a small activation ([batch, hidden]) by the same weight again and
again, and a plain `torch.mm` re-lays the weight out for its kernel on every call. oneDNN can lay
it out once (`torch.ops.mkldnn._reorder_linear_weight`, the call torch's own compiler uses for
frozen linear layers) and then run only the product. On the AVX-512 machine that took a
[32, 256] x [256, 2048] fp32 product from 377 to 212 us and a bf16 [1, 512] x [512, 4096] one from
214 to 74 (docs/benchmarks.md). The layout depends on the batch size, so one is kept per size.

Where oneDNN is missing, refuses the dtype or gives a wrong answer on a probe, products fall back
to `torch.mm`: the same numbers up to rounding, at the old speed. The packed call has no autograd
formula, so it serves only the sampling steps (charlm.stepper), where no graph is recorded. (In
the GRU's training layer, charlm.cpu.gru, the same packing timed slower: 0.89x and 0.97x.)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

Tensor = torch.Tensor


class FixedWeight:
    """`x @ w` for a fixed w [in, out] and any number of x [batch, in] of w's dtype."""

    def __init__(self, w: Tensor) -> None:
        self.w = w
        self.packable = _packable(w)
        self.packs: dict[int, Tensor | None] = {}

    def mm(self, x: Tensor) -> Tensor:
        pack = self._pack(x.shape[0])
        if pack is None:
            return torch.mm(x, self.w)
        return _packed_product(x, pack, None)

    def addmm(self, b: Tensor, x: Tensor) -> Tensor:
        """`b + x @ w`, the bias (w's dtype) added inside the product."""
        pack = self._pack(x.shape[0])
        if pack is None:
            return torch.addmm(b, x, self.w)
        return _packed_product(x, pack, b)

    def _pack(self, batch: int) -> Tensor | None:
        if batch not in self.packs:
            self.packs[batch] = _try_pack(self.w, batch) if self.packable else None
        return self.packs[batch]


def _packable(w: Tensor) -> bool:
    return (
        w.device.type == "cpu"
        and w.dim() == 2
        and w.dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


def _try_pack(w: Tensor, batch: int) -> Tensor | None:
    """The packed weight for this batch size, or None if oneDNN refuses it or gets it wrong.

    On one thread an fp32 matrix-vector product (batch 1) stays with torch.mm: its kernel for
    that case timed as fast as the packed one or faster (68 against 73 us, 217 against 294 us
    for [256, 2048] and [512, 4096]), where every other case gained. torch.mm does not split it
    across threads and oneDNN does (on two threads 110 against 246 us for [512, 4096]), so with
    more threads it is packed too."""
    if batch == 1 and w.dtype == torch.float32 and torch.get_num_threads() == 1:
        return None
    try:
        pack = _reorder(w.t().contiguous(), batch)  # oneDNN reads a linear weight as [out, in]
        probe = torch.linspace(-1, 1, batch * w.shape[0], dtype=w.dtype).view(batch, -1)
        got = _packed_product(probe, pack, None)
    except (RuntimeError, NotImplementedError):
        return None
    expected = torch.mm(probe, w)
    ok = got.shape == expected.shape and torch.allclose(
        got.float(), expected.float(), rtol=1e-2, atol=1e-2 * float(expected.abs().max()) + 1e-6
    )
    return pack if ok else None


def _reorder(linear: Tensor, batch: int) -> Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(linear, batch)


def _packed_product(x: Tensor, pack: Tensor, b: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, pack, b, "none", [], "")


class Int8Weight:
    """`b + x @ w` with w stored as int8 (one scale per output column) for fbgemm/oneDNN's
    dynamic int8 product: each call quantizes x to 8 bits over its own range, multiplies in
    integers and adds the fp32 bias. Sampling only (`--precision int8`).

    Why: at batch 1 a step's time is the weights streaming through the cache, and a 2x256 LSTM's
    fp32 step weights (3.1 MB) spill out of a core's 2 MiB L2 every step, where int8's quarter
    stays in it; at batch 32 the integer products run at about twice fp32's rate with AVX-512
    VNNI. The cost is precision: a product moves by well under 1% of its scale, and a trained
    Tiny Shakespeare model's val loss by 0.0002 nats or less (docs/sampling.md).
    """

    def __init__(self, w: Tensor, b: Tensor) -> None:
        self.w = w  # kept in fp32 for the prime's one recurrent product
        linear = w.t().float().contiguous()  # [out, in], as the packing reads a linear weight
        scales = linear.abs().amax(1).clamp_min(1e-12) / 127
        # Without VNNI the 8-bit kernels sum pairs of products in 16 bits, which can saturate
        # unless the inputs use 7 bits; with VNNI they sum in 32 bits and all 8 are safe.
        self.reduce_range = not _has_vnni()
        self.pack = _int8_pack(linear, scales, b.float().contiguous(), self.reduce_range)

    def addmm(self, b: Tensor, x: Tensor) -> Tensor:
        """`b + x @ w`; b must be the bias given at construction (it is packed in)."""
        return torch.ops.quantized.linear_dynamic(x, self.pack, self.reduce_range)


class Int8Unavailable(RuntimeError):
    """This torch build or CPU has no working int8 product."""


def _has_vnni() -> bool:
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def _int8_pack(linear: Tensor, scales: Tensor, bias: Tensor, reduce_range: bool) -> Any:
    """fbgemm's (or oneDNN's) packed int8 weight, checked on a probe against the fp32 product."""
    if linear.device.type != "cpu":
        raise Int8Unavailable("int8 products run on the CPU only")
    if not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise Int8Unavailable(f"torch {torch.__version__} has no int8 products")
    out = linear.shape[0]
    try:
        with warnings.catch_warnings():
            # torch marks quantized tensors for removal in a later release; 2.13 has them, and
            # a build without them is refused below with a clear message.
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(
                linear, scales.double(), torch.zeros(out, dtype=torch.long), 0, torch.qint8
            )
            pack = torch.ops.quantized.linear_prepack(q, bias)
            probe = torch.linspace(-1, 1, 4 * linear.shape[1]).view(4, -1)
            got = torch.ops.quantized.linear_dynamic(probe, pack, reduce_range)
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        raise Int8Unavailable(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    expected = torch.addmm(bias, probe, linear.t())
    scale = float((probe.abs().sum(1, keepdim=True) * (scales * 127)).max()) + 1e-6
    if got.shape != expected.shape or float((got - expected).abs().max()) > 0.05 * scale:
        raise Int8Unavailable("the int8 product disagreed with fp32 on a probe")
    return pack
