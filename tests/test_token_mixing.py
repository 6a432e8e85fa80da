"""The cross-token layer against brute-force loops, in its three modes."""
import pytest
import torch

from resmlp_mt.modules import SequenceTooLongError, TokenMixing

torch.manual_seed(0)


def reference(weight, bias, x, lengths=None, causal=False):
    """out[i, b] = sum_j A[i, j] x[j, b] + bias[i], written as explicit loops."""
    L, B, C = x.shape
    out = torch.zeros(L, B, C, dtype=torch.float64)
    for b in range(B):
        n = L if lengths is None else lengths[b]
        for i in range(L):
            acc = bias[i].double().expand(C).clone()
            for j in range(n):
                if causal and j > i:
                    continue
                acc += weight[i, j].double() * x[j, b].double()
            out[i, b] = acc
    return out


def test_full_mode_matches_loops():
    m = TokenMixing(6, "full")
    x = torch.randn(6, 3, 4)
    torch.testing.assert_close(m(x).double(), reference(m.weight, m.bias, x), rtol=1e-5, atol=1e-5)


def test_full_mode_requires_exact_length():
    with pytest.raises(SequenceTooLongError, match="exactly 6 tokens, got 5"):
        TokenMixing(6, "full")(torch.randn(5, 1, 2))


def test_padded_mode_uses_top_left_block_and_ignores_padding():
    m = TokenMixing(10, "padded")
    lengths = [7, 4, 1]
    x = torch.randn(7, 3, 5)
    pad = torch.arange(7)[None, :] >= torch.tensor(lengths)[:, None]  # B x L, right padding
    x_with_garbage = x.masked_fill(pad.t()[..., None], 1e3)  # padded inputs must not leak
    out = m(x_with_garbage, padding_mask=pad)
    ref = reference(m.weight, m.bias, x, lengths)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[:n, b].double(), ref[:n, b], rtol=1e-5, atol=1e-5)


def test_causal_mode_matches_loops():
    m = TokenMixing(9, "causal")
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(m(x).double(), reference(m.weight, m.bias, x, causal=True), rtol=1e-5, atol=1e-5)


def test_causal_incremental_steps_match_full_pass_and_follow_reorder():
    m = TokenMixing(12, "causal")
    x = torch.randn(8, 4, 3)
    full = m(x)
    state = {}
    steps = [m(x[t : t + 1], incremental_state=state) for t in range(8)]
    torch.testing.assert_close(torch.cat(steps), full, rtol=1e-5, atol=1e-5)

    # A beam reorder after step 4: hypotheses 2, 2, 0, 3 survive.
    order = torch.tensor([2, 2, 0, 3])
    state = {}
    for t in range(4):
        m(x[t : t + 1], incremental_state=state)
    m.reorder_incremental_state(state, order)
    x_reordered = torch.cat([x[:4].index_select(1, order), x[4:]])
    tail = [m(x_reordered[t : t + 1], incremental_state=state) for t in range(4, 8)]
    torch.testing.assert_close(torch.cat(tail), m(x_reordered)[4:], rtol=1e-5, atol=1e-5)


def test_over_length_error_names_length_and_limit():
    with pytest.raises(SequenceTooLongError, match="13 tokens.*12 positions"):
        TokenMixing(12, "padded")(torch.randn(13, 1, 2))
    m, state = TokenMixing(3, "causal"), {}
    for t in range(3):
        m(torch.randn(1, 1, 2), incremental_state=state)
    with pytest.raises(SequenceTooLongError, match="4 tokens.*3 positions"):
        m(torch.randn(1, 1, 2), incremental_state=state)


def test_mean_init_averages_the_prefix_like_attention_at_init():
    m = TokenMixing(7, "causal", init="mean", init_std=1e-9)
    x = torch.randn(5, 2, 3)
    prefix_mean = x.cumsum(0) / torch.arange(1, 6).view(5, 1, 1)
    torch.testing.assert_close(m(x), prefix_mean, rtol=1e-5, atol=1e-5)
