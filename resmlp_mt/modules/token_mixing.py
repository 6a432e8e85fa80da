"""The cross-token linear layer: the paper's matrix A over token positions."""
from typing import Dict, Optional

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

from .folding import addmm_into

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class SequenceTooLongError(ValueError):
    """A sequence has more positions than the token-mixing matrix."""


class Mixing(nn.Module):
    """What both token mixings share: the paper's call, ``forward(x, padding_mask,
    incremental_state)``, which subclasses implement as ``mix``."""

    def forward(self, x: Tensor, padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[IncrementalState] = None, *,
                bias_scale: Optional[Tensor] = None, residual: Optional[Tensor] = None) -> Tensor:
        """The paper's layer: x ``(L, B, C)`` time-first; padding_mask ``(B, L)``, True at
        (right-)padded positions; with an ``incremental_state`` (causal only), x holds the
        new positions after the cached ones.

        ``bias_scale`` ``(C,)`` and ``residual`` ``(L, B, C)`` are the block's fold (``folding.py``):
        ``residual + A x + b * bias_scale``, for an ``x`` already scaled by ``bias_scale``.
        They are forward's, as hooks (fairseq's NanDetector) see only calls of the module, and
        outside it each would cost one more activation-sized pass."""
        return self.mix(x, padding_mask, incremental_state, bias_scale, residual)

    def mix(self, x: Tensor, padding_mask: Optional[Tensor] = None,
            incremental_state: Optional[IncrementalState] = None, bias_scale: Optional[Tensor] = None,
            residual: Optional[Tensor] = None) -> Tensor:
        raise NotImplementedError


@with_incremental_state
class TokenMixing(Mixing):
    """``out[i] = sum_j A[i, j] * x[j] + b[i]``: one learned linear map across positions.

    This is what ResMLP puts in place of self-attention. Inputs are time-first,
    ``(L, B, C)``, so that mixing every batch entry and channel at once is a
    single GEMM, ``A[:L, :L] @ x.view(L, B * C)``, with no transposes.

    Modes:
      * ``full``: exactly ``num_tokens`` positions (image patches).
      * ``padded``: up to ``num_tokens`` positions, right-padded. The top-left
        ``L x L`` block of A serves a batch whose longest sequence has L tokens, and
        padded inputs are zeroed so that they contribute nothing: a sentence gets
        the same output alone or in a batch with longer ones.
      * ``causal``: A is lower-triangular, position i only sees positions <= i (the
        decoder). With an ``incremental_state`` only the new positions are computed,
        from a cache of earlier inputs: the t-th token costs O(t * B * C).
    """

    MODES = ("full", "padded", "causal")
    INITS = ("normal", "mean")

    def __init__(self, num_tokens: int, mode: str = "full", init: str = "normal", init_std: float = 0.02):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown token-mixing mode {mode!r}: expected one of {self.MODES}")
        if init not in self.INITS:
            raise ValueError(f"unknown token-mixing init {init!r}: expected one of {self.INITS}")
        self.num_tokens = num_tokens
        self.mode = mode
        self.weight = nn.Parameter(torch.empty(num_tokens, num_tokens))
        self.bias = nn.Parameter(torch.zeros(num_tokens))
        nn.init.trunc_normal_(self.weight, std=init_std)  # as the official ResMLP code
        if init == "mean":
            with torch.no_grad():
                self.weight.add_(self.mean_matrix(num_tokens, mode))

    @staticmethod
    def mean_matrix(n: int, mode: str) -> Tensor:
        """What self-attention computes at initialisation: the mean of the visible positions.

        Causal rows average their prefix exactly; other rows average the positions up to
        their own (the full length is unknown for padded inputs), and learn the rest.
        """
        return torch.ones(n, n).tril() / torch.arange(1, n + 1, dtype=torch.float).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, mode={self.mode}"

    def check_length(self, length: int) -> None:
        if self.mode == "full" and length != self.num_tokens:
            raise SequenceTooLongError(
                f"token mixing expects exactly {self.num_tokens} tokens, got {length}"
            )
        if length > self.num_tokens:
            raise SequenceTooLongError(
                f"a sequence of {length} tokens is longer than the token-mixing matrix "
                f"({self.num_tokens} positions): raise --max-source-positions / "
                f"--max-target-positions when training, or filter long inputs "
                f"(--skip-invalid-size-inputs-valid-test)"
            )

    def mix(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
        bias_scale: Optional[Tensor] = None,
        residual: Optional[Tensor] = None,
    ) -> Tensor:
        """As :meth:`Mixing.forward`; the bias ``b[i]`` becomes ``b[i] * bias_scale[c]``, and the
        residual (the new positions only, when stepping) is added by the GEMM."""
        length, batch, channels = x.shape
        bias = self.bias[:, None, None] if bias_scale is None else self.bias[:, None, None] * bias_scale
        if self.mode == "causal" and incremental_state is not None:
            return self._step(x, incremental_state, bias, residual)
        self.check_length(length)
        if padding_mask is not None and self.mode == "padded":
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        weight = self.weight[:length, :length]
        if self.mode == "causal":
            weight = weight.tril()
        x = x.reshape(length, batch * channels)
        if residual is not None:  # the GEMM accumulates into residual + bias
            return addmm_into(residual + bias[:length], weight, x)
        return torch.mm(weight, x).view(length, batch, channels).add_(bias[:length])

    def _step(self, x: Tensor, incremental_state: IncrementalState, bias: Tensor, residual: Optional[Tensor]) -> Tensor:
        """Causal mixing of new positions ``x`` after the cached ones: O(t * B * C) for the t-th.

        The cached inputs live in a batch-first buffer, ``(B, capacity, C)``, that grows by
        doubling: a step writes its row in place, and beam search's reorder (after every
        step) copies whole rows into a second, equally persistent buffer. Nothing of the
        cache's size is allocated per step: fresh tensors of that size cost page faults
        that took longer than the arithmetic (and gathering along dim 1 is slower).
        Under autograd the cache is rebuilt functionally instead (no in-place writes).
        """
        cache = self.get_incremental_state(incremental_state, "inputs") or {}
        buffer, spare, seen = cache.get("buffer"), cache.get("spare"), cache.get("inputs")
        length = 0 if seen is None else seen.size(1)
        end = length + x.size(0)
        self.check_length(end)
        new = x.transpose(0, 1)
        if _differentiable(x, self.weight):
            buffer, spare = (new if seen is None else torch.cat([seen, new], dim=1)), None
        else:
            if buffer is None or end > buffer.size(1):
                grown = x.new_empty(x.size(1), min(self.num_tokens, max(8, 2 * end)), x.size(2))
                if length:
                    grown[:, :length] = seen
                buffer, spare = grown, None
            buffer[:, length:end] = new
        self.set_incremental_state(incremental_state, "inputs", _cache(buffer, spare, end))
        weight = self.weight[length:end, :end].tril(length)  # row r is position length + r: columns <= it
        out = torch.matmul(weight, buffer[:, :end]).transpose(0, 1)  # (B, rows, C) -> (rows, B, C)
        return out + bias[length:end] if residual is None else (residual + bias[length:end]).add_(out)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Follow beam search: keep the cached inputs of the surviving hypotheses, in their new order."""
        cache = self.get_incremental_state(incremental_state, "inputs")
        if cache is None or cache.get("inputs") is None:
            return
        buffer, spare, seen = cache["buffer"], cache.get("spare"), cache["inputs"]
        if buffer.requires_grad and torch.is_grad_enabled():
            reordered, spare = seen.index_select(0, new_order), None
        else:
            if spare is None or spare.shape != (new_order.numel(), *buffer.shape[1:]):
                spare = buffer.new_empty(new_order.numel(), *buffer.shape[1:])
            torch.index_select(seen, 0, new_order, out=spare[:, : seen.size(1)])
            reordered, spare = spare, (buffer if buffer.size(0) == new_order.numel() else None)
        self.set_incremental_state(incremental_state, "inputs", _cache(reordered, spare, seen.size(1)))


def _cache(buffer: Tensor, spare: Optional[Tensor], length: int) -> Dict[str, Optional[Tensor]]:
    """The causal cache: ``buffer`` (B, capacity, C), the rows in use as the view ``inputs``
    (so their count is its size, not an int beside the tensors), and the ``spare`` buffer
    a reorder writes into."""
    return {"buffer": buffer, "spare": spare, "inputs": buffer[:, :length]}


def _differentiable(x: Tensor, weight: Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
