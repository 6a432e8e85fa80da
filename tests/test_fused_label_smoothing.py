"""``--criterion fused_label_smoothed_cross_entropy``: fairseq's label-smoothed loss bit for
bit, and its gradient written out, checked against autograd through fairseq's own criterion
and against a float64 formula."""
from types import SimpleNamespace

import pytest
import torch
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    label_smoothed_nll_loss,
)
from fairseq.models.transformer import TransformerConfig, TransformerModel

from helpers import build_translation_model, dictionary, random_tokens, run_cli
from resmlp_mt.criterions.fused_label_smoothed_cross_entropy import (
    FusedLabelSmoothedCrossEntropyCriterion,
    LabelSmoothedNLL,
    plain_log_softmax,
)
from training_runs import train_args, train_losses

PAD = 1


def _logits_and_targets(dtype, rows=37, vocab=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(4, vocab, (rows,), generator=g)
    target[::5] = PAD  # padding rows, as in a batch of unequal lengths
    return logits, target


def _fairseq(logits, target, eps):
    lprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    return label_smoothed_nll_loss(lprobs, target, eps, ignore_index=PAD, reduce=True)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_loss_is_fairseqs_bit_for_bit_and_gradient_matches_autograd(eps):
    logits, target = _logits_and_targets(torch.float32)
    loss, nll = LabelSmoothedNLL.apply(logits, target, eps, PAD)
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_loss, ref_nll = _fairseq(ref_logits, target, eps)
    (ref_grad,) = torch.autograd.grad(2.5 * ref_loss, ref_logits)
    assert torch.equal(loss, ref_loss) and torch.equal(nll, ref_nll)
    assert torch.allclose(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert grad[target.eq(PAD)].abs().max() == 0  # padding rows get no gradient


def test_gradient_matches_a_float64_formula():
    """softmax(z) - (1 - eps - eps_i) onehot(t) - eps_i, row by row, for non-padding rows."""
    eps = 0.1
    logits, target = _logits_and_targets(torch.float32, seed=1)
    loss, _ = LabelSmoothedNLL.apply(logits, target, eps, PAD)
    (grad,) = torch.autograd.grad(loss, logits)
    z = logits.detach().double()
    vocab = z.size(1)
    eps_i = eps / (vocab - 1)
    expected = torch.zeros_like(z)
    for i in range(z.size(0)):
        if target[i] == PAD:
            continue
        p = torch.exp(z[i] - torch.logsumexp(z[i], 0))
        onehot = torch.zeros(vocab, dtype=torch.float64)
        onehot[target[i]] = 1
        expected[i] = p - (1 - eps - eps_i) * onehot - eps_i
    assert torch.allclose(grad.double(), expected, atol=1e-6)


def test_bf16_logits_get_a_bf16_gradient_from_fp32_arithmetic():
    """Under bf16 autocast the projection's logits are bf16: the loss is computed in fp32 from
    them, as fairseq's is, and the gradient is returned in the logits' dtype."""
    logits, target = _logits_and_targets(torch.bfloat16, seed=2)
    loss, _ = LabelSmoothedNLL.apply(logits, target, 0.1, PAD)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref_loss, _ = _fairseq(ref_logits, target, 0.1)
    (ref_grad,) = torch.autograd.grad(ref_loss, ref_logits)
    assert loss.dtype == torch.float32 and torch.equal(loss, ref_loss)
    assert grad.dtype == torch.bfloat16
    assert torch.allclose(grad.float(), ref_grad.float(), rtol=1e-2, atol=1e-3)  # both rounded to bf16


def _criteria(**options):
    task = SimpleNamespace(target_dictionary=dictionary(40))
    options = {"sentence_avg": False, "label_smoothing": 0.1, **options}
    return FusedLabelSmoothedCrossEntropyCriterion(task, **options), LabelSmoothedCrossEntropyCriterion(task, **options)


def _transformer(vocab=40):
    d = dictionary(vocab)
    cfg = TransformerConfig()
    for side in (cfg.encoder, cfg.decoder):
        side.embed_dim, side.ffn_embed_dim, side.layers, side.attention_heads = 16, 32, 1, 2
    cfg.decoder.input_dim = cfg.decoder.output_dim = 16
    return TransformerModel.build_model(cfg, SimpleNamespace(source_dictionary=d, target_dictionary=d))


def _sample(vocab=40, batch=4, length=7):
    g = torch.Generator().manual_seed(3)
    src, tgt = random_tokens(batch, length, vocab, generator=g), random_tokens(batch, length, vocab, generator=g)
    tgt[0, -2:] = PAD
    prev = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], dim=1)
    return {"net_input": {"src_tokens": src, "src_lengths": torch.full((batch,), length), "prev_output_tokens": prev},
            "target": tgt, "ntokens": int(tgt.ne(PAD).sum())}


@pytest.mark.parametrize("model_name", ["resmlp", "transformer"])
@pytest.mark.parametrize("options", [{}, {"ignore_prefix_size": 1, "report_accuracy": True}])
def test_criterion_gives_fairseqs_loss_logging_and_parameter_gradients(model_name, options):
    torch.manual_seed(0)
    model = build_translation_model(vocab=40) if model_name == "resmlp" else _transformer()
    model.train()
    assert plain_log_softmax(model)
    fused, stock = _criteria(**options)
    sample = _sample()
    results = []
    for criterion in (fused, stock):
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        loss, sample_size, logging = criterion(model, sample)
        loss.backward()
        results.append((loss, sample_size, logging, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss, size, log, grads), (ref_loss, ref_size, ref_log, ref_grads) = results
    assert torch.equal(loss, ref_loss) and size == ref_size
    assert log.keys() == ref_log.keys() and all(torch.equal(torch.as_tensor(log[k]), torch.as_tensor(ref_log[k]))
                                                for k in log)
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-6), name


def test_other_normalisations_take_fairseqs_path():
    model = build_translation_model(vocab=40)
    decoder_class = type(model.decoder)
    own = type("OwnNormalisation", (decoder_class,), {"get_normalized_probs": lambda self, *a, **k: None})
    model.decoder.__class__ = own
    assert not plain_log_softmax(model)
    model.decoder.__class__ = decoder_class
    model.decoder.adaptive_softmax = object()
    assert not plain_log_softmax(model)


@pytest.mark.slow
def test_fairseq_train_logs_the_stock_criterions_losses(tiny_data_bin, tmp_path):
    """The same seed through fairseq-train: update 1's loss (before any step) is the stock
    criterion's exactly; after 10 updates the losses differ only by the gradients' rounding."""
    logs = {}
    for name in ("label_smoothed_cross_entropy", "fused_label_smoothed_cross_entropy"):
        args = train_args(tiny_data_bin, tmp_path / name, 10)
        args[args.index("label_smoothed_cross_entropy")] = name
        logs[name] = train_losses(run_cli("fairseq-train", *args).stdout)
    stock, fused = logs["label_smoothed_cross_entropy"], logs["fused_label_smoothed_cross_entropy"]
    assert sorted(stock) == sorted(fused) == list(range(1, 11))
    assert fused[1][:2] == stock[1][:2]  # loss and nll_loss; the gradient norm is rounded differently
    for update in range(2, 11):
        assert abs(float(fused[update][0]) - float(stock[update][0])) < 2e-3, update
