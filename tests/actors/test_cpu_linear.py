"""The weight-major linear layer: same results as ``nn.Linear``, swapped in place, undone for peers."""

import pytest
import torch
from torch import nn

from actors.cpu_linear import (
    WeightMajorLinear,
    cheapest_row_counts,
    max_rows,
    rows_computed,
    speeds_up,
    stock_copy,
    use_weight_major,
)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 16), (2, 3, 16), (3, 5, 16), (7, 16), (16,)])
def test_weight_major_linear_matches_nn_linear(bias, shape):
    torch.manual_seed(0)
    layer = nn.Linear(16, 24, bias=bias)
    x = torch.randn(*shape)
    expected = layer(x)
    use_weight_major(layer)
    got = layer(x)
    assert type(layer) is WeightMajorLinear
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_swap_keeps_weights_and_stock_copy_undoes_it():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    weight = model[0].weight
    assert use_weight_major(model) == 2
    assert model[0].weight is weight  # swapped in place, not copied
    peer = stock_copy(model)
    assert [type(m) for m in peer if isinstance(m, nn.Linear)] == [nn.Linear, nn.Linear]
    assert type(model[2]) is WeightMajorLinear  # the original keeps its layers
    assert peer[0].weight.data_ptr() != weight.data_ptr()
    x = torch.randn(3, 8)
    torch.testing.assert_close(peer(x), model(x), rtol=1e-5, atol=1e-5)


def test_stock_copy_of_a_stock_model_is_the_model():
    model = nn.Sequential(nn.Linear(8, 8))
    assert stock_copy(model) is model


def test_only_float32_on_cpu_is_swapped():
    assert speeds_up(nn.Linear(4, 4))
    assert not speeds_up(nn.Linear(4, 4).to(torch.bfloat16))


def test_padded_row_counts_give_the_same_result_and_are_reported():
    torch.manual_seed(0)
    layer = nn.Linear(16, 24)
    x = torch.randn(3, 16)
    expected = layer(x)
    use_weight_major(layer)
    layer.row_counts = (0, 2, 2, 4, 4, 8, 8, 8, 8)  # 1 row as 2, 3 as 4, 5-7 as 8
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer(x[:1]), expected[:1], rtol=1e-5, atol=1e-5)
    assert [rows_computed(layer)(n) for n in (1, 3, 5, 8, 9, 40)] == [2, 4, 8, 8, 9, 40]
    assert rows_computed(nn.Linear(4, 4))(3) == 3  # stock layers compute what they are given


def test_cheapest_row_counts_pad_up_never_down():
    counts, most = cheapest_row_counts(torch.randn(256, 64), repeats=2), max_rows()
    assert len(counts) == most + 1 and counts[0] == 0
    assert all(n <= counts[n] <= most for n in range(most + 1))
    # the choice for n is the cheapest of n..most, so it is also the choice for every count
    # between n and it
    assert all(counts[m] == counts[n] for n in range(1, most + 1) for m in range(n, counts[n] + 1))


def test_a_product_to_differentiate_runs_the_stock_way():
    torch.manual_seed(0)
    layer = nn.Linear(16, 24)
    use_weight_major(layer)
    layer(torch.randn(3, 16)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer.requires_grad_(False)  # a frozen layer between trained ones (heads through the LM head)
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
