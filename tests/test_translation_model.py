"""The ResMLP translation model: causality, incremental decoding, padding, sizes."""

import pytest
import torch
from fairseq import options

from helpers import USER_DIR, build_translation_model, dictionary, random_tokens
from resmlp_mt.modules import SequenceTooLongError

torch.manual_seed(0)
SMALL = dict(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_layers=2, decoder_layers=2,
             decoder_attention_heads=2, max_source_positions=20, max_target_positions=20)
# The paper's absolute matrices, relative mixing with a window shorter than the sentences, and
# that with cross-attention coverage, and with locality too (their weights made non-zero below:
# they start at 0), under a floor that some of those weights are below, reading from the start,
# with distances from each head's mean position.
MODES = pytest.mark.parametrize("mode", [{}, {"token_mixing": "relative", "mixing_window": 3},
                                         {"token_mixing": "relative", "mixing_window": 3,
                                          "cross_attention_coverage": True},
                                         {"token_mixing": "relative", "mixing_window": 3,
                                          "cross_attention_coverage": True, "cross_attention_locality": True,
                                          "cross_attention_locality_floor": 0.6,
                                          "cross_attention_locality_start": 2,
                                          "cross_attention_locality_focus": "mean"}],
                                ids=["absolute", "relative", "relative+coverage", "relative+coverage+locality"])


def build(mode):
    """The SMALL model in ``mode``; coverage biases (beta) drawn in [0.5, 2.5] per head and
    locality biases (gamma) in [0.2, 1.0], so that they change the attention these tests follow;
    each layer's first gamma is 0.2, under the locality mode's floor (0.6), so the floor acts."""
    model = build_translation_model(**SMALL, **mode)
    for name, weight in model.named_parameters():
        with torch.no_grad():  # x CoverageAttention.GAIN
            if name.endswith("coverage_weight"):
                weight.uniform_(0.05, 0.25)
            elif name.endswith("locality_weight"):
                weight.uniform_(0.02, 0.1)
                weight[0, 0] = 0.02
    return model


@MODES
def test_decoder_is_causal(mode):
    model = build(mode)
    src = random_tokens(2, 7, 40)
    enc = model.encoder(src, torch.tensor([7, 7]))
    prev = random_tokens(2, 9, 40)
    out = model.decoder(prev, enc)[0]
    for t in range(8):
        changed = prev.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1 - 4) % 36 + 4
        out2 = model.decoder(changed, enc)[0]
        torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])


@MODES
def test_incremental_decoding_matches_full_pass_with_beam_reorder(mode):
    model = build(mode)
    src = random_tokens(2, 6, 40)
    src[1, :2] = 1  # a left-padded, shorter source
    beam = 2
    src = src.repeat_interleave(beam, 0)  # as fairseq's SequenceGenerator: sentence-major beams
    enc = model.encoder(src, torch.tensor([6, 6, 4, 4]))
    prev = random_tokens(4, 10, 40)
    state = {}
    steps = [model.decoder(prev[:, : t + 1], enc, incremental_state=state)[0] for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), model.decoder(prev[:, :5], enc)[0], rtol=1e-5, atol=1e-5)

    order = torch.tensor([1, 1, 3, 2])  # each sentence's beam reorders its own hypotheses
    model.decoder.reorder_incremental_state_scripting(state, order)
    enc = model.encoder.reorder_encoder_out(enc, order)
    prev = torch.cat([prev[:, :5].index_select(0, order), prev[:, 5:]], 1)
    steps = [model.decoder(prev[:, : t + 1], enc, incremental_state=state)[0] for t in range(5, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), model.decoder(prev, enc)[0][:, 5:], rtol=1e-5, atol=1e-5)

    # finished sentences leave the batch: fairseq then reorders to a smaller batch
    order = torch.tensor([2, 3])
    model.decoder.reorder_incremental_state_scripting(state, order)
    enc = model.encoder.reorder_encoder_out(enc, order)
    prev = torch.cat([prev.index_select(0, order), random_tokens(2, 2, 40)], 1)
    steps = [model.decoder(prev[:, : t + 1], enc, incremental_state=state)[0] for t in range(10, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), model.decoder(prev, enc)[0][:, 10:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("left_pad", [True, False])
@MODES
def test_encoder_output_does_not_depend_on_batch_or_padding_side(left_pad, mode):
    model = build(mode)
    lengths = [9, 4, 6, 1]
    sentences = [random_tokens(1, n, 40)[0] for n in lengths]
    batch = torch.full((4, 9), 1)
    for b, s in enumerate(sentences):
        if left_pad:
            batch[b, 9 - len(s):] = s
        else:
            batch[b, : len(s)] = s
    out = model.encoder(batch, torch.tensor(lengths))
    assert out["encoder_padding_mask"][0].sum(1).tolist() == [9 - n for n in lengths]
    for b, s in enumerate(sentences):
        alone = model.encoder(s[None], torch.tensor([len(s)]))["encoder_out"][0][:, 0]
        # The encoder puts every sentence's tokens first (right padding) whatever the input side.
        torch.testing.assert_close(out["encoder_out"][0][: len(s), b], alone, rtol=1e-5, atol=1e-5)


def test_over_length_inputs_name_length_and_limit():
    model = build_translation_model(**SMALL)
    with pytest.raises(SequenceTooLongError, match="21 tokens.*--max-source-positions=20"):
        model.encoder(random_tokens(1, 21, 40), torch.tensor([21]))
    enc = model.encoder(random_tokens(1, 5, 40), torch.tensor([5]))
    with pytest.raises(SequenceTooLongError, match="21 tokens.*--max-target-positions=20"):
        model.decoder(random_tokens(1, 21, 40), enc)
    assert model.max_positions() == (20, 20)


def test_wmt_en_de_parameter_count_derived_by_hand():
    vocab, d, h, L = 1000, 512, 2048, 512
    model = build_translation_model("resmlp_wmt_en_de", vocab=vocab)
    layernorm, layerscale = 2 * d, d
    mlp = d * h + h + h * d + d
    mixing = L * L + L
    encoder_layer = layernorm + mixing + layerscale + layernorm + mlp + layerscale
    cross_attention = 4 * (d * d + d)  # q, k, v, out projections: the same for any number of heads
    decoder_layer = encoder_layer + layernorm + cross_attention + layerscale
    expected = 3 * vocab * d + 6 * encoder_layer + 6 * decoder_layer + 2 * layernorm
    assert sum(p.numel() for p in model.parameters()) == expected


def test_relative_mixing_parameters_derived_by_hand_and_free_of_lengths():
    vocab, K = 1000, 16
    absolute = build_translation_model("resmlp_wmt_en_de", vocab=vocab)
    relative = build_translation_model("resmlp_wmt_en_de", vocab=vocab, token_mixing="relative", mixing_window=K)
    per_layer_absolute = 512 * 512 + 512  # L x L weights + L biases, L = 512 positions
    encoder_relative, decoder_relative = (2 * K + 1) + 2 + 1, (K + 1) + 1 + 1  # offsets, far means, bias
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(absolute) - count(relative) == 6 * (per_layer_absolute - encoder_relative) + 6 * (
        per_layer_absolute - decoder_relative)
    assert relative.max_positions() == (4096, 4096)  # a cap, not a matrix size
    capped = build_translation_model("resmlp_wmt_en_de", vocab=vocab, token_mixing="relative",
                                     max_source_positions=9000)
    assert count(capped) == count(relative) and capped.max_positions() == (9000, 4096)


def test_checkpoint_of_the_other_mixing_mode_gets_a_clear_error():
    relative = build_translation_model(**SMALL, token_mixing="relative", mixing_window=3).state_dict()
    with pytest.raises(ValueError, match="source token mixing is relative but the model being built is absolute"):
        build_translation_model(**SMALL).load_state_dict(relative)
    with pytest.raises(ValueError, match="7 offset weights but --mixing-window 4 gives 9"):
        build_translation_model(**SMALL, token_mixing="relative", mixing_window=4).load_state_dict(relative)


@pytest.mark.parametrize(
    "arch, layers, dropout",
    [("resmlp_wmt_en_de", 6, 0.15), ("resmlp_wmt_en_de_12", 12, 0.15),
     ("resmlp_wmt_en_fr", 6, 0.1), ("resmlp_wmt_en_fr_12", 12, 0.1)],
)
def test_paper_archs_through_fairseq_option_parsing(arch, layers, dropout, tmp_path):
    dictionary(10).save(str(tmp_path / "dict.en.txt"))
    dictionary(10).save(str(tmp_path / "dict.de.txt"))
    args = options.parse_args_and_arch(
        options.get_training_parser(), [str(tmp_path), "--user-dir", USER_DIR, "--arch", arch, "--task", "translation"]
    )
    assert (args.encoder_layers, args.decoder_layers, args.dropout) == (layers, layers, dropout)
    assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.layerscale_init) == (512, 2048, 0.2)
    # a flag on the command line wins over the arch's default
    args = options.parse_args_and_arch(options.get_training_parser(), [str(tmp_path), "--user-dir", USER_DIR,
                                       "--arch", arch, "--dropout", "0.3", "--encoder-layers", "3"])
    assert (args.dropout, args.encoder_layers) == (0.3, 3)


def test_shared_embeddings():
    model = build_translation_model(**SMALL, share_all_embeddings=True)
    assert model.encoder.embed_tokens is model.decoder.embed_tokens
    assert model.decoder.output_projection.weight is model.encoder.embed_tokens.weight


def test_checkpoint_that_does_not_fit_gets_a_clear_error():
    trained = build_translation_model(vocab=40, **SMALL).state_dict()
    with pytest.raises(ValueError, match="source dictionary has 40 entries but source dictionary has 48"):
        build_translation_model(vocab=48, **SMALL).load_state_dict(trained)
    with pytest.raises(ValueError, match="hold 20 source positions but --max-source-positions is 32.*"
                                         "--max-source-positions 20"):
        build_translation_model(vocab=40, **{**SMALL, "max_source_positions": 32}).load_state_dict(trained)


@MODES
def test_beam_search_scores_equal_a_full_forward_pass_of_each_hypothesis(mode):
    """fairseq's SequenceGenerator (beam 4: incremental steps, beam reorders, sentences leaving
    the batch, beamable cross-attention, lazily reordered encoder states) against teacher-forced
    full passes: each hypothesis' per-token scores are its log-probabilities under the model."""
    from fairseq.sequence_generator import SequenceGenerator

    torch.manual_seed(0)
    model = build(mode)
    d = model.decoder.dictionary
    with torch.no_grad():  # EOS likely enough that sentences end at different steps
        model.decoder.output_projection.weight[d.eos()] *= 2.5 if mode else 3
    src = random_tokens(5, 8, 40, generator=torch.Generator().manual_seed(3))
    src[:, -1] = d.eos()
    src[1, :3], src[3, :5] = d.pad(), d.pad()  # left-padded, as fairseq batches sources
    lengths = src.ne(d.pad()).sum(1)
    sample = {"net_input": {"src_tokens": src, "src_lengths": lengths}}
    beams = SequenceGenerator([model], d, beam_size=4, max_len_b=12, min_len=2).forward(sample)
    assert len({len(h[0]["tokens"]) for h in beams}) > 1, "no sentence left the batch early"
    assert [len(beam) for beam in beams] == [4] * 5
    greedy = SequenceGenerator([model], d, beam_size=1, max_len_b=12, min_len=2).forward(sample)  # after beam 4
    for b, beam in enumerate(beams):
        for hypothesis in beam + greedy[b]:
            tokens = hypothesis["tokens"]
            prev = torch.cat([tokens.new_tensor([d.eos()]), tokens[:-1]])[None]
            enc = model.encoder(src[b : b + 1], lengths[b : b + 1])
            logits = model.decoder(prev, enc)[0]
            expected = model.get_normalized_probs((logits, None), log_probs=True)[0].gather(1, tokens[:, None])[:, 0]
            torch.testing.assert_close(hypothesis["positional_scores"], expected, rtol=1e-4, atol=1e-4)
