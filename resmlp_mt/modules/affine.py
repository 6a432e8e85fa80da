"""Aff: the per-channel affine map that ResMLP uses instead of LayerNorm."""
import torch
from torch import nn


class Affine(nn.Module):
    """``alpha * x + beta`` over the last (channel) dimension.

    It normalises nothing: ResMLP (Touvron et al., 2021, Sec. 2) shows that with
    LayerScale a plain rescaling is enough, and unlike LayerNorm it costs no
    reduction and can be folded into the next linear layer (``folding.py``).
    Identity at initialisation (alpha = 1, beta = 0).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, self.alpha, x)

    def extra_repr(self) -> str:
        return f"{self.alpha.numel()}"


def make_norm(kind: str, dim: int) -> nn.Module:
    """The block's normalisation: ``affine`` (the paper's Aff) or ``layernorm``."""
    if kind == "affine":
        return Affine(dim)
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    raise ValueError(f"unknown norm {kind!r}: expected 'affine' or 'layernorm'")

