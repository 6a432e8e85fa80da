"""The channel MLP of a ResMLP block: ``fc1 -> GELU -> dropout -> fc2 -> dropout``
(``dropout.Dropout``: torch's, with a cheaper mask on the CPU).

Written here rather than taken from ``timm.layers.Mlp``: importing any part of timm imports
all of it (torchvision and torch._dynamo, about 4 s of CPU in every process), which a
translation run never needs. The submodule names and order are timm's, so the state dict
keys (``fc1``, ``fc2``) are those of timm's ResMLP and the official one, and one seed gives
the same initial weights (``tests/test_import_cost.py`` compares them).
"""
from typing import Tuple, Union

from torch import Tensor, nn

from .dropout import Dropout


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: Union[float, Tuple[float, float]] = 0.0):
        super().__init__()
        hidden_drop, out_drop = drop if isinstance(drop, tuple) else (drop, drop)
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = Dropout(hidden_drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = Dropout(out_drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
