"""Encoder-decoder attention that remembers what it has read (coverage) and where (locality).

Relative token mixing tells the decoder what it wrote in the last K positions, not where it
is in a long source: translating several sentences, it finds two "A man ..." that look the
same to attention's content match, and translates the first one twice. Coverage (Tu et al.,
2016, "Modeling Coverage for Neural Machine Translation") is the memory that disambiguates
them without any position: each head lowers its logit for source position j by
``beta_h * c_h[j]``, where ``c_h[j]`` is the attention that head has already given j at the
earlier target positions:

    a_t = softmax(q_t . k / sqrt(d_h)  -  beta_h * c_t),      c_{t+1} = c_t + a_t,  c_0 = 0

It depends on no length (one learned number per head, initialised at 0: the attention starts
as fairseq's own), and a decoding step keeps one running sum per hypothesis, head and source
position, the size of the attention weights it already computes.

Locality (``locality=True``) adds where the head is reading. Coverage stops a second
reading of the first "A man ...", but not a jump ahead to the fourth sentence's: a long input
holds many places that match the next word. Each head also lowers its logit by the distance
from where it looked most at the previous target position, forwards and backwards at their
own rates (Luong et al. 2015's local attention, as a soft learned bias):

    a_t = softmax(... - gf_h * max(0, j - p_{t-1}) - gb_h * max(0, p_{t-1} - j)),  p_t = argmax_j a_t[j]

A jump of a few positions, inside a sentence, costs little; one to another sentence, tens of
positions away, costs tens of times as much. Distances in positions depend on no length, and a
step keeps one position per hypothesis and head.

``locality_floor`` is the least rate a head has when it translates (in eval mode:
decoding and validation): ``gamma = max(floor, learned)``. Trained with teacher forcing,
where the reference prefix keeps the attention in place, some heads learn almost no locality
(0.01 to 0.05 logits per position); in a decoding their own mistakes let them jump, and the
other heads follow. A floor of 0.5, chosen on joined validation sentences, lifted whole BLEU
on 4- and 8-sentence inputs by 1.2 to 5.2 (README, "Long inputs"). Training is left as it was:
the same floor in training measured no better than none, so the learned rates stay free.

``locality_start`` S (when translating, as the floor) is where the first target position
reads. It has no earlier focus, so its heads may read anywhere: in a long input, another
sentence's "A man ..." is as good a start as the first's, and locality then holds the head
there. With S >= 0 the first position pays each head's forwards rate for every source position
more than S after the first (S = -1: it reads anywhere, as trained). S = 16, chosen on joined
validation sentences, gained a little on long inputs and lost nothing on single sentences
(README, "Long inputs").

``locality_focus`` is where a head reads, for the distances (when translating; training keeps
the argmax): "argmax", its largest weight, or "mean", the mean source position under its
weights. A head that reads broadly (a few learned rates stay near 0) has an argmax that jumps
between near-equal keys, and the floor then holds the head wherever it landed; its mean moves
smoothly. On joined validation sentences the mean lifted whole BLEU at 8 sentences by 1.0 and
1.8 (seeds 1, 2) and single sentences by 0.4 and 0.1 (README, "Long inputs").

It is fairseq's ``MultiheadAttention`` (keys and values cached once per sentence in beam
search, alignments, int8 projections), with the bias added where fairseq lets a subclass
change the logits (``apply_sparse_mask``). ``c_t`` depends on the earlier rows' softmax, so a
full pass walks the target positions in order: T small operations per layer.
"""
from typing import Dict, Optional

import torch
from fairseq.modules import MultiheadAttention
from torch import Tensor, nn


class CoverageAttention(MultiheadAttention):
    """``MultiheadAttention(dim, heads, kdim=, vdim=, dropout=)`` over the encoder output, with
    a coverage bias per head (``beta``, above), and with ``locality=True`` a distance bias
    (``gamma``)."""

    # beta = GAIN * coverage_weight. Adam moves a parameter by about the learning rate per
    # step whatever its gradient, and a useful beta is of the order of the logits (a few
    # units): without a gain, the 600 updates of a fine-tuning could move it by 0.3 at most.
    GAIN = 10.0

    FOCI = ("argmax", "mean")

    def __init__(self, embed_dim: int, num_heads: int, locality: bool = False, locality_floor: float = 0.0,
                 locality_start: int = -1, locality_focus: str = "argmax", **kwargs):
        kwargs["encoder_decoder_attention"] = True
        super().__init__(embed_dim, num_heads, **kwargs)
        if locality_floor < 0.0:
            raise ValueError(f"--cross-attention-locality-floor must be >= 0, got {locality_floor}")
        self.locality_floor = locality_floor
        if locality_start < -1:
            raise ValueError(f"--cross-attention-locality-start must be >= 0, or -1 for none, got {locality_start}")
        self.locality_start = locality_start
        if locality_focus not in self.FOCI:
            raise ValueError(f"--cross-attention-locality-focus must be one of {self.FOCI}, got {locality_focus!r}")
        self.locality_focus = locality_focus
        self.coverage_weight = nn.Parameter(torch.zeros(num_heads))
        # (forwards, backwards) per head, at 0: the attention starts as coverage alone
        self.locality_weight = nn.Parameter(torch.zeros(2, num_heads)) if locality else None
        self._call: Optional[tuple] = None  # (key_padding_mask, incremental_state) of the current call

    def forward(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None, incremental_state=None, need_weights: bool = True,
                static_kv: bool = False, attn_mask: Optional[Tensor] = None, before_softmax: bool = False,
                need_head_weights: bool = False):
        """fairseq's call. Always fairseq's own attention path (``static_kv``): torch's fused
        kernel has no place for a bias that depends on the earlier rows' weights."""
        self._call = (key_padding_mask, incremental_state)
        try:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   incremental_state=incremental_state, need_weights=need_weights, static_kv=True,
                                   attn_mask=attn_mask, before_softmax=before_softmax,
                                   need_head_weights=need_head_weights)
        finally:
            self._call = None

    def apply_sparse_mask(self, attn_weights: Tensor, tgt_len: int, src_len: int, bsz: int) -> Tensor:
        """The logits ``(bsz * heads, T, S)`` minus each head's coverage bias, row by row; in a
        decoding, the coverage carries over from the earlier steps and is saved for the next."""
        if self._call is None:  # called from elsewhere: no coverage to apply
            return attn_weights
        key_padding_mask, incremental_state = self._call
        accumulate = torch.promote_types(attn_weights.dtype, torch.float32)
        logits = attn_weights.view(bsz, self.num_heads, tgt_len, src_len).to(accumulate)
        if key_padding_mask is not None:  # (bsz, S): padded keys take no attention, so no coverage
            logits = logits.masked_fill(key_padding_mask.view(bsz, 1, 1, src_len).bool(), float("-inf"))
        beta = self.beta.to(accumulate).view(1, -1, 1)
        gamma, positions = None, None
        if self.locality_weight is not None:
            gamma = self.gamma.to(accumulate).view(2, 1, -1, 1)
            positions = torch.arange(src_len, device=logits.device).to(accumulate)
        state = self._coverage_state(incremental_state) or {}
        coverage, focus = state.get("coverage"), state.get("focus")
        start = None
        if gamma is not None and focus is None and self.locality_start >= 0 and not self.training:
            start = self._start_bias(gamma, positions, key_padding_mask, bsz)
        rows = []
        for row in logits.unbind(2):  # (bsz, heads, S) per target position, in order
            if coverage is not None:
                row = row - beta * coverage
            if start is not None and focus is None:  # the first target position
                row = row - start
            if gamma is not None and focus is not None:
                row = row - self._distance_bias(gamma, positions, focus.to(accumulate))
            rows.append(row)
            weights = torch.softmax(row, dim=-1)
            coverage = weights if coverage is None else coverage + weights
            focus = self._focus(weights, positions) if gamma is not None else None
        if incremental_state is not None:
            self._set_coverage_state(incremental_state, {"coverage": coverage, "focus": focus})
        return torch.stack(rows, 2).to(attn_weights.dtype).view(bsz * self.num_heads, tgt_len, src_len)

    def _focus(self, weights: Tensor, positions: Tensor) -> Tensor:
        """Where each head reads ``(bsz, heads)``: its largest weight's key, or translating with
        ``locality_focus="mean"`` the mean key under its weights (they sum to 1; padded keys have 0)."""
        if self.locality_focus == "mean" and not self.training:
            return (weights * positions).sum(-1)
        return weights.argmax(-1)

    @staticmethod
    def _distance_bias(gamma: Tensor, positions: Tensor, focus: Tensor, backwards: bool = True) -> Tensor:
        """Locality's bias ``(bsz, heads, S)`` from ``focus`` (``(bsz, heads)``, or ``(bsz, 1)`` for
        all heads): the forwards rate times the distance past it, and the backwards rate before it."""
        ahead = positions - focus.unsqueeze(-1)
        bias = gamma[0] * ahead.clamp(min=0)
        return bias + gamma[1] * (-ahead).clamp(min=0) if backwards else bias

    def _start_bias(self, gamma: Tensor, positions: Tensor, key_padding_mask: Optional[Tensor],
                    bsz: int) -> Tensor:
        """The first target position's bias: the forwards distance past the ``locality_start``
        positions after the first source token (the first one not padded: fairseq pads sources
        on the left); nothing before it."""
        first = positions.new_zeros(bsz, 1)
        if key_padding_mask is not None:
            first = (~key_padding_mask.bool()).to(positions.dtype).argmax(-1, keepdim=True)
        return self._distance_bias(gamma, positions, first + self.locality_start, backwards=False)

    @property
    def beta(self) -> Tensor:
        """Each head's coverage bias per unit of attention already given, ``(heads,)``."""
        return self.GAIN * self.coverage_weight

    @property
    def gamma(self) -> Tensor:
        """Each head's distance bias per position, ``(2, heads)``: forwards, backwards; in eval
        mode at least the floor."""
        gamma = self.GAIN * self.locality_weight
        if self.locality_floor > 0.0 and not self.training:
            gamma = gamma.clamp(min=self.locality_floor)
        return gamma

    def _coverage_state(self, incremental_state) -> Optional[Dict[str, Optional[Tensor]]]:
        """``coverage`` (bsz, heads, S) and, with locality, ``focus`` (bsz, heads)."""
        if incremental_state is None:
            return None
        return self.get_incremental_state(incremental_state, "coverage")

    def _set_coverage_state(self, incremental_state, state: Dict[str, Optional[Tensor]]) -> None:
        self.set_incremental_state(incremental_state, "coverage", state)

    def reorder_incremental_state(self, incremental_state, new_order: Tensor):
        """fairseq's (keys and values, once per sentence), and the coverage, one per hypothesis."""
        super().reorder_incremental_state(incremental_state, new_order)
        state = self._coverage_state(incremental_state)
        if state:
            self._set_coverage_state(incremental_state, {
                name: None if value is None else value.index_select(0, new_order) for name, value in state.items()})
        return incremental_state
