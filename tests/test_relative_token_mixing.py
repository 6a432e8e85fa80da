"""Relative token mixing against a brute-force loop over (output, input) pairs."""
import pytest
import torch

from resmlp_mt.modules import RelativeTokenMixing

torch.manual_seed(0)


def reference(m: RelativeTokenMixing, x, lengths=None):
    """Each output position as its definition reads: window weights by offset, then the
    mean of the farther inputs on each side, within the sentence's own length."""
    L, B, C = x.shape
    w = m.weight.double()
    out = torch.zeros(L, B, C, dtype=torch.float64)
    for b in range(B):
        n = L if lengths is None else lengths[b]
        for i in range(n):
            acc = m.bias.double().expand(C).clone()
            left, right = [], []
            for j in range(n):
                offset = i - j
                if m.causal and offset < 0:
                    continue
                if abs(offset) <= m.window:
                    acc += w[offset - m.lowest_offset] * x[j, b].double()
                elif offset > 0:
                    left.append(x[j, b].double())
                else:
                    right.append(x[j, b].double())
            if left:
                acc += m.far_weight[0].double() * torch.stack(left).mean(0)
            if right:
                acc += m.far_weight[1].double() * torch.stack(right).mean(0)
            out[i, b] = acc
    return out


def randomised(m):
    with torch.no_grad():  # visible far weights and bias, not the near-zero init
        for p in m.parameters():
            p.normal_()
    return m


def padded_batch(lengths, channels=3):
    L = max(lengths)
    x = torch.randn(L, len(lengths), channels)
    pad = torch.arange(L)[None, :] >= torch.tensor(lengths)[:, None]  # B x L, right padding
    return x, pad


@pytest.mark.parametrize("window", [0, 2, 5])
def test_two_sided_matches_loops_with_padding(window):
    m = randomised(RelativeTokenMixing(window))
    lengths = [13, 4, 9, 1]
    x, pad = padded_batch(lengths)
    garbage = x.masked_fill(pad.t()[..., None], 1e3)  # padded inputs must enter nothing
    out = m(garbage, padding_mask=pad)
    ref = reference(m, x, lengths)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[:n, b].double(), ref[:n, b], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x).double(), reference(m, x), rtol=1e-5, atol=1e-5)  # no mask: all real


@pytest.mark.parametrize("window", [0, 3])
def test_causal_matches_loops_and_is_causal(window):
    m = randomised(RelativeTokenMixing(window, causal=True))
    x = torch.randn(11, 2, 3)
    out = m(x)
    torch.testing.assert_close(out.double(), reference(m, x), rtol=1e-5, atol=1e-5)
    for t in range(10):
        changed = x.clone()
        changed[t + 1 :] += 1.0
        torch.testing.assert_close(m(changed)[: t + 1], out[: t + 1], rtol=0, atol=0)


def test_a_sentence_is_mixed_the_same_alone_or_in_a_batch():
    m = randomised(RelativeTokenMixing(2))
    lengths = [10, 3, 7]
    x, pad = padded_batch(lengths)
    out = m(x, padding_mask=pad)
    for b, n in enumerate(lengths):
        torch.testing.assert_close(out[:n, b], m(x[:n, b : b + 1])[:, 0], rtol=1e-5, atol=1e-5)


def test_incremental_steps_equal_the_full_pass_past_the_window_and_across_reorders():
    m = randomised(RelativeTokenMixing(3, causal=True))
    x = torch.randn(14, 4, 5)  # 14 positions: the window (3) fills, then the mean takes over
    state = {}
    steps = [m(x[t : t + 1], incremental_state=state) for t in range(14)]
    torch.testing.assert_close(torch.cat(steps), m(x), rtol=1e-5, atol=1e-5)

    state, order = {}, torch.tensor([2, 2, 0, 3])  # a beam reorder after 6 steps
    for t in range(6):
        m(x[t : t + 1], incremental_state=state)
    m.reorder_incremental_state(state, order)
    x = torch.cat([x[:6].index_select(1, order), x[6:]])
    tail = [m(x[t : t + 1], incremental_state=state) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(tail), m(x[:10])[6:], rtol=1e-5, atol=1e-5)

    order = torch.tensor([3, 1])  # finished hypotheses leave: a smaller batch
    m.reorder_incremental_state(state, order)
    x = x.index_select(1, order)
    tail = [m(x[t : t + 1], incremental_state=state) for t in range(10, 14)]
    torch.testing.assert_close(torch.cat(tail), m(x)[10:], rtol=1e-5, atol=1e-5)


def test_decoding_state_does_not_grow_with_the_position():
    m = RelativeTokenMixing(4, causal=True)
    state = {}
    for t in range(300):
        m(torch.randn(1, 2, 3), incremental_state=state)
    cached = m.get_incremental_state(state, "window")
    assert cached["window"].shape == (2, 4, 3) and cached["far_sum"].shape == (2, 3)
    assert cached["far_count"].item() == 300 - 4


def test_no_parameter_depends_on_a_length_and_any_length_runs():
    m = RelativeTokenMixing(5)
    assert sum(p.numel() for p in m.parameters()) == 11 + 2 + 1
    assert m(torch.randn(1000, 1, 2)).shape == (1000, 1, 2)


def test_mean_init_averages_the_window_and_the_far_means():
    m = RelativeTokenMixing(1, causal=True, init="mean", init_std=1e-9)
    x = torch.randn(6, 1, 2)
    out = m(x)
    # slots: offsets 0 and 1, and the mean of everything before the window: a third each
    expected = (x[5] + x[4] + x[:4].mean(0)) / 3
    torch.testing.assert_close(out[5], expected, rtol=1e-5, atol=1e-6)
