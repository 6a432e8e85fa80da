"""Token mixing by offset: a window of relative weights and a mean of everything farther.

The paper's matrix A gives every (output, input) pair of positions its own weight, so its
size fixes the longest sentence, and rows past the longest training sentence are never
trained. Here the weight of input j in output i depends only on the offset ``i - j``:

    out[i] =   sum_{|i-j| <= K} w[i - j] * x[j]               (the window)
             + w_left  * mean_{j < i-K}       x[j]             (everything farther back)
             + w_right * mean_{i+K < j < n}   x[j]             (two-sided only: farther ahead)
             + b

The far terms are means, so their size does not grow with the sentence, and no parameter
depends on a length: the layer runs at any length. ``n`` is each sentence's own length,
so padded positions enter neither the window nor the means. The causal form (the decoder)
has offsets 0..K and no right term; a decoding step then needs only the last K inputs and
the running sum of the older ones: O(K * B * C) whatever the position.
"""
from typing import Dict, Optional

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

from .token_mixing import IncrementalState, Mixing


@with_incremental_state
class RelativeTokenMixing(Mixing):
    """Same call as :class:`TokenMixing` (time-first ``(L, B, C)``, right-padded), any length."""

    INITS = ("normal", "mean")

    def __init__(self, window: int, causal: bool = False, init: str = "normal", init_std: float = 0.02):
        super().__init__()
        if window < 0:
            raise ValueError(f"--mixing-window must be >= 0, got {window}")
        if init not in self.INITS:
            raise ValueError(f"unknown token-mixing init {init!r}: expected one of {self.INITS}")
        self.window = window
        self.causal = causal
        self.lowest_offset = 0 if causal else -window  # weight[k] is offset i - j = k + lowest_offset
        self.weight = nn.Parameter(torch.empty(window + 1 - self.lowest_offset))
        self.far_weight = nn.Parameter(torch.empty(1 if causal else 2))  # [left] or [left, right]
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.trunc_normal_(self.weight, std=init_std)
        nn.init.trunc_normal_(self.far_weight, std=init_std)
        if init == "mean":  # what attention does at initialisation: an average of what it sees
            with torch.no_grad():
                slots = self.weight.numel() + self.far_weight.numel()
                self.weight.add_(1.0 / slots)
                self.far_weight.add_(1.0 / slots)

    def extra_repr(self) -> str:
        return f"window={self.window}, causal={self.causal}"

    def matrix(self, length: int) -> Tensor:
        """The ``(L, L)`` matrix of the window and the left mean: the part every sentence shares.
        In fp32 at least (the counts of a bfloat16 model's long sentences are not bfloat16 numbers)."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        positions = torch.arange(length, device=self.weight.device)
        offset = positions[:, None] - positions[None, :]
        index = (offset - self.lowest_offset).clamp(0, self.weight.numel() - 1)
        in_window = (offset >= self.lowest_offset) & (offset <= self.window)
        left_count = (positions - self.window).clamp(min=1).to(dtype)[:, None]
        far_left = torch.where(offset > self.window, self.far_weight[0].to(dtype) / left_count, 0.0)
        return torch.where(in_window, self.weight[index].to(dtype), far_left)

    def mix(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        bias_scale: Optional[Tensor] = None,
        residual: Optional[Tensor] = None,
    ) -> Tensor:
        """As :meth:`Mixing.forward`: padding_mask ``(B, L)`` marks right padding; the bias
        is scaled by ``bias_scale``; ``residual`` is added."""
        bias = self.bias if bias_scale is None else self.bias * bias_scale
        if incremental_state is not None and self.causal:
            return self._step(x, incremental_state, bias, residual)
        length, batch, channels = x.shape
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        weight = self.matrix(length).to(x.dtype)
        if not self.causal:  # the sums ahead of each window, one more GEMM row block
            positions = torch.arange(length, device=x.device)
            ahead = (positions[None, :] - positions[:, None] > self.window).to(x.dtype)
            weight = torch.cat([weight, ahead])
        mixed = torch.mm(weight, x.reshape(length, batch * channels)).view(-1, batch, channels)
        out = mixed[:length] + bias
        if not self.causal and length > self.window + 1:
            lengths = length if padding_mask is None else (~padding_mask).sum(1)  # (B,) right-padded
            count = (torch.as_tensor(lengths, device=x.device) - 1 - self.window - positions[:, None]).clamp(min=1)
            far_weight = self.far_weight[1].to(torch.promote_types(x.dtype, torch.float32))
            out = out + mixed[length:] * (far_weight / count).to(x.dtype).unsqueeze(-1)
        return out if residual is None else out + residual

    def _step(self, x: Tensor, incremental_state: IncrementalState, bias: Tensor,
              residual: Optional[Tensor]) -> Tensor:
        """Causal mixing of new positions after the cached ones, O(K * B * C) each.

        The state holds the last K inputs (``window``, batch-first, oldest first), the sum of
        all older ones (``far_sum``) and their count (``far_count``, a 0-d tensor); the sum and
        the count in fp32 at least, so that a bfloat16 model's long decodings add up exactly."""
        state: Dict[str, Optional[Tensor]] = self.get_incremental_state(incremental_state, "window") or {}
        window, far_sum, far_count = state.get("window"), state.get("far_sum"), state.get("far_count")
        accumulate = torch.promote_types(x.dtype, torch.float32)
        rows = []
        for new in x.unbind(0):  # (B, C) each; fairseq decodes one position at a time
            seen = new.unsqueeze(1) if window is None else torch.cat([window, new.unsqueeze(1)], 1)
            out = torch.matmul(self.weight[: seen.size(1)].flip(0).to(x.dtype), seen)  # (B, C)
            if far_sum is not None:
                out = out + (far_sum * (self.far_weight[0] / far_count)).to(x.dtype)
            if seen.size(1) > self.window:  # the oldest input leaves the window for the mean
                oldest = seen[:, 0].to(accumulate)
                far_sum = oldest if far_sum is None else far_sum + oldest
                far_count = x.new_ones((), dtype=accumulate) if far_count is None else far_count + 1
                seen = seen[:, 1:]
            window = seen
            rows.append(out)
        self.set_incremental_state(incremental_state, "window",
                                   {"window": window, "far_sum": far_sum, "far_count": far_count})
        out = torch.stack(rows) + bias
        return out if residual is None else out + residual

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Follow beam search: keep the state of the surviving hypotheses, in their new order."""
        state = self.get_incremental_state(incremental_state, "window")
        if state is None:
            return
        for key in ("window", "far_sum"):
            if state.get(key) is not None:
                state[key] = state[key].index_select(0, new_order)
        self.set_incremental_state(incremental_state, "window", state)
