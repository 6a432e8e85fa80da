"""timm's ``Mlp`` and ``DropPath`` (``timm.layers``), as much of them as the blocks use.

Copied rather than imported: importing any part of timm imports all of it, torchvision and
torch._dynamo included (about 4 s of CPU in every process that builds a model), and a
translation run needs nothing else from it. Same submodules in the same order (so the
same state dict keys and, under one seed, the same initial weights), same arithmetic;
``tests/test_import_cost.py`` compares them with timm's.
"""
from typing import Optional, Tuple, Union

from torch import Tensor, nn


class Mlp(nn.Module):
    """``fc1 -> act -> drop1 -> norm -> fc2 -> drop2``: timm's ``Mlp`` without a norm layer
    (``norm`` is an identity, as there) and with linear layers only."""

    def __init__(self, in_features: int, hidden_features: Optional[int] = None, out_features: Optional[int] = None,
                 act_layer=nn.GELU, drop: Union[float, Tuple[float, float]] = 0.0):
        super().__init__()
        drop1, drop2 = drop if isinstance(drop, tuple) else (drop, drop)
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop1)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop2)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class DropPath(nn.Module):
    """Stochastic depth as timm's ``DropPath``: in training, zeroes the whole of ``x[i]`` with
    probability ``drop_prob`` for each index ``i`` of the first dimension, and scales the
    rest by ``1 / (1 - drop_prob)``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"
