"""The few-row CPU product: built where it can run, PyTorch's result up to float rounding."""

import pytest
import torch

from kernels.cpu_gemm import MAX_ROWS, few_rows_gemm, unusable_reason

gemm = few_rows_gemm()
needs_kernel = pytest.mark.skipif(gemm is None, reason=f"kernel not usable here: {unusable_reason()}")


def test_the_kernel_is_built_wherever_it_can_run():
    # an x86 Linux machine with a C compiler must not fall back silently
    assert (gemm is None) == (unusable_reason() is not None)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5, 8, 9, 13, MAX_ROWS])
@pytest.mark.parametrize("width", [576, 20, 3])  # a multiple of 8, a tail, only a tail
def test_few_rows_gemm_matches_torch(rows, width):
    torch.manual_seed(rows * 1000 + width)
    x, weight = torch.randn(rows, width), torch.randn(37, width)
    got = gemm(x, weight)
    assert got.shape == (rows, 37) and got.is_contiguous()
    torch.testing.assert_close(got, x @ weight.t(), rtol=1e-5, atol=1e-4)


@needs_kernel
def test_few_rows_gemm_takes_views_and_refuses_mismatches():
    weight = torch.randn(64, 32)
    x = torch.randn(32, 4).t()  # not contiguous
    torch.testing.assert_close(gemm(x, weight[8:40]), x @ weight[8:40].t(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="width 16"):
        gemm(torch.randn(2, 16), weight)
    with pytest.raises(ValueError, match="float32"):
        gemm(torch.randn(2, 32, dtype=torch.float64), weight)


def test_it_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TANDEM_CPU_KERNEL", "0")
    assert unusable_reason() == "TANDEM_CPU_KERNEL=0"
