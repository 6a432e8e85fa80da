"""Cross-attention coverage and locality: against a brute-force loop, fairseq's attention at
beta = 0, coverage alone at gamma = 0, padding, and checkpoints trained without them."""
import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention

from helpers import build_translation_model, random_tokens
from resmlp_mt.modules import CoverageAttention
from resmlp_mt.usage_errors import CheckpointMismatchError, UsageError

DIM, HEADS = 8, 2
SMALL = dict(encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_layers=1, decoder_layers=2,
             decoder_attention_heads=2, token_mixing="relative", mixing_window=2)


def attention(beta=(0.7, 1.9), gamma=None, floor=0.0, start=-1, focus="argmax") -> CoverageAttention:
    """``gamma``: ((forwards per head), (backwards per head)), or None for no locality."""
    torch.manual_seed(0)
    module = CoverageAttention(DIM, HEADS, kdim=DIM, vdim=DIM, locality=gamma is not None,
                               locality_floor=floor, locality_start=start, locality_focus=focus).double().eval()
    with torch.no_grad():
        module.coverage_weight.copy_(torch.tensor(beta) / module.GAIN)
        if gamma is not None:
            module.locality_weight.copy_(torch.tensor(gamma) / module.GAIN)
        for proj in (module.q_proj, module.k_proj, module.v_proj, module.out_proj):
            proj.bias.normal_()  # fairseq initialises them at 0
    return module


def brute_force(module, query, key, padding):
    """Each (sentence, head) on its own, target position by target position, as the formula
    reads: a_t = softmax(q_t . k_j / sqrt(d_h) - beta_h * c_t[j] - locality) over the real keys
    j, c_{t+1} = c_t + a_t, where locality is gf_h * (j - p) for j after p and gb_h * (p - j)
    before it, p the key of a_{t-1}'s largest weight (translating with the mean focus: the
    sum of j * a_{t-1}[j]; none at t = 0: then, with a start S, gf_h * (j - f - S) for j more
    than S after the sentence's first key f). Returns the output (T, B, C) and the weights
    (heads, B, T, S)."""
    T, B, _ = query.shape
    S = key.size(0)
    dh = DIM // HEADS
    q = F.linear(query, module.q_proj.weight, module.q_proj.bias)
    k = F.linear(key, module.k_proj.weight, module.k_proj.bias)
    v = F.linear(key, module.v_proj.weight, module.v_proj.bias)
    context = torch.zeros(T, B, DIM, dtype=query.dtype)
    weights = torch.zeros(HEADS, B, T, S, dtype=query.dtype)
    for b in range(B):
        real = [j for j in range(S) if not padding[b, j]]
        for h in range(HEADS):
            cols = slice(h * dh, (h + 1) * dh)
            covered = {j: 0.0 for j in real}
            focus = None
            for t in range(T):
                logits = [float(q[t, b, cols] @ k[j, b, cols]) / math.sqrt(dh)
                          - float(module.beta[h]) * covered[j] for j in real]
                forwards, backwards = (float(g) for g in module.gamma[:, h]) if module.locality_weight is not None \
                    else (None, None)
                if forwards is not None and focus is not None:
                    logits = [x - (forwards * (j - focus) if j > focus else backwards * (focus - j))
                              for x, j in zip(logits, real)]
                elif forwards is not None and module.locality_start >= 0 and not module.training:
                    logits = [x - forwards * max(0, j - real[0] - module.locality_start) for x, j in zip(logits, real)]
                top = max(logits)
                exps = [math.exp(x - top) for x in logits]
                total = sum(exps)
                for j, e in zip(real, exps):
                    weights[h, b, t, j] = e / total
                    covered[j] += e / total
                    context[t, b, cols] += e / total * v[j, b, cols]
                if module.locality_focus == "mean" and not module.training:
                    focus = sum(j * float(weights[h, b, t, j]) for j in real)
                else:
                    focus = max(real, key=lambda j: weights[h, b, t, j])
    return F.linear(context, module.out_proj.weight, module.out_proj.bias), weights


LOCALITY = ((0.4, 1.3), (2.2, 0.6))  # forwards, backwards; per head


@pytest.mark.parametrize("gamma", [None, LOCALITY], ids=["coverage", "coverage+locality"])
def test_full_pass_equals_the_brute_force_loop_with_padded_keys(gamma):
    module = attention(gamma=gamma)
    torch.manual_seed(1)
    query, key = torch.randn(6, 3, DIM, dtype=torch.double), torch.randn(9, 3, DIM, dtype=torch.double)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, :4] = True  # sentences of 9, 5 (left-padded) and 1 keys
    padding[2, 1:] = True
    out, weights = module(query, key, key, key_padding_mask=padding, need_weights=True, need_head_weights=True)
    with torch.no_grad():
        expected_out, expected_weights = brute_force(module, query, key, padding)
    # fairseq's softmax is fp32 whatever the model's dtype: the weights are fp32 numbers
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    assert weights[:, 1, :, :4].abs().max() == 0  # padded keys get nothing
    # the bias does something here: the same attention without it (or without locality) differs
    unbiased, _ = attention(beta=(0.0, 0.0))(query, key, key, key_padding_mask=padding)
    assert (unbiased - out).abs().max() > 1e-2
    if gamma is not None:
        coverage_alone, _ = attention()(query, key, key, key_padding_mask=padding)
        assert (coverage_alone - out).abs().max() > 1e-2


def test_at_zero_locality_weights_it_is_coverage_alone():
    torch.manual_seed(2)
    query, key = torch.randn(5, 2, DIM, dtype=torch.double), torch.randn(7, 2, DIM, dtype=torch.double)
    ours = attention(gamma=((0.0, 0.0), (0.0, 0.0)))(query, key, key, need_head_weights=True)
    theirs = attention()(query, key, key, need_head_weights=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_at_zero_coverage_weights_it_is_fairseqs_attention():
    module = attention(beta=(0.0, 0.0))
    plain = MultiheadAttention(DIM, HEADS, kdim=DIM, vdim=DIM, encoder_decoder_attention=True).double().eval()
    state = {k: v for k, v in module.state_dict().items() if k != "coverage_weight"}
    plain.load_state_dict(state)
    torch.manual_seed(2)
    query, key = torch.randn(4, 2, DIM, dtype=torch.double), torch.randn(7, 2, DIM, dtype=torch.double)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[0, 5:] = True
    ours = module(query, key, key, key_padding_mask=padding, need_head_weights=True)
    theirs = plain(query, key, key, key_padding_mask=padding, static_kv=True, need_head_weights=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_floor_raises_the_heads_below_it_when_translating_only():
    """In eval mode gamma = max(floor, learned): the same attention as the learned rates raised to
    the floor by hand. Training attends with the learned rates, and every rate learns."""
    torch.manual_seed(4)
    query, key = torch.randn(6, 2, DIM, dtype=torch.double), torch.randn(11, 2, DIM, dtype=torch.double)
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[1, :3] = True
    learned_rates = ((0.1, 1.3), (2.2, 0.05))
    floored = attention(gamma=learned_rates, floor=0.5)
    out, weights = floored(query, key, key, key_padding_mask=padding, need_head_weights=True)
    expected = attention(gamma=((0.5, 1.3), (2.2, 0.5)))(query, key, key, key_padding_mask=padding,
                                                          need_head_weights=True)
    # (the floor is 0.5 itself, the rates by hand 0.5 / GAIN * GAIN: equal to rounding)
    torch.testing.assert_close(out, expected[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weights, expected[1], rtol=1e-6, atol=1e-7)
    learned = attention(gamma=learned_rates)(query, key, key, key_padding_mask=padding)[0]
    assert (learned - out).abs().max() > 1e-2  # the floor changed something here

    trained = floored.train()(query, key, key, key_padding_mask=padding)[0]  # no dropout: same arithmetic
    torch.testing.assert_close(trained, learned, rtol=0, atol=0)
    trained.pow(2).sum().backward()
    assert (floored.locality_weight.grad != 0).all()


@pytest.mark.parametrize("start", [0, 3])
def test_the_start_bias_holds_the_first_position_near_the_first_key_when_translating_only(start):
    """With a start S, the first target position pays each head's forwards rate for every key
    more than S after the sentence's first (left padding too), later positions as before; in
    training the first position reads freely, as without a start."""
    torch.manual_seed(5)
    query, key = torch.randn(5, 3, DIM, dtype=torch.double), torch.randn(12, 3, DIM, dtype=torch.double)
    padding = torch.zeros(3, 12, dtype=torch.bool)
    padding[1, :5] = True  # sentences of 12, 7 (left-padded) and 3 (right-padded) keys
    padding[2, 3:] = True
    module = attention(gamma=LOCALITY, floor=0.5, start=start)
    out, weights = module(query, key, key, key_padding_mask=padding, need_head_weights=True)
    with torch.no_grad():
        expected_out, expected_weights = brute_force(module, query, key, padding)
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    free = attention(gamma=LOCALITY, floor=0.5)
    _, free_weights = free(query, key, key, key_padding_mask=padding, need_head_weights=True)
    assert (free_weights[:, :, 0] - weights[:, :, 0]).abs().max() > 1e-2  # the start acts here
    trained = module.train()(query, key, key, key_padding_mask=padding)[0]  # no dropout: same arithmetic
    torch.testing.assert_close(trained, free.train()(query, key, key, key_padding_mask=padding)[0], rtol=0, atol=0)


def test_the_mean_focus_counts_distances_from_where_a_head_reads_on_average_when_translating_only():
    """With locality_focus="mean", each head's distances count from the attention-weighted mean
    key of its previous row (left and right padding), not from its largest weight; training
    keeps the largest weight."""
    torch.manual_seed(6)
    query, key = torch.randn(6, 3, DIM, dtype=torch.double), torch.randn(11, 3, DIM, dtype=torch.double)
    padding = torch.zeros(3, 11, dtype=torch.bool)
    padding[1, :4] = True  # sentences of 11, 7 (left-padded) and 5 (right-padded) keys
    padding[2, 5:] = True
    module = attention(gamma=LOCALITY, floor=0.5, start=2, focus="mean")
    out, weights = module(query, key, key, key_padding_mask=padding, need_head_weights=True)
    with torch.no_grad():
        expected_out, expected_weights = brute_force(module, query, key, padding)
    torch.testing.assert_close(weights.double(), expected_weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
    largest = attention(gamma=LOCALITY, floor=0.5, start=2)
    assert (largest(query, key, key, key_padding_mask=padding)[0] - out).abs().max() > 1e-2  # it acts here
    trained = module.train()(query, key, key, key_padding_mask=padding)[0]
    torch.testing.assert_close(trained, largest.train()(query, key, key, key_padding_mask=padding)[0], rtol=0, atol=0)


COVERAGE = dict(SMALL, cross_attention_coverage=True)


@pytest.mark.parametrize("before, after, bias, flag", [
    (SMALL, COVERAGE, "coverage", "--cross-attention-coverage"),
    (COVERAGE, dict(COVERAGE, cross_attention_locality=True), "locality", "--cross-attention-locality"),
], ids=["coverage", "locality"])
def test_a_checkpoint_without_the_bias_starts_with_it_switched_off(before, after, bias, flag):
    """A checkpoint trained without coverage (or with coverage but no locality) loads into a
    model with it: the new weights are 0 and the outputs the checkpoint's."""
    torch.manual_seed(3)
    trained = build_translation_model(**before).eval()
    with torch.no_grad():  # a trained coverage, where there is one
        for name, weight in trained.named_parameters():
            if name.endswith("coverage_weight"):
                weight.fill_(0.1)
    upgraded = build_translation_model(**after).eval()
    upgraded.load_state_dict(trained.state_dict())
    new = [p for n, p in upgraded.named_parameters() if n.endswith(f"{bias}_weight")]
    assert len(new) == 2 and all(p.abs().max() == 0 for p in new)
    src, prev = random_tokens(2, 6, 40), random_tokens(2, 5, 40)
    lengths = torch.tensor([6, 6])
    torch.testing.assert_close(upgraded(src, lengths, prev)[0], trained(src, lengths, prev)[0],
                               rtol=1e-6, atol=1e-6)
    # the other way round the checkpoint's weights would be dropped: an error that names the flag
    with pytest.raises(CheckpointMismatchError, match=flag):
        build_translation_model(**before).load_state_dict(upgraded.state_dict())


def test_locality_without_coverage_is_an_error_that_says_so():
    with pytest.raises(UsageError, match="--cross-attention-locality extends --cross-attention-coverage"):
        build_translation_model(**SMALL, cross_attention_locality=True)
    with pytest.raises(UsageError, match="--cross-attention-locality-floor bounds --cross-attention-locality"):
        build_translation_model(**COVERAGE, cross_attention_locality_floor=0.5)
    with pytest.raises(ValueError, match="--cross-attention-locality-floor must be >= 0"):
        CoverageAttention(DIM, HEADS, locality=True, locality_floor=-1.0)
    with pytest.raises(UsageError, match="--cross-attention-locality-start uses --cross-attention-locality"):
        build_translation_model(**COVERAGE, cross_attention_locality_start=8)
    with pytest.raises(ValueError, match="--cross-attention-locality-start must be >= 0, or -1"):
        CoverageAttention(DIM, HEADS, locality=True, locality_start=-2)
    with pytest.raises(UsageError, match="--cross-attention-locality-focus mean uses --cross-attention-locality"):
        build_translation_model(**COVERAGE, cross_attention_locality_focus="mean")
    with pytest.raises(ValueError, match="--cross-attention-locality-focus must be one of"):
        CoverageAttention(DIM, HEADS, locality=True, locality_focus="median")
