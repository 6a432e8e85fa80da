"""--inference-precision (resmlp_mt/precision.py): beam search in bf16 and int8 scores what a
full pass of the same model scores, is close to fp32, and runs through fairseq-generate,
fairseq-interactive and the hub, for ResMLP and fairseq's Transformer."""
import argparse
import copy
import os
import re

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.models.transformer import TransformerModel
from fairseq.models.transformer import base_architecture as transformer_base
from fairseq.sequence_generator import SequenceGenerator

from helpers import USER_DIR, build_translation_model, dictionary, random_tokens, run_cli
from resmlp_mt import precision
from resmlp_mt.models.resmlp_translation import ResMLPModel

SMALL = dict(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_layers=2, decoder_layers=2,
             decoder_attention_heads=2, max_source_positions=20, max_target_positions=20,
             share_all_embeddings=True)
MODELS = ["resmlp-absolute", "resmlp-relative", "transformer"]
EPS = {"bf16": 2.0**-8, "int8": 2.0**-8}  # bf16's unit roundoff; int8 layers compute in bf16 too


def build(kind: str, vocab: int = 40) -> torch.nn.Module:
    """A small model with random weights and shared embeddings, in evaluation mode."""
    torch.manual_seed(0)
    if kind.startswith("resmlp"):
        mode = {"token_mixing": "relative", "mixing_window": 3} if kind.endswith("relative") else {}
        return build_translation_model(vocab=vocab, **SMALL, **mode)
    d = dictionary(vocab)
    args = argparse.Namespace(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=2, decoder_attention_heads=2, max_source_positions=20,
                              max_target_positions=20, share_all_embeddings=True, dropout=0.0)
    transformer_base(args)
    task = argparse.Namespace(source_dictionary=d, target_dictionary=d)
    return TransformerModel.build_model(args, task).eval()


def sources(d, batch=5, length=8):
    src = random_tokens(batch, length, len(d), generator=torch.Generator().manual_seed(3))
    src[:, -1] = d.eos()
    src[1, :3], src[3, :5] = d.pad(), d.pad()  # left-padded, as fairseq batches sources
    return {"net_input": {"src_tokens": src, "src_lengths": src.ne(d.pad()).sum(1)}}


def full_pass_scores(model, sample, b, tokens):
    """Per-token log-probabilities of ``tokens`` for sentence ``b``, teacher-forced in one pass."""
    d = model.decoder.dictionary
    src, lengths = sample["net_input"]["src_tokens"][b : b + 1], sample["net_input"]["src_lengths"][b : b + 1]
    prev = torch.cat([tokens.new_tensor([d.eos()]), tokens[:-1]])[None]
    logits = model.decoder(prev, model.encoder(src, lengths))[0]
    lprobs = model.get_normalized_probs((logits, None), log_probs=True)[0]
    assert lprobs.dtype == torch.float32  # fairseq's log-softmax is fp32 whatever the model's dtype
    return lprobs.gather(1, tokens[:, None])[:, 0], logits


@pytest.mark.parametrize("inference_precision", ["bf16", "int8"])
@pytest.mark.parametrize("kind", MODELS)
def test_beam_search_scores_equal_a_full_pass_in_the_same_precision(kind, inference_precision):
    """Beam 4 (incremental steps, reorders, sentences leaving the batch) in bf16 / int8 against
    teacher-forced full passes of the same converted model, and of the fp32 model.

    Tolerances, per token, in units of u = 2^-8 (bf16's unit roundoff) times the largest
    logit magnitude M of the hypothesis (a log-probability moves by at most twice the largest
    change of a logit). Both precisions compute in bf16 (int8 holds int8 weights, the same in
    both passes), and the incremental step and the full pass compute the same sums in other
    orders and shapes: their bf16 roundings differ by about u per rounded result, and the
    logits are rounded to bf16 themselves (u·M/2 each): 4·u·M. Against fp32 every weight and
    activation is rounded once more, at every layer: 8·u·M for bf16; int8 weights are rounded
    to steps of 1/127 of their row's largest weight (2u of it), not u of their own value:
    16·u·M. (Measured here: at most 2.2 u·M within a precision, 1.3 against fp32.)
    """
    model = build(kind)
    d = model.decoder.dictionary
    with torch.no_grad():  # EOS likely enough that sentences end at different steps
        model.decoder.embed_tokens.weight[d.eos()] *= 1.3  # (and most hypotheses longer than the window)
    reference = copy.deepcopy(model)
    precision.convert_(model, inference_precision)
    assert model.resmlp_inference_precision == inference_precision
    sample = sources(d)
    with torch.inference_mode():
        beams = SequenceGenerator([model], d, beam_size=4, max_len_b=16, min_len=2).forward(sample)
        assert len({len(h[0]["tokens"]) for h in beams}) > 1, "no sentence left the batch early"
        same, fp32 = 4, (8 if inference_precision == "bf16" else 16)
        worst = {"same": 0.0, "fp32": 0.0}
        for b, beam in enumerate(beams):
            assert len(beam) == 4
            for hypothesis in beam:
                scores = hypothesis["positional_scores"]
                assert scores.dtype == torch.float32
                full, logits = full_pass_scores(model, sample, b, hypothesis["tokens"])
                unit = EPS[inference_precision] * logits.float().abs().max().item()
                worst["same"] = max(worst["same"], ((scores - full).abs().max() / unit).item())
                torch.testing.assert_close(scores, full, rtol=0, atol=same * unit)
                exact, _ = full_pass_scores(reference, sample, b, hypothesis["tokens"])
                worst["fp32"] = max(worst["fp32"], ((scores - exact).abs().max() / unit).item())
                torch.testing.assert_close(scores, exact, rtol=0, atol=fp32 * unit)
                assert hypothesis["score"].item() == pytest.approx(scores.mean().item(), abs=1e-5)
    print(kind, inference_precision, {k: f"{v:.2f} u·M" for k, v in worst.items()})  # pytest -s shows it


@pytest.mark.parametrize("kind", MODELS)
def test_int8_quantizes_every_linear_but_the_output_projection(kind):
    from torchao.quantization import Int8Tensor

    model = precision.convert_(build(kind), "int8")
    projection = model.decoder.output_projection
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not projection]
    assert linears and all(isinstance(m.weight, Int8Tensor) for m in linears)
    embeddings = model.encoder.embed_tokens.weight
    assert type(embeddings.data) is torch.Tensor and embeddings.dtype == torch.bfloat16
    assert model.decoder.embed_tokens.weight is embeddings  # still shared by encoder and decoder
    assert projection.weight is embeddings  # the bf16 projection, still tied


@pytest.mark.parametrize("inference_precision", ["bf16", "int8"])
@pytest.mark.parametrize("kind", MODELS)
def test_the_best_words_get_fp32_logits(kind, inference_precision):
    """The converted model's logits against float64 products of the same (bf16) features and
    weights: the 8 largest of each position (beam 4's candidates) to fp32 rounding, the rest
    to bf16's, which is all a plain bf16 projection gives. (The hook recomputes the 16
    largest bf16 logits, which hold the 8 largest exact ones: a swap at the 16th is fine.)"""
    model = precision.convert_(build(kind, vocab=300), inference_precision)
    projection = model.decoder.output_projection
    seen = {}
    projection.register_forward_hook(lambda module, inputs, out: seen.update(features=inputs[0], logits=out))
    d = model.decoder.dictionary
    sample = sources(d)
    prev = random_tokens(5, 7, len(d), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        model.decoder(prev, model.encoder(**sample["net_input"]))
    features, logits = seen["features"], seen["logits"]
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    reference = features.double() @ projection.weight.detach().double().t()
    top = reference.topk(8, dim=-1).indices
    top_error = (logits.double() - reference).gather(-1, top).abs() / reference.gather(-1, top).abs()
    assert top_error.max() < 2.0**-20  # fp32 sums of 32 products (bf16's own: 2^-9)
    rest = (logits.double() - reference).abs() / reference.abs().clamp_min(1e-3)
    assert rest.max() < 2.0**-7 and rest.max() > 2.0**-20  # the others: bf16 GEMM outputs


def test_bf16_casts_every_floating_tensor():
    model = precision.convert_(build("resmlp-relative"), "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert precision.convert_(model, "bf16") is model  # again: nothing to do
    with pytest.raises(precision.PrecisionError, match="already converted to bf16"):
        precision.convert_(model, "int8")


def test_bad_values_and_missing_support_are_named(monkeypatch):
    with pytest.raises(precision.PrecisionError, match="'fp16' is not one of fp32, bf16, int8"):
        precision.check("fp16")
    assert precision.check(None) == "fp32"
    for feature in ("avx512_bf16", "amx_tile"):
        monkeypatch.setattr(torch.cpu, f"_is_{feature}_supported", lambda: False, raising=False)
    for name in ("bf16", "int8"):
        with pytest.raises(precision.PrecisionError, match="AVX512-BF16 or AMX.*--inference-precision fp32"):
            precision.check(name)
    monkeypatch.undo()
    monkeypatch.setitem(__import__("sys").modules, "torchao.quantization", None)  # import fails
    with pytest.raises(precision.PrecisionError, match="int8 needs torchao"):
        precision.check("int8")
    assert precision.check("bf16") == "bf16"


def generation_cfg(*argv):
    args = options.parse_args_and_arch(options.get_generation_parser(), ["data", "--user-dir", USER_DIR, *argv])
    return convert_namespace_to_omegaconf(args)


def test_the_option_reaches_the_generation_config():
    assert generation_cfg().generation.inference_precision == "fp32"
    assert generation_cfg("--inference-precision", "int8").generation.inference_precision == "int8"
    assert generation_cfg("--bf16").generation.inference_precision == "bf16"  # fairseq's flag, for generation
    assert generation_cfg("--bf16", "--inference-precision", "bf16").generation.inference_precision == "bf16"
    with pytest.raises(precision.PrecisionError, match="--bf16 and --inference-precision int8 contradict"):
        generation_cfg("--bf16", "--inference-precision", "int8")
    with pytest.raises(SystemExit):
        generation_cfg("--inference-precision", "fp16")


def test_prepare_for_inference_applies_it_to_every_fairseq_model():
    for kind in ("resmlp-absolute", "transformer"):
        model = build(kind)
        model.prepare_for_inference_(generation_cfg("--inference-precision", "bf16"))
        assert model.resmlp_inference_precision == "bf16"
        assert next(model.parameters()).dtype == torch.bfloat16
        plain = build(kind)
        plain.prepare_for_inference_(generation_cfg())
        assert next(plain.parameters()).dtype == torch.float32


# Through fairseq's tools and the hub, with trained models -----------------------------------

TINY_RESMLP = ["--arch", "resmlp_small", "--encoder-layers", "2", "--decoder-layers", "2",
               "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
               "--token-mixing", "relative", "--mixing-window", "4", "--max-source-positions", "64",
               "--max-target-positions", "64"]
TINY_TRANSFORMER = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
                    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                    "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads",
                    "2", "--max-source-positions", "64", "--max-target-positions", "64"]


LR = {"resmlp": "3e-3", "transformer": "2e-3"}  # (post-norm: the Transformer needs a lower rate, more updates)
UPDATES = {"resmlp": "300", "transformer": "600"}


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    """A ResMLP and a Transformer trained on the reversal task with shared embeddings, to about
    60 and 40 BLEU on its test set."""
    root = tmp_path_factory.mktemp("precision")
    paths = {}
    for name, arch in (("resmlp", TINY_RESMLP), ("transformer", TINY_TRANSFORMER)):
        save = root / name
        run_cli("fairseq-train", tiny_data_bin, "--user-dir", USER_DIR, *arch, "--share-all-embeddings",
                "--dropout", "0.0", "--optimizer", "adam", "--lr", LR[name], "--criterion", "cross_entropy",
                "--max-tokens", "500", "--max-update", UPDATES[name], "--cpu", "--seed", "3", "--save-dir", save,
                "--no-epoch-checkpoints", "--no-save-optimizer-state", "--log-format", "simple")
        paths[name] = str(save / "checkpoint_last.pt")
    return paths


def generate(data, path, *extra):
    out = run_cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", path, "--gen-subset", "test",
                  "--beam", "4", "--batch-size", "8", "--cpu", *extra).stdout
    hypotheses = {int(i): h for i, h in re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)}
    bleu = float(re.search(r"Generate test with beam=4: BLEU4? = ([\d.]+)", out).group(1))
    return hypotheses, bleu


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resmlp", "transformer"])
def test_fairseq_generate_in_each_precision_scores_every_sentence(tiny_data_bin, trained, name):
    results = {p: generate(tiny_data_bin, trained[name], "--inference-precision", p) for p in precision.PRECISIONS}
    hypotheses, bleu = results["fp32"]
    assert sorted(hypotheses) == list(range(13)) and bleu > 30, results  # trained: it reverses
    for p in ("bf16", "int8"):
        assert sorted(results[p][0]) == list(range(13))
        assert abs(results[p][1] - bleu) <= 5.0, results  # 13 short sentences: one word moves BLEU by ~1
    assert generate(tiny_data_bin, trained[name], "--bf16")[0] == results["bf16"][0]


@pytest.mark.slow
def test_fairseq_interactive_with_the_option(tiny_data_bin, trained, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text("w1 w2 w3 w4\nw5 w6 w7\n")
    out = run_cli("fairseq-interactive", tiny_data_bin, "--user-dir", USER_DIR, "--path", trained["resmlp"],
                  "--source-lang", "src", "--target-lang", "tgt", "--beam", "4", "--input", inputs, "--cpu",
                  "--inference-precision", "int8")
    lines = re.findall(r"^H-(\d+)\t\S+\t(.*)$", out.stdout, re.M)
    assert [i for i, _ in lines] == ["0", "1"]
    assert "inference precision int8" in out.stdout + out.stderr


@pytest.mark.slow
def test_hub_with_the_option(tiny_data_bin, trained):
    directory, checkpoint = os.path.split(trained["resmlp"])
    hubs = {p: ResMLPModel.from_pretrained(directory, checkpoint_file=checkpoint,
                                           data_name_or_path=str(tiny_data_bin), inference_precision=p)
            for p in precision.PRECISIONS}
    sentence = "w3 w17 w5 w8"
    for p, hub in hubs.items():
        assert hub.models[0].resmlp_inference_precision == p
        assert hub.translate(sentence, beam=4) == "w8 w5 w17 w3", p
    with pytest.raises(precision.PrecisionError, match="'int4' is not one of"):
        ResMLPModel.from_pretrained(directory, checkpoint_file=checkpoint, data_name_or_path=str(tiny_data_bin),
                                    inference_precision="int4")
