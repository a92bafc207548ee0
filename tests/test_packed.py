"""charlm.cpu.packed: products with a prepacked weight equal torch.mm, and fall back safely."""

from __future__ import annotations

import pytest
import torch

import charlm.cpu.packed as packed
from charlm.cpu.packed import FixedWeight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_products_equal_torch_mm(dtype: torch.dtype, batch: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 80).to(dtype)
    b = torch.randn(80).to(dtype)
    x = torch.randn(batch, 48).to(dtype)
    fixed = FixedWeight(w)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fixed.mm(x).float(), (x @ w).float(), rtol=tol, atol=tol * 10)
    got = fixed.addmm(b, x).float()
    torch.testing.assert_close(got, torch.addmm(b, x, w).float(), rtol=tol, atol=tol * 10)
    assert fixed.mm(x).dtype == dtype


@pytest.mark.parametrize("threads", [1, 2])
def test_a_pack_is_kept_per_batch_size_and_fp32_vectors_on_one_thread_stay_unpacked(
    threads: int,
) -> None:
    if not packed._packable(torch.zeros(2, 2)):
        pytest.skip("oneDNN is not available in this torch build")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fixed = FixedWeight(torch.randn(16, 24))
        fixed.mm(torch.randn(4, 16))
        x = torch.randn(1, 16)
        got = fixed.mm(x)
        fixed.mm(torch.randn(4, 16))
    finally:
        torch.set_num_threads(before)
    assert sorted(fixed.packs) == [1, 4]
    assert fixed.packs[4] is not None  # packed for batch 4
    # An fp32 matrix-vector product keeps torch.mm on one thread; oneDNN splits it on more.
    assert (fixed.packs[1] is None) == (threads == 1)
    torch.testing.assert_close(got, x @ fixed.w)


def test_a_refused_pack_falls_back_to_torch_mm(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(linear: torch.Tensor, batch: int) -> torch.Tensor:
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(packed, "_reorder", refuse)
    w, x = torch.randn(16, 24), torch.randn(4, 16)
    fixed = FixedWeight(w)
    torch.testing.assert_close(fixed.mm(x), x @ w)
    assert fixed.packs == {4: None}


def test_a_pack_that_gives_wrong_numbers_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    if not packed._packable(torch.zeros(2, 2)):
        pytest.skip("oneDNN is not available in this torch build")
    real = packed._packed_product

    def wrong(x: torch.Tensor, pack: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return real(x, pack, b) * 1.5

    monkeypatch.setattr(packed, "_packed_product", wrong)
    w, x = torch.randn(16, 24), torch.randn(4, 16)
    fixed = FixedWeight(w)
    torch.testing.assert_close(fixed.mm(x), x @ w)
    assert fixed.packs == {4: None}


def test_weights_off_the_cpu_or_of_other_dtypes_are_never_packed() -> None:
    assert FixedWeight(torch.randn(8, 8, dtype=torch.float64)).packable is False
    assert FixedWeight(torch.randn(8, 8, device="meta")).packable is False
