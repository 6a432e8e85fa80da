"""The ResMLP block's arithmetic, folded: the paper's block (``ResMLPBlock.plain_forward``)
to float rounding, with fewer activation-sized passes and fewer activations kept for the
backward pass. The block is

    x = x + gamma1 * (A norm1(x) + b)                  (A mixes positions, b per position)
    x = x + gamma2 * fc2(gelu(fc1(norm2(x))))

with gamma1, gamma2 LayerScale's per-channel gains (a decoder's cross-attention branch
between the two is not folded). The folds:

* Before token mixing. A mixes positions and gamma scales channels, so they commute:
  ``gamma * (A n + b) = A (gamma * n) + b gamma^T``. gamma folds into the norm's own
  per-channel affine (:func:`scaled_norm`), and the mixing scales its bias by gamma (its
  ``bias_scale``): a positions x channels product instead of a pass over the activations.
* Around the MLP (:func:`fold_mlp`). An Aff before fc1 folds into it,
  ``fc1(alpha * x + beta) = x (W1 diag(alpha))^T + (b1 + W1 beta)``, and gamma after fc2
  into fc2, ``gamma * fc2(g) = g (diag(gamma) W2)^T + gamma * b2``. A LayerNorm does not
  fold (it normalises each token) and runs before fc1.
* Residuals. Without dropout on a branch, its last GEMM accumulates into ``residual + bias``
  (:func:`addmm_into`, where the op is one GEMM) instead of a later pass adding the
  residual: the ``residual`` argument of token mixing's forward and of :func:`gelu_linear`.
* GELU. :func:`gelu_linear` keeps ``h`` for the backward pass and recomputes ``gelu(h)``
  there, rather than keeping both.

Token mixing's keyword-only ``bias_scale`` and ``residual`` are this fold's entry points
into the mixing modules; everything else here takes plain tensors and modules.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .affine import Affine


def scaled_norm(norm: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
    """``norm(x) * scale`` (a per-channel scale, e.g. LayerScale's gamma) in one op: the
    scale folds into Aff's alpha and beta, or into LayerNorm's weight and bias."""
    if isinstance(norm, Affine):
        return torch.addcmul(norm.beta * scale, norm.alpha * scale, x)
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, norm.weight * scale, norm.bias * scale, norm.eps)
    return norm(x) * scale


def mlp_fold_pays(x: Tensor, fc1: nn.Linear) -> bool:
    """Folding writes two weight-sized tensors (d x hidden each); scaling the activations
    instead costs token-sized passes. So it pays from as many tokens as hidden units (not for
    an image at batch 1)."""
    return x.numel() >= x.size(-1) * fc1.out_features


def foldable(*linears: nn.Module) -> bool:
    """Whether these are plain ``nn.Linear`` layers with plain weights, which the folds read
    and combine. A quantized layer (``resmlp_mt.precision``: int8 weights in a tensor subclass)
    is not: it is called as the module it is, and its own kernel runs."""
    return all(type(m) is nn.Linear and type(m.weight.data) is Tensor for m in linears)


def fold_mlp(norm: nn.Module, fc1: nn.Linear, fc2: nn.Linear,
             gamma: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(w1, b1, w2, b2)``: fc1 with an Aff ``norm`` folded in (a LayerNorm is not, and
    :func:`folded_mlp` runs it before ``w1``), fc2 with LayerScale's ``gamma`` folded in."""
    w1, b1 = fc1.weight, fc1.bias
    if isinstance(norm, Affine):
        w1, b1 = w1 * norm.alpha, torch.addmv(b1, w1, norm.beta)
    return w1, b1, fc2.weight * gamma[:, None], fc2.bias * gamma


def folded_mlp(x: Tensor, norm: nn.Module, folded: Tuple[Tensor, Tensor, Tensor, Tensor],
               residual: Optional[Tensor] = None, dropout: Optional[nn.Module] = None) -> Tensor:
    """``residual + gamma * fc2(dropout(gelu(fc1(norm(x)))))`` from :func:`fold_mlp`'s weights
    (no residual: the branch alone). ``dropout`` (between GELU and fc2) needs ``gelu(h)`` kept."""
    w1, b1, w2, b2 = folded
    h = F.linear(x if isinstance(norm, Affine) else norm(x), w1, b1)
    if dropout is not None:
        out = F.linear(dropout(F.gelu(h)), w2, b2)
        return out if residual is None else residual + out
    return gelu_linear(h, w2, b2, residual)


def addmm_into(acc: Tensor, mat1: Tensor, mat2: Tensor) -> Tensor:
    """``acc + mat1 @ mat2``, accumulated by the GEMM into ``acc`` (a fresh tensor the caller
    owns, e.g. ``residual + bias``), viewed as ``(mat1.size(0), mat2.size(1))``; the result
    has ``acc``'s shape."""
    out = acc.contiguous()
    return out.view(mat1.size(0), mat2.size(1)).addmm_(mat1, mat2).view(out.shape)


def _linear(g: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """``residual + g W^T + b``, the residual accumulated by the GEMM itself (no extra pass)."""
    if residual is None:
        return F.linear(g, weight, bias)
    acc = residual + bias if bias is not None else residual.clone()
    return addmm_into(acc, g.reshape(-1, g.size(-1)), weight.t())


class _GeluLinear(torch.autograd.Function):
    """The MLP's second half. Autograd would keep both ``h`` (for GELU's gradient) and
    ``gelu(h)`` (for the linear's): two activations of the MLP's hidden size, the
    largest in a block. Recomputing ``gelu(h)`` in the backward pass costs one
    element-wise pass and saves one of them, 4·d floats per token with the paper's
    MLP ratio."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return _linear(F.gelu(h), weight, bias, residual)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        h, weight = ctx.saved_tensors
        grad_h = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_out.matmul(weight), h)
        grad_rows = grad_out.reshape(-1, grad_out.size(-1))
        if ctx.needs_input_grad[1]:
            grad_weight = grad_rows.t().mm(F.gelu(h).reshape(-1, h.size(-1)))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_h, grad_weight, grad_bias, grad_out if ctx.needs_input_grad[3] else None


def gelu_linear(h: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None) -> Tensor:
    """``residual + F.linear(F.gelu(h), weight, bias)`` (no residual: just the linear).
    With autograd on, ``gelu(h)`` is not kept; without, it is computed in place."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, weight, bias, residual)):
        if torch.is_autocast_enabled(h.device.type):  # mixed dtypes: let autograd and autocast pair them
            return _linear(F.gelu(h), weight, bias, residual)
        return _GeluLinear.apply(h, weight, bias, residual)
    return _linear(torch.ops.aten.gelu_(h) if not h.requires_grad else F.gelu(h), weight, bias, residual)
