"""Alignments: the decoder's cross-attention weights, fairseq-generate --print-alignment, --replace-unk."""
import os
import re
import shutil

import pytest
import torch

from helpers import USER_DIR, build_translation_model, random_tokens, run_cli

torch.manual_seed(0)
SMALL = dict(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_layers=2, decoder_layers=3,
             decoder_attention_heads=4, max_source_positions=20, max_target_positions=20)
MODES = pytest.mark.parametrize("mode", [{}, {"token_mixing": "relative", "mixing_window": 3}],
                                ids=["absolute", "relative"])
LENGTHS = [7, 4, 6]  # sources, left-padded in one batch as fairseq does


def left_padded_sources(lengths=LENGTHS, vocab=40):
    sentences = [random_tokens(1, n, vocab)[0] for n in lengths]
    batch = torch.full((len(lengths), max(lengths)), 1)
    for b, s in enumerate(sentences):
        batch[b, batch.size(1) - len(s):] = s
    return sentences, batch


def cross_attention_inputs(model, src, prev):
    """The last layer's cross-attention inputs (query, key, key padding mask) in a plain pass."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(query=kwargs["query"], key=kwargs["key"], mask=kwargs["key_padding_mask"])

    handle = model.decoder.layers[-1].cross_attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out, extra = model.decoder(prev, model.encoder(src, torch.tensor([src.size(1)])))
    finally:
        handle.remove()
    assert extra["attn"] == [None]  # not asked for: no weights
    return seen


@MODES
def test_decoder_attn_is_the_last_layers_cross_attention_averaged_over_heads(mode):
    model = build_translation_model(**SMALL, **mode)
    sentences, src = left_padded_sources()
    prev = random_tokens(len(LENGTHS), 5, 40)
    enc = model.encoder(src, torch.tensor(LENGTHS))
    logits, extra = model.decoder(prev, enc, alignment_layer=len(model.decoder.layers) - 1)
    attn = extra["attn"][0]
    assert attn.shape == (len(LENGTHS), 5, src.size(1))
    torch.testing.assert_close(logits, model.decoder(prev, enc)[0], rtol=1e-5, atol=1e-5)
    two_heads = model.decoder(prev, enc, alignment_heads=2)[1]["attn"][0]
    for b, s in enumerate(sentences):
        # brute force, sentence by sentence: fairseq's MultiheadAttention on the same inputs
        seen = cross_attention_inputs(model, s[None], prev[b:b + 1])
        mha = model.decoder.layers[-1].cross_attention
        _, expected = mha(seen["query"], seen["key"], seen["key"], key_padding_mask=seen["mask"], need_weights=True)
        pads = src.size(1) - len(s)
        torch.testing.assert_close(attn[b, :, pads:], expected[0], rtol=1e-5, atol=1e-6)
        assert attn[b, :, :pads].abs().sum() == 0  # the source's padding columns
        _, heads = mha(seen["query"], seen["key"], seen["key"], key_padding_mask=seen["mask"],
                       need_head_weights=True, static_kv=True)
        torch.testing.assert_close(two_heads[b, :, pads:], heads[:2, 0].mean(0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(attn[b, :, pads:].sum(-1), torch.ones(5), rtol=1e-5, atol=1e-5)


def test_alignment_layer_picks_the_layer():
    model = build_translation_model(**SMALL)
    _, src = left_padded_sources()
    enc = model.encoder(src, torch.tensor(LENGTHS))
    prev = random_tokens(len(LENGTHS), 4, 40)
    per_layer = [model.decoder(prev, enc, alignment_layer=i)[1]["attn"][0] for i in range(3)]
    torch.testing.assert_close(model.decoder(prev, enc, alignment_layer=-1)[1]["attn"][0], per_layer[2])
    assert not torch.allclose(per_layer[0], per_layer[2])
    with pytest.raises(ValueError, match="alignment_layer 3"):
        model.decoder(prev, enc, alignment_layer=3)


@MODES
def test_incremental_attn_equals_full_pass(mode):
    model = build_translation_model(**SMALL, **mode)
    model.decoder.make_generation_fast_(need_attn=True)  # what --print-alignment does
    _, src = left_padded_sources()
    beam = 2
    enc = model.encoder(src, torch.tensor(LENGTHS))
    expand = torch.arange(len(LENGTHS)).repeat_interleave(beam)  # beam search's first reorder
    enc = model.encoder.reorder_encoder_out(enc, expand)
    src = src.index_select(0, expand)
    prev = random_tokens(src.size(0), 8, 40)
    state, steps = {}, []
    for t in range(4):
        steps.append(model.decoder(prev[:, : t + 1], enc, incremental_state=state)[1]["attn"][0])
    order = torch.tensor([1, 1, 3, 2, 4, 5])  # each sentence reorders its own beam
    model.decoder.reorder_incremental_state_scripting(state, order)
    enc = model.encoder.reorder_encoder_out(enc, order)
    prev = torch.cat([prev[:, :4].index_select(0, order), prev[:, 4:]], 1)
    steps = [s.index_select(0, order) for s in steps]
    for t in range(4, 8):
        steps.append(model.decoder(prev[:, : t + 1], enc, incremental_state=state)[1]["attn"][0])
    full_src = src.index_select(0, order)
    full = model.decoder(prev, model.encoder(full_src, torch.tensor(LENGTHS).index_select(0, expand)))[1]["attn"][0]
    assert all(s.shape == (6, 1, src.size(1)) for s in steps)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-6)


def test_full_pass_after_a_beam_search_ignores_its_beam_size():
    """Beam search switches the decoder's cross-attention to beamable keys and values; a later
    full pass (alignments, or quantized projections: both take fairseq's own attention path)
    computes them per sentence again, instead of reading every 4th sentence's or failing."""
    from fairseq.sequence_generator import SequenceGenerator

    model = build_translation_model(**SMALL)
    d = model.decoder.dictionary
    _, src = left_padded_sources()
    src[:, -1] = d.eos()
    lengths = torch.tensor(LENGTHS)
    prev = random_tokens(len(LENGTHS), 5, 40)
    before = model.decoder(prev, model.encoder(src, lengths), alignment_layer=-1)
    SequenceGenerator([model], d, beam_size=4, max_len_b=5).forward(
        {"net_input": {"src_tokens": src, "src_lengths": lengths}})
    after = model.decoder(prev, model.encoder(src, lengths), alignment_layer=-1)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)
    torch.testing.assert_close(after[1]["attn"][0], before[1]["attn"][0], rtol=0, atol=0)


def test_no_weights_unless_asked():
    model = build_translation_model(**SMALL)
    _, src = left_padded_sources()
    enc = model.encoder(src, torch.tensor(LENGTHS))
    prev = random_tokens(len(LENGTHS), 4, 40)
    calls = []
    for layer in model.decoder.layers:
        layer.cross_attention.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["need_weights"]),
                                                        with_kwargs=True)
    assert model.decoder(prev, enc)[1]["attn"] == [None]
    state = {}
    assert model.decoder(prev[:, :1], enc, incremental_state=state)[1]["attn"] == [None]
    assert calls == [False] * 6


# ---------------------------------------------------------------- end to end, with fairseq's tools

TINY_RESMLP = ["--arch", "resmlp_small", "--encoder-layers", "2", "--decoder-layers", "2",
               "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
               "--max-source-positions", "16", "--max-target-positions", "16"]
TINY_TRANSFORMER = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
                    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
                    "--decoder-attention-heads", "2"]
MODELS = {"resmlp": TINY_RESMLP, "transformer": TINY_TRANSFORMER}


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    """A tiny ResMLP and a tiny Transformer, trained alike for a few dozen updates."""
    paths = {}
    for name, arch in MODELS.items():
        save = tmp_path_factory.mktemp(f"align-{name}")
        run_cli("fairseq-train", tiny_data_bin, "--user-dir", USER_DIR, *arch, "--optimizer", "adam",
                "--lr", "2e-3", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                "--max-tokens", "400", "--max-update", "40", "--cpu", "--seed", "3", "--save-dir", save,
                "--no-epoch-checkpoints", "--log-format", "simple")
        paths[name] = os.path.join(save, "checkpoint_last.pt")
    return paths


def generate(data, checkpoint, *extra):
    out = run_cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", checkpoint, "--gen-subset", "test",
                  "--beam", "3", "--batch-size", "5", "--cpu", *extra).stdout
    lines = {}
    for line in out.splitlines():
        m = re.match(r"([A-Z])-(\d+)\t(.*)", line)
        if m:
            lines.setdefault(int(m.group(2)), {})[m.group(1)] = m.group(3)
    return lines


def parse_hard(text):
    return [tuple(map(int, pair.split("-"))) for pair in text.split()]


def parse_soft(text):
    return [[float(p) for p in row.split(",")] for row in text.split()]


@pytest.mark.slow
def test_print_alignment_hard_and_soft_as_for_the_transformer(tiny_data_bin, trained):
    formats = {}
    for name, checkpoint in trained.items():
        hard = generate(tiny_data_bin, checkpoint, "--print-alignment")
        soft = generate(tiny_data_bin, checkpoint, "--print-alignment", "soft")
        assert len(hard) == len(soft) == 13
        formats[name] = {i: (sorted(hard[i]), sorted(soft[i])) for i in hard}
        for i in hard:
            assert "A" in hard[i] and "A" in soft[i], hard[i]
            assert hard[i]["H"] == soft[i]["H"]
            source = hard[i]["S"].split()
            target = hard[i]["H"].split("\t")[1].split()
            pairs = parse_hard(hard[i]["A"])
            assert re.fullmatch(r"(\d+-\d+( \d+-\d+)*)?", hard[i]["A"])
            # one alignment per target token, in order, each to a source token (EOS excluded)
            assert [t for _, t in pairs] == list(range(len(target)))
            assert all(0 <= s < len(source) for s, _ in pairs)
            rows = parse_soft(soft[i]["A"])
            # soft: per target token and the final EOS, a probability per source token and EOS
            assert len(rows) == len(target) + 1
            assert all(len(row) == len(source) + 1 for row in rows)
            assert all(abs(sum(row) - 1) < 1e-4 for row in rows), rows
            # hard = the argmax of the soft weights, the source's EOS left out
            assert [s for s, _ in pairs] == [max(range(len(source)), key=row.__getitem__) for row in rows[:-1]]
    # the same lines, and the same alignment lines per sentence, as fairseq's Transformer prints
    assert {i: f for i, (f, _) in formats["resmlp"].items()} == {i: f for i, (f, _) in formats["transformer"].items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_replace_unk_copies_the_aligned_source_word(tiny_data_bin, trained, tmp_path, name):
    """--replace-unk reads raw text; --unkpen -4 makes the model write <unk>s for it to replace.
    On fairseq main it crashed at the first <unk> for every model (see resmlp_mt/replace_unk.py)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for lang in ("src", "tgt"):
        shutil.copy(os.path.join(tiny_data_bin, f"dict.{lang}.txt"), raw / f"dict.{lang}.txt")
    with open(raw / "test.src-tgt.src", "w") as fs, open(raw / "test.src-tgt.tgt", "w") as ft:
        for i in range(6):
            words = [f"w{(7 * i + k) % 40}" for k in range(3 + i)]
            fs.write(" ".join(words) + "\n")
            ft.write(" ".join(reversed(words)) + "\n")
    (raw / "align.dict").write_text("".join(f"w{k} X{k}\n" for k in range(40)))
    common = ["--dataset-impl", "raw", "--unkpen", "-4"]

    def hypotheses(*extra):
        lines = generate(raw, trained[name], *common, *extra)
        assert len(lines) == 6
        return lines, {i: lines[i]["H"].split("\t")[1].split() for i in lines}

    _, plain = hypotheses()
    assert any("<unk>" in words for words in plain.values()), plain
    lines, copied = hypotheses("--print-alignment", "--replace-unk")
    for i, words in plain.items():
        source = lines[i]["S"].split()
        aligned = {t: s for s, t in parse_hard(lines[i]["A"])}
        assert len(copied[i]) == len(words)
        for t, word in enumerate(words):
            assert copied[i][t] == (source[aligned[t]] if word == "<unk>" else word)
    # without --print-alignment, with soft alignments, with an alignment dictionary
    assert hypotheses("--replace-unk")[1] == copied
    assert hypotheses("--print-alignment", "soft", "--replace-unk")[1] == copied
    mapped = {i: [w.replace("w", "X") if u == "<unk>" else w for w, u in zip(copied[i], plain[i])] for i in plain}
    assert hypotheses("--replace-unk", raw / "align.dict")[1] == mapped
