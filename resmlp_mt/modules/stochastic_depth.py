"""Stochastic depth (Huang et al., 2016; DeiT's and ResMLP's ``drop_path``): in training, a
residual branch is dropped for a whole example with probability p, and kept examples are
scaled by 1 / (1 - p).

Our activations are time-first, ``(tokens, batch, channels)``, so the example is dimension
1. (timm's ``DropPath`` draws along dimension 0, the batch of its batch-first layout: used
here it dropped single tokens across the batch instead of examples.)
"""
from torch import Tensor, nn


class DropPath(nn.Module):
    def __init__(self, p: float, batch_dim: int = 1):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {p}")
        self.p, self.batch_dim = p, batch_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = [1] * x.dim()
        shape[self.batch_dim] = x.size(self.batch_dim)
        keep = x.new_empty(shape).bernoulli_(1.0 - self.p)
        return x * keep.div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_dim={self.batch_dim}"
