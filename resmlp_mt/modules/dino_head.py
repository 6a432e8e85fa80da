"""DINO's projection head (Caron et al., 2021, "Emerging properties in self-supervised
vision transformers", Sec. 3.1 and Appendix): an MLP to a bottleneck, L2 normalisation,
then a weight-normalised linear layer to ``out_dim`` prototypes.

Why each part: the MLP keeps the trunk's features free of what only the self-distillation
loss needs; the L2 normalisation and the weight-normalised last layer keep the logits
bounded, so that the teacher's sharpening (a low temperature) sets how peaked its output
is, and not the scale of the weights. With ``norm_last_layer`` the weight norm's gain is
fixed at 1 (DINO's default, which "makes the training more stable"): each prototype is
then a unit vector and a logit is a cosine similarity.
"""
from torch import Tensor, nn
from torch.nn.functional import normalize
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the DINO head needs at least 1 layer, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0  # (out_dim, 1): the norm of each prototype
        gain.data.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, features: Tensor) -> Tensor:
        return self.last_layer(normalize(self.mlp(features), dim=-1))
