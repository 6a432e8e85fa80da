"""fairseq's label-smoothed cross entropy with a gradient written out, for CPU training.

``--criterion fused_label_smoothed_cross_entropy`` takes fairseq's
``label_smoothed_cross_entropy`` options and gives its losses, logging and accuracy; only
the way the gradient of the logits is computed differs. Why: at the demo's size a batch
has ~1,000 target tokens x an 8k vocabulary, and autograd's path through fairseq's loss
(a zero-filled scatter for the gathered term, an expanded sum, their addition, then
``log_softmax``'s backward) makes four or five fresh vocabulary-sized tensors and runs
torch's slow CPU ``log_softmax`` backward kernel. That took ~15% of a bf16 training step
here (README, "bf16 training on the CPU"). The gradient has a closed form:

    loss_i = (1 - eps - eps_i) * nll_i + eps_i * smooth_i,  eps_i = eps / (V - 1)
    d loss_i / d z_i = softmax(z_i) - (1 - eps - eps_i) * onehot(t_i) - eps_i

(the weights on the probabilities sum to (1 - eps - eps_i) + V * eps_i = 1), and zero for
padding. The backward pass turns the saved log-probabilities into it in place.

The forward pass runs the same operations as fairseq's (``log_softmax`` in fp32, gather,
sum, padding masked), so the losses are fairseq's bit for bit. Models whose
normalised output is not the log-softmax of ``net_output[0]`` (an adaptive softmax, a
decoder with its own ``get_normalized_probs``), and unreduced losses, take fairseq's path.
"""
from typing import Tuple

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.models import FairseqDecoder
from torch import Tensor
from torch.autograd.function import once_differentiable


class LabelSmoothedNLL(torch.autograd.Function):
    """(loss, nll_loss), summed over the non-padding rows of ``logits`` (N x V, any float
    dtype); the gradient flows to the logits through ``loss`` only, as fairseq logs
    ``nll_loss`` without differentiating it."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float, padding_idx: int) -> Tuple[Tensor, Tensor]:
        lprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # as fairseq's utils.log_softmax
        target = target.unsqueeze(-1)
        pad = target.eq(padding_idx)
        nll_loss = (-lprobs.gather(dim=-1, index=target)).masked_fill_(pad, 0.0).sum()
        smooth_loss = (-lprobs.sum(dim=-1, keepdim=True)).masked_fill_(pad, 0.0).sum()
        eps_i = epsilon / (lprobs.size(-1) - 1)
        loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
        ctx.save_for_backward(lprobs, target, pad)
        ctx.weights = (1.0 - epsilon - eps_i, eps_i)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(nll_loss)
        return loss, nll_loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):
        lprobs, target, pad = ctx.saved_tensors
        on_target, eps_i = ctx.weights
        grad = lprobs.exp_()  # the softmax, in the saved tensor's memory
        grad.scatter_add_(-1, target, grad.new_full(target.shape, -on_target))
        row_scale = (~pad).to(grad.dtype).mul_(grad_loss)  # zero for padding
        grad.sub_(eps_i).mul_(row_scale)
        return grad.to(ctx.logits_dtype), None, None, None


@register_criterion("fused_label_smoothed_cross_entropy", dataclass=LabelSmoothedCrossEntropyCriterionConfig)
class FusedLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's ``label_smoothed_cross_entropy`` with :class:`LabelSmoothedNLL`'s gradient."""

    def compute_loss(self, model, net_output, sample, reduce=True):
        if not reduce or not plain_log_softmax(model):
            return super().compute_loss(model, net_output, sample, reduce=reduce)
        logits, target = net_output[0], model.get_targets(sample, net_output)
        if self.ignore_prefix_size > 0:
            logits, target = logits[:, self.ignore_prefix_size:, :], target[:, self.ignore_prefix_size:]
        return LabelSmoothedNLL.apply(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                      self.eps, self.padding_idx)


def plain_log_softmax(model) -> bool:
    """Is ``model.get_normalized_probs(net_output, log_probs=True)`` fairseq's
    ``log_softmax(net_output[0], dtype=float32)``? True for encoder-decoder models that keep
    fairseq's ``get_normalized_probs`` and have no adaptive softmax (ours, fairseq's Transformer)."""
    from fairseq.models import BaseFairseqModel
    from fairseq.models.transformer import TransformerModelBase

    decoder = getattr(model, "decoder", None)
    if not isinstance(decoder, FairseqDecoder) or getattr(decoder, "adaptive_softmax", None) is not None:
        return False
    delegating = (BaseFairseqModel.get_normalized_probs, TransformerModelBase.get_normalized_probs)  # to the next
    return (type(model).get_normalized_probs in delegating
            and type(model).get_normalized_probs_scriptable is BaseFairseqModel.get_normalized_probs_scriptable
            and type(decoder).get_normalized_probs is FairseqDecoder.get_normalized_probs
            and type(decoder).get_normalized_probs_scriptable is FairseqDecoder.get_normalized_probs_scriptable)
