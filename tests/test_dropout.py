"""resmlp_mt.modules.dropout: the cheaper CPU mask against what dropout must be.

The references are independent of the code: the binomial distribution of the number of
dropped elements (overall and in each of the four 16-bit lanes of a 64-bit draw, where a
non-negative draw would never drop in one lane), the exact scale 1 / (1 - p'), the
gradient of a product with a fixed mask, and torch's ``F.dropout`` where ours defers to it.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from resmlp_mt.modules import Dropout, ResMLPBlock
from resmlp_mt.modules.dropout import dropout, keep_mask, rounded_p

N = 1 << 20


def within_binomial(dropped: int, n: int, p: float, sigmas: float = 6.0) -> bool:
    return abs(dropped - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.15, 0.5, 0.9])
def test_drop_rate_is_binomial_overall_and_in_every_lane(p):
    torch.manual_seed(0)
    y = dropout(torch.ones(N), p)
    dropped = y == 0
    assert within_binomial(int(dropped.sum()), N, rounded_p(p))
    for lane in range(4):  # the four int16 lanes of each int64 draw
        assert within_binomial(int(dropped[lane::4].sum()), N // 4, rounded_p(p)), lane


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_kept_elements_are_scaled_by_the_rounded_probability(dtype):
    torch.manual_seed(1)
    p = 0.1
    x = torch.randn(4096, dtype=dtype)
    y = dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    scale = torch.tensor(1 / (1 - rounded_p(p)), dtype=dtype)  # as F.dropout: the scale in the input's dtype
    assert torch.equal(y[kept], x[kept] * scale)
    assert abs(rounded_p(p) - p) <= 2.0**-17


def test_expectation_is_the_input():
    torch.manual_seed(2)
    x = torch.rand(64) + 0.5
    mean = torch.stack([dropout(x, 0.3) for _ in range(4000)]).mean(0)
    # each mean: 4000 draws of x/(0.7) w.p. 0.7; its standard error is x*sqrt(0.3/0.7/4000)
    assert ((mean - x).abs() / (x * math.sqrt(0.3 / 0.7 / 4000))).max() < 5


def test_gradient_is_the_mask():
    torch.manual_seed(3)
    x = torch.randn(50, 30, requires_grad=True)
    y = dropout(x, 0.4)
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    mask = (y != 0).float() / (1 - rounded_p(0.4))
    assert torch.allclose(x.grad, weights * mask, rtol=1e-6, atol=0)


def test_seeded_like_torch_and_inplace():
    x = torch.randn(1000)
    torch.manual_seed(4)
    a = dropout(x, 0.2)
    torch.manual_seed(4)
    b = dropout(x.clone(), 0.2, inplace=True)
    c = dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_identity_when_off_and_torch_where_it_defers():
    x = torch.randn(100)
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    for p in (1e-6, 1.0):  # rounds to 0 or to 1: torch's own handles the edge
        torch.manual_seed(5)
        expected = F.dropout(x, p, True)
        torch.manual_seed(5)
        assert torch.equal(dropout(x, p), expected)
    assert keep_mask(torch.empty(3, 5, dtype=torch.bfloat16), 0.5).dtype == torch.bfloat16


def test_module_follows_train_eval_and_retain_dropout():
    m = Dropout(0.5, module_name="ResMLPDecoder")
    x = torch.ones(10000)
    assert torch.equal(m.eval()(x), x)
    assert (m.train()(x) == 0).any()
    m.eval().make_generation_fast_("decoder.dropout_module", retain_dropout=True)
    assert (m(x) == 0).any()  # fairseq's --retain-dropout


def test_blocks_use_it():
    block = ResMLPBlock(8, 6, dropout=0.2, activation_dropout=0.1)
    assert all(isinstance(m, Dropout) for m in (block.dropout, block.mlp.drop1, block.mlp.drop2))
