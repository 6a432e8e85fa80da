"""The cross-token linear layer: the paper's matrix A over token positions."""
from typing import Dict, Optional

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

IncrementalState = Dict[str, Dict[str, Optional[Tensor]]]


class SequenceTooLongError(ValueError):
    """A sequence has more positions than the token-mixing matrix."""


@with_incremental_state
class TokenMixing(nn.Module):
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

    def forward(
        self,
        x: Tensor,
        padding_mask: Optional[Tensor] = None,
        incremental_state: Optional[IncrementalState] = None,
    ) -> Tensor:
        """x: ``(L, B, C)``; padding_mask: ``(B, L)``, True at (right-)padded positions."""
        length, batch, channels = x.shape
        start = 0
        if self.mode == "causal" and incremental_state is not None:
            cache = self.get_incremental_state(incremental_state, "inputs")
            if cache is not None:
                x = torch.cat([cache["inputs"], x], dim=0)
                start = x.size(0) - length
            self.set_incremental_state(incremental_state, "inputs", {"inputs": x})
        end = x.size(0)
        self.check_length(end)
        if padding_mask is not None and self.mode == "padded":
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)
        weight = self.weight[start:end, :end]
        if self.mode == "causal":
            weight = weight.tril(start)  # row r is position start + r: keep columns <= it
        out = torch.addmm(self.bias[start:end, None], weight, x.reshape(end, batch * channels))
        return out.view(end - start, batch, channels)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Follow beam search: keep the cached inputs of the surviving hypotheses."""
        cache = self.get_incremental_state(incremental_state, "inputs")
        if cache is not None:
            self.set_incremental_state(
                incremental_state, "inputs", {"inputs": cache["inputs"].index_select(1, new_order)}
            )
