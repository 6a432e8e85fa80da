"""The folded ResMLPBlock against its plain computation, outputs and gradients.

``ResMLPBlock.plain_forward`` calls the block's own sub-modules one after the other, as
the paper writes the block (norm -> token mixing -> LayerScale -> residual; norm -> fc1 ->
GELU -> fc2 -> LayerScale -> residual), with every intermediate kept by autograd; the
token-mixing modules themselves are checked against brute-force loops in their own
tests. ``forward`` folds LayerScale and Aff into small weights, lets the GEMMs add the
residuals and recomputes GELU in its backward pass.
"""
import pytest
import torch
import torch.nn.functional as F
from fairseq.modules import MultiheadAttention

from resmlp_mt.modules import ResMLPBlock
from resmlp_mt.modules.folding import fold_mlp, folded_mlp, gelu_linear, scaled_norm

torch.manual_seed(0)
DIM, TOKENS = 12, 9


def reference(block, x, padding_mask=None, encoder_out=None, encoder_padding_mask=None):
    return block.plain_forward(x, padding_mask, encoder_out, encoder_padding_mask)


def randomise(block):
    """Non-trivial norms and LayerScales, so that every fold is exercised."""
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith(("alpha", "weight")) and p.dim() == 1 or name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1:
                p.normal_(0, 0.3)
    return block


@pytest.mark.parametrize("norm", ["affine", "layernorm"])
@pytest.mark.parametrize("mixing", ["full", "padded", "causal"])
@pytest.mark.parametrize("window", [None, 2], ids=["absolute", "relative"])
@pytest.mark.parametrize("training, dropout", [(True, 0.0), (True, 0.3), (False, 0.3)])
@pytest.mark.parametrize("batch", [3, 24])
def test_folded_block_matches_the_plain_sequence(norm, mixing, window, training, dropout, batch):
    """Dropout on (training, 0.3): the residuals stay apart; otherwise the GEMMs add them in.
    Batch 3: fewer tokens than hidden units, the MLP is not folded; batch 24: it is."""
    cross = MultiheadAttention(DIM, 2, encoder_decoder_attention=True) if mixing == "causal" else None
    block = ResMLPBlock(DIM, TOKENS, mixing=mixing, mixing_window=window, norm=norm, cross_attention=cross,
                        dropout=dropout, activation_dropout=dropout)
    block = randomise(block).train(training)
    length = TOKENS if mixing == "full" else 7
    x = torch.randn(length, batch, DIM, requires_grad=True)
    kwargs = {}
    if mixing == "padded":
        kwargs["padding_mask"] = torch.arange(length)[None, :] >= torch.tensor([7, 4, 2] * (batch // 3))[:, None]
    if cross is not None:
        kwargs["encoder_out"] = torch.randn(5, batch, DIM)
        kwargs["encoder_padding_mask"] = torch.tensor(
            [[False] * 5, [False] * 3 + [True] * 2, [False] * 5] * (batch // 3))
    grad_out = torch.randn(length, batch, DIM)

    outputs, grads = [], []
    for fn in (block, lambda *a, **k: reference(block, *a, **k)):
        block.zero_grad()
        x.grad = None
        torch.manual_seed(1)  # the same dropout masks, drawn in the same order
        out = fn(x, **kwargs)
        out.backward(grad_out)
        outputs.append(out.detach())
        grads.append({"x": x.grad.clone(), **{n: p.grad.clone() for n, p in block.named_parameters()}})
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        if name == "cross_attention.k_proj.bias":
            # adds q.b to every score of a query, which softmax ignores: a zero gradient in exact
            # arithmetic, so both are rounding noise (up to 1.2e-5 seen), not a value to compare
            scale = max(g.abs().max() for g in grads[1].values())
            assert max(grads[0][name].abs().max(), grads[1][name].abs().max()) <= 1e-5 * scale
            continue
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_folded_causal_block_steps_incrementally_as_the_full_pass():
    cross = MultiheadAttention(DIM, 2, encoder_decoder_attention=True)
    block = randomise(ResMLPBlock(DIM, TOKENS, mixing="causal", norm="layernorm", cross_attention=cross)).eval()
    x, enc = torch.randn(6, 2, DIM), torch.randn(4, 2, DIM)
    with torch.no_grad():
        state = {}
        steps = [block(x[t : t + 1], incremental_state=state, encoder_out=enc) for t in range(6)]
        torch.testing.assert_close(torch.cat(steps), reference(block, x, encoder_out=enc), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["affine", "layernorm"])
def test_folds_match_the_modules(norm):
    """Each fold alone: scaled_norm is the norm times a scale, fold_mlp's weights through
    folded_mlp give the MLP scaled by gamma, with and without a residual."""
    block = randomise(ResMLPBlock(DIM, TOKENS, norm=norm)).eval()
    x, residual = torch.randn(TOKENS, 4, DIM, dtype=torch.float64), torch.randn(TOKENS, 4, DIM, dtype=torch.float64)
    block.double()
    gamma = block.ls2.gamma
    with torch.no_grad():
        torch.testing.assert_close(scaled_norm(block.norm1, x, gamma), block.norm1(x) * gamma)
        plain = block.mlp(block.norm2(x)) * gamma
        folded = fold_mlp(block.norm2, block.mlp.fc1, block.mlp.fc2, gamma)
        torch.testing.assert_close(folded_mlp(x, block.norm2, folded), plain)
        torch.testing.assert_close(folded_mlp(x, block.norm2, folded, residual), residual + plain)


def test_gelu_linear_gradients_in_double_precision():
    h = torch.randn(5, 3, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gelu_linear, (h, weight, bias))
    torch.testing.assert_close(gelu_linear(h, weight, bias), F.linear(F.gelu(h), weight, bias))


def test_gelu_linear_keeps_h_not_gelu_h():
    """What autograd keeps for the backward pass: h and the weight, not gelu(h)."""
    h = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(8, 32, requires_grad=True)
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        gelu_linear(h, weight, None)
    assert len(kept) == 2 and kept[0] is h and kept[1] is weight


def test_inference_fold_follows_weight_updates_and_loads():
    """The folded MLP weights must follow every change of the weights between forward
    passes: an optimizer step (torch's, and fairseq's, which writes through ``.data`` where
    no version counter sees it), a loaded state dict and a dtype change."""
    block = randomise(ResMLPBlock(DIM, TOKENS, mixing="full", norm="affine")).eval()
    x = torch.randn(TOKENS, 8, DIM)  # more tokens than hidden units: folded

    def check():
        with torch.no_grad():
            torch.testing.assert_close(block(x), reference(block, x), rtol=1e-5, atol=1e-5)

    check()
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)
    block(x).sum().backward()
    optimizer.step()
    check()
    for p in block.parameters():
        p.data.add_(0.1 * torch.randn_like(p))  # fairseq's Adam and Adagrad update p.data
    check()
    block.load_state_dict(randomise(ResMLPBlock(DIM, TOKENS, mixing="full", norm="affine")).state_dict())
    check()
    with torch.inference_mode():
        block(x)
    block.double()
    x = x.double()
    check()


def test_block_trains_under_autocast():
    """fairseq's --amp runs the model under autocast: the folded block must train there too."""
    block = randomise(ResMLPBlock(DIM, TOKENS, mixing="full", norm="affine")).train()
    x = torch.randn(TOKENS, 8, DIM, requires_grad=True)  # more tokens than hidden units: folded
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.float(), reference(block, x), rtol=0.05, atol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_a_decoding_folds_once_and_the_next_sees_new_weights():
    """Within one decoding the fold is kept in its incremental state; a decoding after a
    ``.data`` update (as between fairseq's validations) uses the new weights."""
    block = randomise(ResMLPBlock(DIM, TOKENS, mixing="causal", norm="affine")).eval()
    x = torch.randn(6, 2, DIM)

    def decode():
        state = {}
        with torch.no_grad():
            out = torch.cat([block(x[t : t + 1], incremental_state=state) for t in range(6)])
        assert sum("folded_mlp" in key for key in state) == 1
        torch.testing.assert_close(out, reference(block, x), rtol=1e-5, atol=1e-5)

    decode()
    for p in block.parameters():
        p.data.mul_(1.5)
    decode()
