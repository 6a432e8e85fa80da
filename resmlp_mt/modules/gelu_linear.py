"""``residual + linear(gelu(h))`` that keeps only ``h`` for the backward pass."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _linear(g: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor]) -> Tensor:
    """``residual + g W^T + b``, the residual accumulated by the GEMM itself (no extra pass)."""
    if residual is None:
        return F.linear(g, weight, bias)
    out = (residual + bias if bias is not None else residual.clone()).contiguous()
    return out.view(-1, out.size(-1)).addmm_(g.reshape(-1, g.size(-1)), weight.t()).view(out.shape)


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
