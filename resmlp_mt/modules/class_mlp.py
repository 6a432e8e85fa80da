"""Class-MLP: the ResMLP paper's alternative to average pooling (Touvron et al., 2021, Sec. 3).

From the papers. CaiT (Touvron et al., 2021, "Going deeper with image transformers",
Sec. 3) ends with a class-attention stage: a class token and 2 layers that update only
that token, each ``cls += LayerScale(ClassAttention(Norm([cls, patches])))`` then
``cls += LayerScale(MLP(Norm(cls)))``, the patches frozen; a final norm and the classifier
read the class token. ResMLP's class-MLP is that stage with the attention replaced by
linear layers; the official code does not include it, and the paper gives ResMLP-12
(distilled, class-MLP) as 17.7M parameters and 78.6% top-1.

What we chose, to meet that count. The linear layer in place of attention is ResMLP's own
token mixing restricted to the class token's row: ``cls_new = sum_j w[j] * Aff(z_j) + b`` over
``z = [cls, patches]``, one scalar per token (N + 2 parameters), shared by all channels as the
trunk's matrix A is, and no value or output projection (A has none either). A channel
linear d x d per layer (147,840 parameters with its bias, x 2) would give 18.0M, and a
per-channel aggregation (d (N + 1) per layer) 17.9M; only this one rounds to 17.7M. The rest
is CaiT's: Aff and LayerScale on both branches, the MLP d -> 4d -> d (GELU), 2 layers, a
learned class token, no stochastic depth in the stage (CaiT's class-attention blocks have
none), LayerScale initialised as the trunk's. The trunk's final Aff stays as CaiT's final
norm, on the class token after the stage (for the count the place makes no difference).
Parameters for ResMLP-S12 (d = 384, N = 196, 1000 classes)::

    per layer: Aff 2d + token weights (N + 1) + bias 1 + LayerScale d
               + Aff 2d + MLP (d 4d + 4d + 4d d + d) + LayerScale d
             = 768 + 197 + 1 + 384 + 768 + 1,181,568 + 384 = 1,184,070
    stage:     class token d + 2 layers = 384 + 2,368,140 = 2,368,524
    model:     S12's 15,350,872 + 2,368,524 = 17,719,396 -> 17.7M

The token weights start at 1 / (N + 1) plus trunc-normal noise (std 0.02): what class
attention computes at initialisation, an average of the tokens, and what the pooling it
replaces computes.
"""
import torch
from torch import Tensor, nn

from .affine import Affine
from .layer_scale import LayerScale
from .mlp import Mlp


class ClassMLPLayer(nn.Module):
    """One layer: the class token reads ``[cls, patches]`` through a learned weighted sum, then
    an MLP on the class token alone; both branches Aff-normed and LayerScaled, as in CaiT."""

    def __init__(self, dim: int, num_patches: int, hidden_dim: int, layerscale_init: float):
        super().__init__()
        self.norm1 = Affine(dim)
        self.token_weight = nn.Parameter(torch.empty(num_patches + 1))  # [cls, patch 0, ..., patch N-1]
        self.token_bias = nn.Parameter(torch.zeros(1))
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = Affine(dim)
        self.mlp = Mlp(dim, hidden_dim)
        self.ls2 = LayerScale(dim, layerscale_init)
        nn.init.trunc_normal_(self.token_weight, std=0.02)
        with torch.no_grad():
            self.token_weight.add_(1.0 / (num_patches + 1))

    def forward(self, cls: Tensor, patches: Tensor) -> Tensor:
        """cls ``(B, d)``, patches ``(N, B, d)`` time-first -> the new class token ``(B, d)``.

        Aff is per channel, so ``sum_j w_j Aff(z_j) = alpha * sum_j w_j z_j + beta * sum_j w_j``:
        one GEMM over the raw patches, without normalising or concatenating N x B x d values."""
        n, batch, dim = patches.shape
        w = self.token_weight
        summed = torch.mm(w[None, 1:], patches.reshape(n, batch * dim)).view(batch, dim) + w[0] * cls
        mixed = self.norm1.alpha * summed + (self.norm1.beta * w.sum() + self.token_bias)
        cls = cls + self.ls1(mixed)
        return cls + self.ls2(self.mlp(self.norm2(cls)))


class ClassMLP(nn.Module):
    """The aggregation stage: a learned class token updated by ``depth`` class-MLP layers from
    the trunk's patches, which it leaves as they are; returns the class token ``(B, d)``."""

    def __init__(self, dim: int, num_patches: int, depth: int = 2, hidden_dim=None, layerscale_init: float = 0.1):
        super().__init__()
        self.cls_token = nn.Parameter(torch.empty(dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)  # as CaiT's
        self.layers = nn.ModuleList(
            ClassMLPLayer(dim, num_patches, hidden_dim or 4 * dim, layerscale_init) for _ in range(depth)
        )

    def forward(self, patches: Tensor) -> Tensor:
        cls = self.cls_token.expand(patches.size(1), -1)
        for layer in self.layers:
            cls = layer(cls, patches)
        return cls
