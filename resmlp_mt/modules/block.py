"""The ResMLP residual block, shared by the translation and the image models."""
from typing import Optional, Tuple, Union

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

from . import folding
from .affine import make_norm
from .dropout import Dropout
from .layer_scale import LayerScale
from .mlp import Mlp
from .relative_token_mixing import RelativeTokenMixing
from .stochastic_depth import DropPath
from .token_mixing import IncrementalState, TokenMixing


def make_token_mixing(num_tokens: Optional[int], mode: str, init: str = "normal",
                      window: Optional[int] = None) -> nn.Module:
    """The paper's absolute matrix over ``num_tokens`` positions, or with a ``window``, mixing
    by offset (:class:`RelativeTokenMixing`: any length; ``causal`` stays causal, the other
    modes become two-sided)."""
    if window is None:
        return TokenMixing(num_tokens, mode, init=init)
    if mode not in TokenMixing.MODES:
        raise ValueError(f"unknown token-mixing mode {mode!r}: expected one of {TokenMixing.MODES}")
    return RelativeTokenMixing(window, causal=mode == "causal", init=init)


@with_incremental_state
class ResMLPBlock(nn.Module):
    """norm -> token mixing -> LayerScale -> residual; norm -> MLP -> LayerScale -> residual.

    A translation decoder passes a ``cross_attention`` module (fairseq's
    MultiheadAttention); it becomes a third pre-norm residual branch between the
    two, as in a Vaswani decoder layer whose self-attention is replaced by causal
    token mixing. Inputs are time-first ``(L, B, C)``.

    The parameters are the paper's (and timm's: ``norm1``, ``token_mixing``, ``ls1``,
    ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2``), but ``forward``'s arithmetic is folded
    (``folding.py``: LayerScale and Aff into small weights, residuals added by the GEMMs,
    ``gelu(h)`` recomputed in the backward pass): the same to float rounding as
    ``plain_forward``, the paper's sequence of modules (``tests/test_block_fusion.py``
    checks outputs and gradients), with two to three fewer activation-sized passes and 5
    to 6 fewer activations of width d kept per token per block for training.
    """

    def __init__(
        self,
        dim: int,
        num_tokens: Optional[int],
        *,
        mixing: str = "full",
        mixing_init: str = "normal",
        mixing_window: Optional[int] = None,
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
        self.token_mixing = make_token_mixing(num_tokens, mixing, mixing_init, mixing_window)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.cross_attention = cross_attention
        if cross_attention is not None:
            self.norm_cross = make_norm(norm, dim)
            self.ls_cross = LayerScale(dim, layerscale_init)
        self.norm2 = make_norm(norm, dim)
        self.mlp = Mlp(dim, hidden_dim or 4 * dim, drop=(activation_dropout, 0.0))
        self.ls2 = LayerScale(dim, layerscale_init)
        self.dropout = Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _residual(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + self.drop_path(self.dropout(branch))

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        encoder_out: Optional[Tensor] = None,
        encoder_padding_mask: Optional[Tensor] = None,
        need_head_weights: bool = False,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """The block's output ``(L, B, C)``; with ``need_head_weights`` (a decoder block),
        also its cross-attention weights per head, ``(heads, B, L, source length)``, as
        fairseq's decoder layers return them for alignments (``need_head_weights``). Without
        it, cross-attention runs as before: no weights, torch's fused attention in a full pass."""
        # Without dropout or stochastic depth on the branches (evaluation, or none
        # configured), the residual joins each branch's last GEMM, which adds into it
        # (not under autocast, which leaves in-place GEMMs in their input dtypes).
        fused = not self.training or (self.dropout.p == 0 and isinstance(self.drop_path, nn.Identity))
        fused = fused and not torch.is_autocast_enabled(x.device.type)
        gamma = self.ls1.gamma
        n = folding.scaled_norm(self.norm1, x, gamma)
        if fused:
            x = self.token_mixing(n, padding_mask, incremental_state, bias_scale=gamma, residual=x)
        else:
            x = self._residual(x, self.token_mixing(n, padding_mask, incremental_state, bias_scale=gamma))
        weights = None
        if self.cross_attention is not None:
            attended, weights = self.cross_attention(
                query=self.norm_cross(x),
                key=encoder_out,
                value=encoder_out,
                key_padding_mask=encoder_padding_mask,
                incremental_state=incremental_state,
                # cache K and V; else torch's fused attention, which returns no per-head weights
                static_kv=incremental_state is not None or need_head_weights,
                need_weights=need_head_weights,
                need_head_weights=need_head_weights,
            )
            x = self._residual(x, self.ls_cross(attended))
        if fused:
            x = self.mlp_branch(x, residual=x, incremental_state=incremental_state)
        else:
            x = self._residual(x, self.mlp_branch(x, incremental_state=incremental_state))
        if need_head_weights:
            if weights is None:
                raise ValueError("need_head_weights: this block has no cross-attention")
            return x, weights
        return x

    def plain_forward(self, x: Tensor, padding_mask: Optional[Tensor] = None, encoder_out: Optional[Tensor] = None,
                      encoder_padding_mask: Optional[Tensor] = None) -> Tensor:
        """The block as the paper writes it, one sub-module after the other, nothing folded
        (a full pass: no incremental state). ``forward`` must equal it to float rounding,
        outputs and gradients alike (``tests/test_block_fusion.py``); it is the readable
        definition, and ``forward`` the fast one."""
        x = x + self.drop_path(self.dropout(self.ls1(self.token_mixing(self.norm1(x), padding_mask))))
        if self.cross_attention is not None:
            attended, _ = self.cross_attention(self.norm_cross(x), encoder_out, encoder_out,
                                               key_padding_mask=encoder_padding_mask, static_kv=True)
            x = x + self.drop_path(self.dropout(self.ls_cross(attended)))
        return x + self.drop_path(self.dropout(self.ls2(self.mlp(self.norm2(x)))))

    def mlp_branch(self, x: Tensor, residual: Optional[Tensor] = None,
                   incremental_state: Optional[IncrementalState] = None) -> Tensor:
        """``residual + ls2(mlp(norm2(x)))`` (no residual: the branch alone): folded where the
        fold pays for itself (``folding.mlp_fold_pays``) and in decoding steps, which reuse
        their decoding's fold; otherwise, and for quantized layers (``folding.foldable``), the
        modules as they are."""
        if (incremental_state is None and not folding.mlp_fold_pays(x, self.mlp.fc1)) or not folding.foldable(
                self.mlp.fc1, self.mlp.fc2):
            out = self.mlp(self.norm2(x))
            return self.ls2(out) if residual is None else torch.addcmul(residual, self.ls2.gamma, out)
        dropout = self.mlp.drop1 if self.training and self.mlp.drop1.p > 0 else None
        return folding.folded_mlp(x, self.norm2, self._folded_mlp(incremental_state), residual, dropout)

    def _folded_mlp(self, incremental_state: Optional[IncrementalState] = None):
        """``folding.fold_mlp`` of this block's weights.

        Folding costs d x hidden multiply-adds, as much as the MLP itself on one token, so a
        decoding (an ``incremental_state`` without autograd) folds at its first step and
        keeps the result in its state for the rest; other passes fold each time. Nothing
        outlives the decoding: a cache on the module would have to notice every weight
        update, and fairseq's optimizers write through ``.data``, which no version counter sees."""
        decoding = incremental_state is not None and not torch.is_grad_enabled()
        if decoding:
            cached = self.get_incremental_state(incremental_state, "folded_mlp")
            if cached is not None:
                return cached["w1"], cached["b1"], cached["w2"], cached["b2"]
        w1, b1, w2, b2 = folding.fold_mlp(self.norm2, self.mlp.fc1, self.mlp.fc2, self.ls2.gamma)
        if decoding:
            self.set_incremental_state(incremental_state, "folded_mlp", {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
        return w1, b1, w2, b2
