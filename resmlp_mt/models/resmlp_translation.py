"""ResMLP for translation: a Vaswani encoder-decoder whose self-attention is token mixing.

Encoder layer: norm -> padded token mixing -> LayerScale -> residual; norm -> MLP ...
Decoder layer: the same with *causal* token mixing, plus fairseq's own
MultiheadAttention over the encoder output as a third residual branch.

There are no positional embeddings: row i of the token-mixing matrix already is
position i. ``--max-source-positions`` / ``--max-target-positions`` therefore fix
the matrices' sizes, and fairseq's length filtering and generation limits follow
them through ``max_positions()``. With ``--token-mixing relative`` a weight depends on
the offset between two positions (a window of ``--mixing-window`` offsets and a mean of
the rest; ``modules/relative_token_mixing.py``): no parameter depends on a length, the
limits are only a cap (default ``RELATIVE_MAX_POSITIONS``), and a decoding step costs
the same at every position.

Norm: LayerNorm by default, not the paper's vision Aff: Aff passes the scale of the
sqrt(d)-scaled embeddings (tied with the output projection) on to every sublayer, while
LayerNorm resets it in each block (the measurement is in the README). ``--norm affine``
remains.

Decoding state. Beam search keeps four kinds of state; each is written at one place and
follows the beams at one place:

=====================  ==============================  ==================================
state                  written by                      follows beam reorders
=====================  ==============================  ==================================
token-mixing inputs    ``TokenMixing._step`` (all      its ``reorder_incremental_state``
                       inputs so far, ``inputs``) or   (rows copied into the ``spare``
                       ``RelativeTokenMixing._step``   buffer; relative: ``window`` and
                       (``window``, ``far_sum``,       ``far_sum`` indexed), called by
                       ``far_count``), every step      fairseq for every module
folded MLP weights     ``ResMLPBlock._folded_mlp``,    nothing to reorder: the same for
(``folded_mlp``)       at the first step               every hypothesis
cross-attention keys   fairseq's MultiheadAttention    fairseq's; skipped while every
and values             (``static_kv``), first step;    sentence keeps its beam (beamable
                       the decoder then marks          attention, ``set_beam_size`` at
                       ``cross_attention`` cached      the first step, ``_beam_size``)
encoder states and     ``ResMLPEncoder.forward``       ``reorder_encoder_out`` composes
their order                                            the order (``encoder_order``);
(not incremental)                                      ``encoder_states()`` applies it,
                                                       read at the first step only
                                                       (``source_left_pads``, for
                                                       alignments: ``source_columns()``)
=====================  ==============================  ==================================

All of it lives in fairseq's ``incremental_state`` (or the encoder-output dict) of one
decoding, as tensors: nothing outlives a decoding or sits on a module, since fairseq's
optimizers update weights through ``.data``, which no cache could notice.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from fairseq import utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import (
    FairseqEncoder,
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)
from fairseq.models.transformer import Embedding
from fairseq.modules import MultiheadAttention
from torch import Tensor, nn

from .. import fairseq_compat, replace_unk
from ..modules import CoverageAttention, Dropout, ResMLPBlock, SequenceTooLongError, make_norm
from ..modules.token_mixing import IncrementalState
from ..usage_errors import CheckpointMismatchError, UsageError
from .target_padding import moved_to_the_left

logger = logging.getLogger(__name__)

NORM_CHOICES = ChoiceEnum(["layernorm", "affine"])
MIXING_INIT_CHOICES = ChoiceEnum(["normal", "mean"])
TOKEN_MIXING_CHOICES = ChoiceEnum(["absolute", "relative"])
LOCALITY_FOCUS_CHOICES = ChoiceEnum(["argmax", "mean"])
# Relative mixing has no matrix size: the default cap only bounds memory (the full pass
# builds an L x L matrix; 4,096 positions are 64 MB in fp32).
RELATIVE_MAX_POSITIONS = 4096


@dataclass
class ResMLPTranslationConfig(FairseqDataclass):
    """Defaults are the paper's WMT14 En-De model (``resmlp_wmt_en_de``)."""

    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder width d"})
    encoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "encoder MLP hidden size"})
    encoder_layers: int = field(default=6, metadata={"help": "number of encoder blocks"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder width d"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "decoder MLP hidden size"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder blocks"})
    decoder_attention_heads: int = field(
        default=8, metadata={"help": "heads of the encoder-decoder attention"}
    )
    max_source_positions: int = field(
        default=512, metadata={"help": "size of the encoder's token-mixing matrices (max source tokens)"}
    )
    max_target_positions: int = field(
        default=512, metadata={"help": "size of the decoder's token-mixing matrices (max target tokens)"}
    )
    norm: NORM_CHOICES = field(
        default="layernorm",
        metadata={"help": "normalisation in each block: LayerNorm, or the paper's Aff (per-channel affine)"},
    )
    layerscale_init: float = field(default=0.2, metadata={"help": "initial LayerScale value"})
    token_mixing: TOKEN_MIXING_CHOICES = field(
        default="absolute",
        metadata={"help": "absolute: the paper's matrix A, one weight per pair of positions (fixed maximum "
                          "length); relative: one weight per offset in a window, plus the mean of farther "
                          "positions (any length, constant-cost decoding steps)"},
    )
    mixing_window: int = field(
        default=16, metadata={"help": "with --token-mixing relative: offsets with a weight of their own "
                                      "(|i - j| <= K in the encoder, 0 <= i - j <= K in the decoder)"}
    )
    token_mixing_init: MIXING_INIT_CHOICES = field(
        default="normal",
        metadata={"help": "initial token-mixing matrices: small random (normal, std 0.02, as the official "
                          "code) or the mean over earlier positions plus that noise (mean)"},
    )
    cross_attention_coverage: bool = field(
        default=False,
        metadata={"help": "lower each cross-attention head's logit for a source position by a learned multiple "
                          "of the attention it has already given that position (coverage: what was translated "
                          "is not translated again, on inputs of any length)"},
    )
    cross_attention_locality: bool = field(
        default=False,
        metadata={"help": "with --cross-attention-coverage: also lower the logit by a learned multiple of the "
                          "distance from where the head looked most at the previous target position (no jumps "
                          "to another sentence of a long input)"},
    )
    cross_attention_locality_floor: float = field(
        default=0.0,
        metadata={"help": "with --cross-attention-locality: the least distance bias per position of every head "
                          "when translating (eval mode: decoding, validation; training learns freely); "
                          "on a trained model: fairseq-generate --model-overrides "
                          "\"{'model': {'cross_attention_locality_floor': 0.5}}\""},
    )
    cross_attention_locality_start: int = field(
        default=-1,
        metadata={"help": "with --cross-attention-locality, when translating (eval mode): the first target "
                          "position pays each head's forwards rate for every source position past the first N "
                          "(it starts reading at the start); -1: it reads anywhere, as in training"},
    )
    cross_attention_locality_focus: LOCALITY_FOCUS_CHOICES = field(
        default="argmax",
        metadata={"help": "with --cross-attention-locality, when translating (eval mode): the source position "
                          "each head's distances count from: its largest weight (argmax, as in training) or the "
                          "mean position under its weights (mean)"},
    )
    dropout: float = field(default=0.15, metadata={"help": "dropout on embeddings and residual branches"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on cross-attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the MLP's GELU"})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth rate of the last block"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "share decoder input and output embeddings"}
    )
    share_all_embeddings: bool = field(
        default=False, metadata={"help": "share encoder, decoder and output embeddings (joined dictionary)"}
    )
    no_scale_embedding: bool = field(default=False, metadata={"help": "do not scale embeddings by sqrt(d)"})


def _drop_path_rates(rate: float, depth: int) -> List[float]:
    """Stochastic depth grows linearly with depth, as in DeiT/timm."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


def _blocks(cfg, dim: int, positions: int, mixing: str, hidden_dim: int, depth: int, cross_attention=None):
    """The encoder's or the decoder's stack; ``cross_attention()`` makes each block's own."""
    return nn.ModuleList(
        ResMLPBlock(
            dim,
            positions,
            mixing=mixing,
            mixing_init=cfg.token_mixing_init,
            mixing_window=cfg.mixing_window if cfg.token_mixing == "relative" else None,
            hidden_dim=hidden_dim,
            norm=cfg.norm,
            layerscale_init=cfg.layerscale_init,
            dropout=cfg.dropout,
            activation_dropout=cfg.activation_dropout,
            drop_path=rate,
            cross_attention=cross_attention() if cross_attention else None,
        )
        for rate in _drop_path_rates(cfg.drop_path, depth)
    )


def _cross_attention(cfg, dim: int) -> MultiheadAttention:
    """A decoder block's encoder-decoder attention: fairseq's, or with coverage (and locality)."""
    if cfg.cross_attention_locality and not cfg.cross_attention_coverage:
        raise UsageError("--cross-attention-locality extends --cross-attention-coverage: pass both")
    if cfg.cross_attention_locality_floor and not cfg.cross_attention_locality:
        raise UsageError("--cross-attention-locality-floor bounds --cross-attention-locality's rates: "
                         "pass --cross-attention-locality (and --cross-attention-coverage)")
    if cfg.cross_attention_locality_focus != "argmax" and not cfg.cross_attention_locality:
        raise UsageError(f"--cross-attention-locality-focus {cfg.cross_attention_locality_focus} uses "
                         "--cross-attention-locality's distances: pass --cross-attention-locality "
                         "(and --cross-attention-coverage)")
    if cfg.cross_attention_locality_start >= 0 and not cfg.cross_attention_locality:
        raise UsageError("--cross-attention-locality-start uses --cross-attention-locality's rates: "
                         "pass --cross-attention-locality (and --cross-attention-coverage)")
    kwargs = dict(kdim=cfg.encoder_embed_dim, vdim=cfg.encoder_embed_dim, dropout=cfg.attention_dropout,
                  encoder_decoder_attention=True)
    if cfg.cross_attention_coverage:
        return CoverageAttention(dim, cfg.decoder_attention_heads, locality=cfg.cross_attention_locality,
                                 locality_floor=cfg.cross_attention_locality_floor,
                                 locality_start=cfg.cross_attention_locality_start,
                                 locality_focus=str(cfg.cross_attention_locality_focus), **kwargs)
    return MultiheadAttention(dim, cfg.decoder_attention_heads, **kwargs)


def check_length(length: int, limit: int, side: str, relative: bool) -> None:
    """Name the limit a sentence (with EOS) or a target prefix exceeds, and what to do."""
    if length <= limit:
        return
    if relative:
        raise SequenceTooLongError(
            f"a {side} sequence has {length} tokens, over the cap --max-{side}-positions={limit}; "
            f"relative token mixing has no length limit of its own: pass a larger cap (memory grows "
            f"with its square) or filter such inputs (--skip-invalid-size-inputs-valid-test)"
        )
    what = "a source sentence" if side == "source" else "a target prefix"
    raise SequenceTooLongError(
        f"{what} has {length} tokens (with EOS) but the model's token-mixing matrices hold "
        f"--max-{side}-positions={limit}; filter such inputs (--skip-invalid-size-inputs-valid-test), "
        f"train with a larger limit, or train with --token-mixing relative (any length)"
    )


class ResMLPEncoder(FairseqEncoder):
    def __init__(self, cfg: ResMLPTranslationConfig, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        dim = cfg.encoder_embed_dim
        self.padding_idx = embed_tokens.padding_idx
        self.max_source_positions = cfg.max_source_positions
        self.relative = cfg.token_mixing == "relative"
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else dim**0.5
        self.dropout_module = Dropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = _blocks(cfg, dim, cfg.max_source_positions, "padded", cfg.encoder_ffn_embed_dim,
                              cfg.encoder_layers)
        self.final_norm = make_norm(cfg.norm, dim)

    def forward(self, src_tokens: Tensor, src_lengths: Optional[Tensor] = None, **kwargs):
        check_length(src_tokens.size(1), self.max_source_positions, "source", self.relative)
        # Row i of A must mean "i-th token of the sentence", whatever the padding side:
        # fairseq left-pads sources by default, so move every sentence to the left.
        left_pads = _left_pads(src_tokens, self.padding_idx)
        src_tokens = utils.convert_padding_direction(src_tokens, self.padding_idx, left_to_right=True)
        padding_mask = src_tokens.eq(self.padding_idx)
        x = self.dropout_module(self.embed_scale * self.embed_tokens(src_tokens)).transpose(0, 1).contiguous()
        mixing_mask = padding_mask if padding_mask.any() else None
        for layer in self.layers:
            x = layer(x, padding_mask=mixing_mask)
        return {
            "encoder_out": [self.final_norm(x)],  # T x B x C
            "encoder_padding_mask": [padding_mask],  # B x T, right-padded
            "source_left_pads": [left_pads],  # B: where alignments put each source back
        }

    def reorder_encoder_out(self, encoder_out: Dict[str, List[Tensor]], new_order: Tensor):
        """Beam search calls this at every step, but the decoder reads the encoder states
        only at its first step (cross-attention then caches its keys and values). So the
        states are not copied here: the new order is composed with any earlier one and
        applied when the states are read (``encoder_states()``). They are kept under their own
        key, ``unordered_encoder_out``, since fairseq's ``encoder_out`` would promise the new
        order (and its ``encoder_states`` means per-layer states). The padding mask, read at
        every step, is reordered."""
        states = encoder_out.get("unordered_encoder_out", encoder_out.get("encoder_out"))
        order = encoder_out.get("encoder_order")
        reordered = {
            "unordered_encoder_out": states,
            "encoder_order": [new_order if order is None else order[0].index_select(0, new_order)],
            "encoder_padding_mask": [encoder_out["encoder_padding_mask"][0].index_select(0, new_order)],
        }
        if "source_left_pads" in encoder_out:  # in the encoder's order, as the states
            reordered["source_left_pads"] = encoder_out["source_left_pads"]
        return reordered

    def max_positions(self) -> int:
        return self.max_source_positions


def _left_pads(src_tokens: Tensor, pad: int) -> Tensor:
    """Per sentence, the padding before it: all of its padding when the batch is left-padded
    (fairseq's default for sources, which ``convert_padding_direction`` moves to the right),
    else none."""
    padding = src_tokens.eq(pad)
    return padding.sum(dim=1) * padding[:, 0].any()


def source_columns(attn: Tensor, encoder_out: Dict[str, List[Tensor]]) -> Tensor:
    """Attention weights ``(B, T, S)`` over the encoder's right-padded positions, moved to
    the columns of the source tokens as fairseq passed them (left-padded by default), where
    fairseq's alignment extraction (``utils.extract_hard_alignment``) looks for them."""
    left_pads = encoder_out.get("source_left_pads")
    if not left_pads:
        return attn
    left_pads = left_pads[0]
    if "encoder_out" not in encoder_out:  # reordered since: in the encoder's order, as the states
        left_pads = left_pads.index_select(0, encoder_out["encoder_order"][0])
    columns = torch.arange(attn.size(-1), device=attn.device)
    index = torch.remainder(columns - left_pads[:, None], attn.size(-1))  # B x S
    return attn.gather(-1, index[:, None, :].expand_as(attn))


def encoder_states(encoder_out: Dict[str, List[Tensor]]) -> Tensor:
    """The encoder output ``(T, B, C)``, in the order of any ``reorder_encoder_out`` since."""
    if "encoder_out" in encoder_out:
        return encoder_out["encoder_out"][0]
    return encoder_out["unordered_encoder_out"][0].index_select(1, encoder_out["encoder_order"][0])


def _beam_size(encoder_out: Dict[str, List[Tensor]]) -> int:
    """k when beam search has expanded every sentence to k hypotheses in a row (the
    reorder fairseq's SequenceGenerator makes before its first step), else 1.

    It switches fairseq's beamable encoder-decoder attention on or off for the decoding
    that starts: cross-attention keys and values are then computed and cached once per
    sentence, not per hypothesis, and need no reordering while every sentence keeps its
    beam. Deciding it from the order itself, at the first step, means that a decoding
    with another beam size (or none) in the same process never meets a stale setting.
    """
    order = encoder_out.get("encoder_order")
    if order is None:
        return 1
    sentences, hypotheses = encoder_out["unordered_encoder_out"][0].size(1), order[0].numel()
    beam = hypotheses // sentences
    expanded = torch.arange(sentences, device=order[0].device).repeat_interleave(beam)
    return beam if beam > 1 and hypotheses == sentences * beam and torch.equal(order[0], expanded) else 1


class ResMLPDecoder(FairseqIncrementalDecoder):
    def __init__(self, cfg: ResMLPTranslationConfig, dictionary, embed_tokens: nn.Embedding):
        super().__init__(dictionary)
        dim = cfg.decoder_embed_dim
        self.max_target_positions = cfg.max_target_positions
        self.relative = cfg.token_mixing == "relative"
        self.embed_tokens = embed_tokens
        self.embed_scale = 1.0 if cfg.no_scale_embedding else dim**0.5
        self.dropout_module = Dropout(cfg.dropout, module_name=self.__class__.__name__)
        self.layers = _blocks(
            cfg, dim, cfg.max_target_positions, "causal", cfg.decoder_ffn_embed_dim, cfg.decoder_layers,
            cross_attention=lambda: _cross_attention(cfg, dim),
        )
        self.final_norm = make_norm(cfg.norm, dim)
        # Return cross-attention weights for alignments? fairseq-generate, -interactive and the
        # hub interface set it from --print-alignment (and --replace-unk) before decoding.
        self.need_attn = False
        self.output_projection = nn.Linear(dim, len(dictionary), bias=False)
        if cfg.share_decoder_input_output_embed or cfg.share_all_embeddings:
            self.output_projection.weight = embed_tokens.weight
        else:
            nn.init.normal_(self.output_projection.weight, mean=0, std=dim**-0.5)

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        features_only: bool = False,
        full_context_alignment: bool = False,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        **kwargs,
    ):
        """fairseq's decoder interface: ``(logits or features, {"attn": [attn], ...})``.

        ``attn`` is the alignment: the cross-attention weights of layer ``alignment_layer``
        (by default the last) averaged over its first ``alignment_heads`` heads (by default
        all), ``(B, target length, source length)``, in the source's own columns, as
        fairseq's TransformerDecoder returns it. It is computed when alignments are asked
        for, by ``alignment_layer`` / ``alignment_heads`` or by ``need_attn`` (which
        ``ResMLPModel.prepare_for_inference_`` sets from ``--print-alignment`` and
        ``--replace-unk``), and is None otherwise: beam search then keeps no attention, and
        a full pass keeps torch's fused attention."""
        if full_context_alignment:
            raise ValueError("full_context_alignment: causal token mixing has no full-context mode")
        x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state,
                                         alignment_layer=alignment_layer, alignment_heads=alignment_heads)
        if not features_only:
            x = self.output_layer(x)
        return x, extra

    def make_generation_fast_(self, need_attn: bool = False, **kwargs):
        """fairseq's hook for inference (``prepare_for_inference_``): ``need_attn`` is
        ``--print-alignment``."""
        self.need_attn = need_attn

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: Optional[Dict[str, List[Tensor]]] = None,
        incremental_state: Optional[IncrementalState] = None,
        alignment_layer: Optional[int] = None,
        alignment_heads: Optional[int] = None,
        **kwargs,
    ):
        """``(features (B, T, C), {"attn": [alignment or None], "inner_states": None})``: see ``forward``."""
        check_length(prev_output_tokens.size(1), self.max_target_positions, "target", self.relative)
        prev_output_tokens, restore = moved_to_the_left(prev_output_tokens, self.embed_tokens.padding_idx,
                                                        incremental=incremental_state is not None)
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]  # earlier positions are cached
        x = self.dropout_module(self.embed_scale * self.embed_tokens(prev_output_tokens)).transpose(0, 1).contiguous()
        enc = enc_mask = None
        if encoder_out is not None:
            enc_mask = encoder_out["encoder_padding_mask"][0]
            if not self._cross_attention_cached(incremental_state):
                enc = encoder_states(encoder_out)
                # beamable attention for a decoding that starts; none in a full pass, which
                # would otherwise meet the beam size of the last decoding (in fairseq's own
                # attention path: alignments, quantized projections)
                self.set_beam_size(_beam_size(encoder_out) if incremental_state is not None else 1)
                if incremental_state is not None:
                    # from the next step on, cross-attention reads the keys and values it caches now
                    self.set_incremental_state(incremental_state, "cross_attention", {"cached": enc.new_ones(())})
        if alignment_layer is None and (alignment_heads is not None or (self.need_attn and not self.training)):
            alignment_layer = len(self.layers) - 1
        if alignment_layer is not None and not -len(self.layers) <= alignment_layer < len(self.layers):
            raise ValueError(f"alignment_layer {alignment_layer}: the decoder has {len(self.layers)} layers")
        attn = None
        for idx, layer in enumerate(self.layers):
            if alignment_layer is not None and idx == alignment_layer % len(self.layers):
                x, head_weights = layer(x, incremental_state=incremental_state, encoder_out=enc,
                                        encoder_padding_mask=enc_mask, need_head_weights=True)
                attn = head_weights[:alignment_heads].float().mean(dim=0).to(x)  # B x T x S
            else:
                x = layer(x, incremental_state=incremental_state, encoder_out=enc, encoder_padding_mask=enc_mask)
        if attn is not None and encoder_out is not None:
            attn = restore(source_columns(attn, encoder_out))
        # back in the columns of left-padded targets
        return restore(self.final_norm(x).transpose(0, 1)), {"attn": [attn], "inner_states": None}

    def _cross_attention_cached(self, incremental_state: Optional[IncrementalState]) -> bool:
        """After the first incremental step, cross-attention reads its cached keys and values."""
        if incremental_state is None:
            return False
        return self.get_incremental_state(incremental_state, "cross_attention") is not None

    def output_layer(self, features: Tensor) -> Tensor:
        return self.output_projection(features)

    def max_positions(self) -> int:
        return self.max_target_positions


@register_model("resmlp", dataclass=ResMLPTranslationConfig)
class ResMLPModel(FairseqEncoderDecoderModel):
    """ResMLP encoder-decoder (Touvron et al., 2021, Sec. 5: machine translation)."""

    @classmethod
    def build_model(cls, cfg: ResMLPTranslationConfig, task):
        fairseq_compat.mark_plugin_task(task)  # its batches: see fairseq_compat, epoch_batches
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        encoder_embed = Embedding(len(src_dict), cfg.encoder_embed_dim, src_dict.pad())
        if cfg.share_all_embeddings:
            if src_dict != tgt_dict:
                raise ValueError("--share-all-embeddings requires a joined dictionary "
                                 "(fairseq-preprocess --joined-dictionary)")
            if cfg.encoder_embed_dim != cfg.decoder_embed_dim:
                raise ValueError("--share-all-embeddings requires --encoder-embed-dim == --decoder-embed-dim")
            decoder_embed = encoder_embed
        else:
            decoder_embed = Embedding(len(tgt_dict), cfg.decoder_embed_dim, tgt_dict.pad())
        encoder = ResMLPEncoder(cfg, src_dict, encoder_embed)
        decoder = ResMLPDecoder(cfg, tgt_dict, decoder_embed)
        model = cls(encoder, decoder)
        model.dictionary_files = _dictionary_files(task)
        return model

    @classmethod
    def from_pretrained(cls, model_name_or_path, checkpoint_file="model.pt", data_name_or_path=".", **kwargs):
        """fairseq's hub interface (``translate``, ``sample``, ``generate``), from a fairseq
        checkpoint or from a ``resmlp-export-safe`` export (``checkpoint_file`` PREFIX.safetensors,
        read without unpickling); see ``resmlp_mt.hub``."""
        from ..hub import from_pretrained

        return from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                               archive_map=cls.hub_models(), **kwargs)

    def prepare_for_inference_(self, cfg):
        """fairseq's, and the decoder returns alignments when the generation config asks for
        them: ``--print-alignment``, or ``--replace-unk``, which reads them."""
        super().prepare_for_inference_(cfg)
        self.decoder.need_attn = replace_unk.wanted(cfg.generation)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Name the cause when a checkpoint does not fit, instead of torch's size-mismatch dump."""
        self._check_checkpoint_shapes(state_dict)
        state_dict = self._with_bias_weights(state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    # cross-attention biases a model can gain after training, and the flag that builds each
    BIAS_WEIGHTS = {"coverage": "--cross-attention-coverage", "locality": "--cross-attention-locality"}

    def _with_bias_weights(self, state_dict):
        """A checkpoint trained without cross-attention coverage (or locality), loaded to go on
        training with it: the new weights start at zero, where a new model's do, so the model
        computes what the checkpoint did until training moves them."""
        for bias, flag in self.BIAS_WEIGHTS.items():
            suffix = f".{bias}_weight"
            ours = [key for key, _ in self.named_parameters() if key.endswith(suffix)]
            theirs = [key for key in state_dict if key.endswith(suffix)]
            if theirs and not ours:
                raise CheckpointMismatchError(
                    f"the checkpoint's decoder has cross-attention {bias} but the model being built has "
                    f"none: build it with {flag} (the checkpoint's own setting)"
                )
            missing = [key for key in ours if key not in state_dict]
            if not missing:
                continue
            logger.info("the checkpoint has no cross-attention %s: the %s weights of its %d decoder layers "
                        "start at 0", bias, bias, len(missing))
            state_dict = dict(state_dict)
            for key in missing:
                state_dict[key] = torch.zeros_like(self.get_parameter(key))
        return state_dict

    def _check_checkpoint_shapes(self, state_dict) -> None:
        files = getattr(self, "dictionary_files", None) or ("source dictionary", "target dictionary")
        for side, coder, dict_file in (("source", self.encoder, files[0]), ("target", self.decoder, files[1])):
            key = f"{'encoder' if side == 'source' else 'decoder'}.embed_tokens.weight"
            if key in state_dict and state_dict[key].size(0) != coder.embed_tokens.num_embeddings:
                raise CheckpointMismatchError(
                    f"the checkpoint's {side} dictionary has {state_dict[key].size(0)} entries but "
                    f"{dict_file} has {coder.embed_tokens.num_embeddings}: use the data-bin (or the "
                    f"dict.*.txt files) the model was trained with"
                )
            key = f"{'encoder' if side == 'source' else 'decoder'}.layers.0.token_mixing.weight"
            limit = coder.max_positions()
            ours = dict(coder.named_parameters()).get("layers.0.token_mixing.weight")
            if key in state_dict and ours is not None and state_dict[key].dim() != ours.dim():
                modes = ("relative", "absolute") if state_dict[key].dim() == 1 else ("absolute", "relative")
                raise CheckpointMismatchError(
                    f"the checkpoint's {side} token mixing is {modes[0]} but the model being built is "
                    f"{modes[1]}: drop --token-mixing to use the checkpoint's own setting"
                )
            if key in state_dict and ours is not None and ours.dim() == 1 and state_dict[key].shape != ours.shape:
                raise CheckpointMismatchError(
                    f"the checkpoint's {side} token mixing has {state_dict[key].numel()} offset weights but "
                    f"--mixing-window {coder.layers[0].token_mixing.window} gives {ours.numel()}: "
                    f"drop --mixing-window to use the checkpoint's own setting"
                )
            if key in state_dict and state_dict[key].dim() == 2 and state_dict[key].size(0) != limit:
                raise CheckpointMismatchError(
                    f"the checkpoint's token-mixing matrices hold {state_dict[key].size(0)} {side} positions "
                    f"but --max-{side}-positions is {limit}: the matrix size is fixed at training time, "
                    f"so pass --max-{side}-positions {state_dict[key].size(0)}"
                )


def _dictionary_files(task):
    """The dictionary files a translation task read, to name them in errors."""
    cfg = getattr(task, "cfg", None)
    data, src, tgt = (getattr(cfg, k, None) for k in ("data", "source_lang", "target_lang"))
    if not (data and src and tgt):
        return None
    root = str(data).split(":")[0]
    return tuple(os.path.join(root, f"dict.{lang}.txt") for lang in (src, tgt))


def _set_defaults(args, **defaults):
    """fairseq's arch convention: a flag given on the command line wins over the arch."""
    for name, value in defaults.items():
        setattr(args, name, getattr(args, name, value))


def _max_positions(args, absolute: int) -> int:
    """The absolute matrices' size, or relative mixing's cap (it has no size of its own)."""
    return RELATIVE_MAX_POSITIONS if getattr(args, "token_mixing", "absolute") == "relative" else absolute


@register_model_architecture("resmlp", "resmlp_wmt_en_de")
def resmlp_wmt_en_de(args):
    """The paper's ResMLP-6 for WMT14 En-De: 6+6 layers, d 512, hidden 2048."""
    _set_defaults(
        args,
        encoder_embed_dim=512,
        encoder_ffn_embed_dim=2048,
        encoder_layers=6,
        decoder_embed_dim=getattr(args, "encoder_embed_dim", 512),
        decoder_ffn_embed_dim=getattr(args, "encoder_ffn_embed_dim", 2048),
        decoder_layers=getattr(args, "encoder_layers", 6),
        decoder_attention_heads=8,
        max_source_positions=_max_positions(args, 512),
        max_target_positions=_max_positions(args, 512),
        norm="layernorm",
        layerscale_init=0.2,
        token_mixing_init="normal",
        dropout=0.15,
        attention_dropout=0.0,
        activation_dropout=0.0,
        drop_path=0.0,
        share_decoder_input_output_embed=False,
        share_all_embeddings=False,
        no_scale_embedding=False,
        token_mixing="absolute",
        mixing_window=16,
        cross_attention_coverage=False,
        cross_attention_locality=False,
        cross_attention_locality_floor=0.0,
        cross_attention_locality_start=-1,
        cross_attention_locality_focus="argmax",
    )


@register_model_architecture("resmlp", "resmlp_wmt_en_de_12")
def resmlp_wmt_en_de_12(args):
    """ResMLP-12: 12+12 layers."""
    _set_defaults(args, encoder_layers=12, decoder_layers=12)
    resmlp_wmt_en_de(args)


@register_model_architecture("resmlp", "resmlp_wmt_en_fr")
def resmlp_wmt_en_fr(args):
    """En-Fr has ~10x more data than En-De: the paper lowers dropout to 0.1."""
    _set_defaults(args, dropout=0.1)
    resmlp_wmt_en_de(args)


@register_model_architecture("resmlp", "resmlp_wmt_en_fr_12")
def resmlp_wmt_en_fr_12(args):
    _set_defaults(args, encoder_layers=12, decoder_layers=12)
    resmlp_wmt_en_fr(args)


@register_model_architecture("resmlp", "resmlp_small")
def resmlp_small(args):
    """For Multi30k-sized data on a CPU (sentences of at most ~60 sentencepiece tokens)."""
    _set_defaults(
        args,
        encoder_embed_dim=256,
        encoder_ffn_embed_dim=1024,
        encoder_layers=6,
        decoder_layers=6,
        decoder_attention_heads=4,
        max_source_positions=_max_positions(args, 128),
        max_target_positions=_max_positions(args, 128),
        dropout=0.2,
    )
    resmlp_wmt_en_de(args)
