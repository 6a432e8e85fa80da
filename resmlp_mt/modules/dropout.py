"""Dropout with a cheaper random mask on the CPU.

torch draws a CPU dropout mask with ``bernoulli_``: one Mersenne-Twister draw turned into a
float and compared, per element, then a division pass and a product. On this project's CPU
that is most of what dropout costs, and dropout on every residual branch was 14% of a
bf16 training step at the demo's size (``bench/profile_mt.py``). Here one 64-bit draw gives
four 16-bit numbers, an element is kept when its number is at least ``p * 2**16``, and the
mask is made in the input's dtype already scaled: one draw per four elements, one compare,
one product. ``bench/mt_train.py --torch-dropout`` times training steps with either mask:
1.07x (fp32) and 1.10x (bf16) at the demo's size, 1.04x and 1.09x at the WMT size.

The price is that ``p`` is rounded to a multiple of ``2**-16`` (at most 7.7e-6 away); kept
elements are scaled by ``1 / (1 - p')`` of that rounded ``p'``, so the expectation is exact.
The draws come from torch's default generator, so ``torch.manual_seed`` and fairseq's
seeding and checkpointed RNG state govern them as they do ``F.dropout``. Other devices
use ``F.dropout`` (fused on CUDA).
"""
import torch
import torch.nn.functional as F
from fairseq.modules import FairseqDropout
from torch import Tensor

_LEVELS = 1 << 16


def rounded_p(p: float) -> float:
    """The dropout probability the CPU mask applies for ``p``: ``p`` to the nearest ``2**-16``."""
    return round(p * _LEVELS) / _LEVELS


def keep_mask(like: Tensor, p: float) -> Tensor:
    """``like``'s shape and dtype: ``1 / (1 - p')`` where an element is kept, else 0, with
    ``p' = rounded_p(p)``. Needs ``0 <= p' < 1``."""
    n = like.numel()
    # random_ with no bounds would leave the top bit of each word 0 (non-negative int64), so
    # one 16-bit lane in four would never fall below zero: draw the full signed range
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(1 << 63), None)
    lanes = words.view(torch.int16)[:n].view(like.shape)  # uniform on [-2**15, 2**15)
    dropped = round(p * _LEVELS)
    scale = like.new_full((), _LEVELS / (_LEVELS - dropped))
    return torch.where(lanes >= dropped - _LEVELS // 2, scale, like.new_zeros(()))


def dropout(x: Tensor, p: float, training: bool = True, inplace: bool = False) -> Tensor:
    """``F.dropout``, with :func:`keep_mask` on the CPU for floating-point inputs."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_floating_point() or not 0.0 < rounded_p(p) < 1.0:
        return F.dropout(x, p, True, inplace)
    mask = keep_mask(x, p)
    return x.mul_(mask) if inplace else x * mask


class Dropout(FairseqDropout):
    """fairseq's ``FairseqDropout`` (``--retain-dropout`` and its module names work as they
    do there) with :func:`dropout`'s cheaper CPU mask; also the blocks' ``nn.Dropout``."""

    def forward(self, x: Tensor, inplace: bool = False) -> Tensor:
        return dropout(x, self.p, self.training or self.apply_during_inference, inplace)

    def extra_repr(self) -> str:
        return f"p={self.p}"
