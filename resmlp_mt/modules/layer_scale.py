"""LayerScale: a learned per-channel gain on each residual branch."""
import torch
from torch import nn


class LayerScale(nn.Module):
    """``gamma * x`` with gamma initialised to a small constant.

    Starting each residual branch near zero lets deep ResMLPs train without
    warm-up tricks (CaiT, Touvron et al., 2021); the paper uses 0.1 / 1e-5 /
    1e-6 for S12 / S24 / S36 and 0.2 for translation.
    """

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
