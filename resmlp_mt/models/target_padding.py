"""Left-padded decoder inputs (``--left-pad-target``) for causal token mixing.

Row i of a causal token-mixing matrix is target position i, so a sentence must start
in column 0. fairseq right-pads targets by default, but ``--left-pad-target`` pads
them on the left: the decoder then mixed padding into every real position, shifted
by a different amount in each row, and the loss depended on the batch (and the
flag) without an error. The decoder moves such rows to the left, as the encoder
does for sources, and puts its outputs back in the columns of the (left-padded)
targets the criterion compares them with.
"""
from typing import Callable, Tuple

import torch
from torch import Tensor


def _unchanged(features: Tensor) -> Tensor:
    return features


def moved_to_the_left(tokens: Tensor, pad: int, incremental: bool = False) -> Tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``(tokens, restore)``: each row's padding moved to its end, and the function that
    moves per-position outputs ``(B, T, ...)`` back to the rows' original columns.

    Decoder inputs start with EOS, so a row is left-padded exactly when its first column
    is padding. Incremental decoding (beam search) never pads its prefix: nothing moves.
    """
    first_is_pad = tokens[:, :1].eq(pad) if tokens.numel() else None
    if incremental or first_is_pad is None or not first_is_pad.any():
        return tokens, _unchanged
    # every pad of a left-padded row leads it; a row that starts with a token stays as it is
    pads = tokens.eq(pad).sum(dim=1, keepdim=True) * first_is_pad
    columns = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
    length = tokens.size(1)
    moved = tokens.gather(1, torch.remainder(columns + pads, length))
    back = torch.remainder(columns - pads, length)

    def restore(features: Tensor) -> Tensor:
        index = back.view(*back.shape, *([1] * (features.dim() - 2))).expand_as(features)
        return features.gather(1, index)

    return moved, restore

