"""The ResMLP residual block, shared by the translation and the image models."""
from typing import Optional

from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from .affine import make_norm
from .layer_scale import LayerScale
from .token_mixing import IncrementalState, TokenMixing


class ResMLPBlock(nn.Module):
    """norm -> token mixing -> LayerScale -> residual; norm -> MLP -> LayerScale -> residual.

    A translation decoder passes a ``cross_attention`` module (fairseq's
    MultiheadAttention); it becomes a third pre-norm residual branch between the
    two, as in a Vaswani decoder layer whose self-attention is replaced by causal
    token mixing. Inputs are time-first ``(L, B, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        *,
        mixing: str = "full",
        mixing_init: str = "normal",
        hidden_dim: Optional[int] = None,
        norm: str = "affine",
        layerscale_init: float = 0.1,
        dropout: float = 0.0,
        activation_dropout: float = 0.0,
        drop_path: float = 0.0,
        cross_attention: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.token_mixing = TokenMixing(num_tokens, mixing, init=mixing_init)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.cross_attention = cross_attention
        if cross_attention is not None:
            self.norm_cross = make_norm(norm, dim)
            self.ls_cross = LayerScale(dim, layerscale_init)
        self.norm2 = make_norm(norm, dim)
        self.mlp = Mlp(dim, hidden_dim or 4 * dim, act_layer=nn.GELU, drop=(activation_dropout, 0.0))
        self.ls2 = LayerScale(dim, layerscale_init)
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, x: Tensor, branch: Tensor, layer_scale: LayerScale) -> Tensor:
        return x + self.drop_path(self.dropout(layer_scale(branch)))

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
    ) -> Tensor:
        x = self._residual(x, self.token_mixing(self.norm1(x), padding_mask, incremental_state), self.ls1)
        if self.cross_attention is not None:
            attended, _ = self.cross_attention(
                query=self.norm_cross(x),
                key=encoder_out,
                value=encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                static_kv=True,
                need_weights=False,
            )
            x = self._residual(x, attended, self.ls_cross)
        return self._residual(x, self.mlp(self.norm2(x)), self.ls2)
