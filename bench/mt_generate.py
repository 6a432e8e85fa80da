"""Beam-4 generation speed, ResMLP vs fairseq's Transformer, and the cost of one decoder step.

Generation runs fairseq-generate's own code: with --data, the real CLI (--cpu) on the
data-bin's test split, timed by its own "Translated N sentences in S s" line (start-up
excluded), the models alternating run by run; without, fairseq's SequenceGenerator
in-process through ``task.inference_step`` on synthetic Multi30k-like sources,
--batch-size sentences at a time, the models alternating batch by batch (rate: the
sentences over the sum of each batch's median time; ratio: median of per-batch ratios).
The weights are random, so the output length is forced, --min-len = --max-len-b
= L with --max-len-a 0: EOS is banned before step L and forced at it, so both models
decode exactly L + 1 steps per sentence and do the same amount of beam search.

Decoder step: the ResMLP decoder alone, the incremental step (a batch of beam x
batch-size hypotheses) after a cached prefix of t tokens, along whole decodings with
and without the reorder of the caches that beam search does after each step. Causal
token mixing reads the whole cached prefix, so a step costs a + b*t, b proportional to
hypotheses x d x layers: the fitted slope is printed, also per (position x hypothesis x
channel x layer).

Alignments (--alignments, always with --tiny): beam search with and without
--print-alignment hard, and ResMLP also with its decoder as it was before alignments
existed (the baseline that alignments off must match), all alternating batch by batch.

    python bench/mt_generate.py                    # demo and wmt sizes, synthetic sources
    python bench/mt_generate.py --data DATA_BIN    # fairseq-generate on DATA_BIN's test split
    python bench/mt_generate.py --sizes demo --alignments

With --precisions fp32,bf16,int8 every model also runs in each inference precision
(``resmlp_mt.precision``: converted in-process, or fairseq-generate --inference-precision),
all (model, precision) contenders interleaved, and each gets its ratio against fp32.

    python bench/mt_generate.py --sizes demo --precisions fp32,bf16,int8
"""
import copy
import os
import re
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import torch
from fairseq import utils
from fairseq.modules import MultiheadAttention
from omegaconf import OmegaConf

from benchlib import (
    USER_DIR,
    cycling,
    environment,
    interleaved,
    median,
    paired_speedup,
    parser,
    pass_seconds,
    ratio_line,
    report,
    setup,
)
from mtlib import MODELS, SIZES, batches, build, multi30k_like

TARGET = 1.3
TARGET_ALIGN_OFF = 0.97  # alignments off: no slower than the decoder without alignment code (3% for noise)
PRECISION_TARGET = 2.5  # the fastest lower precision against fp32 (README, "precision")
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences .* \(([\d.]+) sentences/s")


def generation_args(args):
    return {"beam": 4, "min_len": args.length, "max_len_a": 0, "max_len_b": args.length}


def contender(model: str, precision: str) -> str:
    """The name of a (model, precision) contender: ``resmlp``, ``resmlp@bf16``, ..."""
    return model if precision == "fp32" else f"{model}@{precision}"


def prepared(args, cfg, task, model, precision: str = "fp32", **generation):
    """(model, generator) as fairseq-generate sets them up, for a copy of ``model`` (it is left
    as it was): the generation config (``generation_args``, then ``generation``, e.g.
    ``print_alignment="hard"``); ``prepare_for_inference_`` from it, which sets need_attn from
    --print-alignment and leaves only the last of the Transformer's decoder layers returning
    attention weights; the model in ``precision`` (``resmlp_mt.precision``); the task's
    generator (``SequenceGeneratorWithAlignment`` with --print-alignment)."""
    from resmlp_mt import precision as inference_precision

    cfg, model = copy.deepcopy(cfg), copy.deepcopy(model)
    for key, value in {**generation_args(args), **generation}.items():
        setattr(cfg.generation, key, value)
    model.prepare_for_inference_(cfg)
    model = inference_precision.convert_(model, precision)
    return model, task.build_generator([model], cfg.generation)


def synthetic_batches(args, size: str, task, device: str = "cpu"):
    """(sentences, batches of --batch-size synthetic Multi30k-like sources), on ``device``."""
    dataset = multi30k_like(task, args.sentences, SIZES[size]["positions"])
    samples = batches(task, dataset, SIZES[size]["positions"], None, max_sentences=args.batch_size)
    return len(dataset), [utils.move_to_cuda(s) for s in samples] if device == "cuda" else samples


def beam_search(task, model, generator, device: str = "cpu"):
    """``run(sample)``: one beam search as fairseq-generate runs it (``task.inference_step``),
    finished on the device when that is a GPU (the timer reads the host clock)."""
    def run(sample):
        hypos = task.inference_step(generator, [model], sample)
        if device == "cuda":
            torch.cuda.synchronize()
        return hypos

    return run


def in_process(args, size: str, models: dict, device: str = "cpu"):
    """Seconds per beam search over each batch of synthetic sources, models alternating batch by
    batch. ``models``: name -> (cfg, task, model), the models already on ``device``."""
    sentences, samples = synthetic_batches(args, size, models["resmlp"][1], device)
    runs = {contender(name, p): cycling(beam_search(task, *prepared(args, cfg, task, model, p), device), samples)
            for name, (cfg, task, model) in models.items() for p in getattr(args, "precision_list", ["fp32"])}
    seconds = interleaved(runs, len(samples) * (args.repeats or (1 if args.tiny else 3)))
    return sentences, {m: pass_seconds(s, len(samples)) for m, s in seconds.items()}, seconds


def decoder_before_alignments(model):
    """A copy of the ResMLP ``model`` whose decoder runs the code it ran before alignments
    existed (commit 512986a): ``forward`` and ``extract_features`` without the alignment
    branch, returning no attention. The baseline that "alignments off" is timed against;
    tests/test_bench.py checks that it computes what the decoder computes. (The encoder's
    count of each source's left padding, one comparison per source token and batch, stays.)"""
    from resmlp_mt.models.resmlp_translation import _beam_size, check_length, encoder_states, moved_to_the_left

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, features_only=False, **kwargs):
        x = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        if not features_only:
            x = self.output_layer(x)
        return x, {"attn": [None], "inner_states": None}

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
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
                if incremental_state is not None:
                    self.set_beam_size(_beam_size(encoder_out))
                    self.set_incremental_state(incremental_state, "cross_attention", {"cached": enc.new_ones(())})
        for layer in self.layers:
            x = layer(x, incremental_state=incremental_state, encoder_out=enc, encoder_padding_mask=enc_mask)
        return restore(self.final_norm(x).transpose(0, 1))

    baseline = copy.deepcopy(model)
    baseline.decoder.forward = types.MethodType(forward, baseline.decoder)
    baseline.decoder.extract_features = types.MethodType(extract_features, baseline.decoder)
    return baseline


ALIGNMENT_VARIANTS = {  # name: (print_alignment, a copy of the model before alignments existed)
    "baseline": (None, True), "off": (None, False), "on (hard)": ("hard", False)}


def weight_requests(model, run, sample):
    """(how many cross-attention calls of one beam search over ``sample`` asked for attention
    weights (``need_weights``; 0: the decoder computed none), the hypotheses)."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(bool(kwargs.get("need_weights")))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.decoder.modules()
               if isinstance(m, MultiheadAttention) and m.encoder_decoder_attention]
    try:
        hypos = run(sample)
    finally:
        for h in handles:
            h.remove()
    return sum(calls), hypos


def alignment_costs(args, size: str, models: dict):
    """Beam search with and without --print-alignment hard, each model prepared as fairseq-generate
    prepares it (own copy per variant), and ResMLP also as it was before alignments existed;
    all variants of both models alternate batch by batch. Before timing, one untimed batch
    per variant counts the cross-attention calls that asked for weights, and checks that the
    variants of a model find the same hypotheses."""
    sentences, samples = synthetic_batches(args, size, models["resmlp"][1])
    runs, checks = {}, {}
    for name, (cfg, task, model) in models.items():
        reference = None
        for variant, (alignment, before) in ALIGNMENT_VARIANTS.items():
            if before and name != "resmlp":
                continue
            copied, generator = prepared(args, cfg, task, decoder_before_alignments(model) if before else model,
                                         print_alignment=alignment)
            run = beam_search(task, copied, generator)
            requests, hypos = weight_requests(copied, run, samples[0])
            tokens = [h[0]["tokens"].tolist() for h in hypos]
            reference = reference or tokens
            # fairseq's prepare_for_inference_ passes --print-alignment itself ("hard") as need_attn
            need_attn = any(bool(getattr(m, "need_attn", False)) for m in copied.decoder.modules())
            checks[(name, variant)] = {"weight_requests": requests, "same_hypotheses": tokens == reference,
                                       "need_attn": need_attn,
                                       "alignments": all("alignment" in h[0] for h in hypos)}
            runs[(name, variant)] = cycling(run, samples)
    seconds = interleaved(runs, len(samples) * (args.repeats or (1 if args.tiny else 3)))
    return sentences, {k: pass_seconds(s, len(samples)) for k, s in seconds.items()}, seconds, checks


def alignment_ratios(size: str, seconds: dict, checks: dict) -> list:
    """The ratio lines of ``alignment_costs``: off against the baseline (the target: no slower),
    on against off (what alignments cost), and the checks behind them."""
    lines = [ratio_line(f"resmlp beam-4 sentences/s, alignments off / baseline without alignment code [{size}]",
                        paired_speedup(seconds, ("resmlp", "off"), ("resmlp", "baseline")), TARGET_ALIGN_OFF)]
    for model in MODELS:
        r = paired_speedup(seconds, (model, "on (hard)"), (model, "off"))
        lines.append(f"cost of --print-alignment [{model}, {size}]: with it, beam search runs at {r[0]:.2f}x "
                     f"the speed without (quartiles {r[1]:.2f}-{r[2]:.2f})")
    off_clean = all(checks[k]["weight_requests"] == 0 and not checks[k]["need_attn"]
                    for k in (("resmlp", "baseline"), ("resmlp", "off")))
    lines.append(f"check [{size}]: resmlp with alignments off: need_attn False and no cross-attention call asks "
                 f"for weights: {'yes' if off_clean else 'NO'}; alignments on: every hypothesis has an "
                 f"alignment: {'yes' if all(checks[(m, 'on (hard)')]['alignments'] for m in MODELS) else 'NO'}; "
                 f"the variants of each model find the same hypotheses: "
                 f"{'yes' if all(c['same_hypotheses'] for c in checks.values()) else 'NO'}")
    return lines


def checkpoint(cfg, model, path: str) -> str:
    """A fairseq checkpoint of ``model``, as the trainer writes one, for fairseq-generate --path."""
    torch.save({
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }, path)
    return path


def with_cli(args, size: str, models: dict):
    """Seconds fairseq-generate reports for the data-bin's test split, per model, interleaved."""
    cli = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in generation_args(args).items()]
    counts = []

    def run(path, precision):
        out = subprocess.run([cli, args.data, "--user-dir", USER_DIR, "--path", path, "--gen-subset", "test", "--cpu",
                              "--batch-size", str(args.batch_size), "--inference-precision", precision, *flags],
                             capture_output=True, text=True, env=env, check=True)
        match = TRANSLATED.search(out.stdout + out.stderr)
        counts.append(int(match.group(1).replace(",", "")))
        return counts[-1] / float(match.group(2))  # the CLI's own timer: start-up and loading excluded

    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: checkpoint(cfg, model, os.path.join(tmp, f"{name}.pt"))
                 for name, (cfg, _, model) in models.items()}
        seconds = interleaved({contender(name, p): (lambda path=path, p=p: run(path, p))
                               for name, path in paths.items() for p in args.precision_list},
                              args.repeats or (2 if args.tiny else 3))
    return counts[0], {m: median(s) for m, s in seconds.items()}, seconds


def beam_decoding(args, model, steps: int):
    """``decode(reorder)``: the seconds of each of ``steps`` incremental decoder steps along one
    decoding as beam search runs it: beam 4 over --batch-size sentences (fairseq's expansion
    of the encoder output, beamable cross-attention), with or without the reorder of every
    cache after each step (each hypothesis continuing one of its sentence's beams)."""
    beam, sentences = 4, args.batch_size
    hyps = beam * sentences
    d = model.decoder.dictionary
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(d.nspecial, len(d), (sentences, 16), generator=gen)
    tokens = torch.randint(d.nspecial, len(d), (hyps, steps), generator=gen)
    expand = torch.arange(sentences).repeat_interleave(beam)
    orders = [expand * beam + torch.randint(beam, (hyps,), generator=gen) for _ in range(steps)]

    def decode(reorder: bool) -> list:
        seconds, state = [], {}
        encoder_out = model.encoder.reorder_encoder_out(model.encoder(src, torch.full((sentences,), 16)), expand)
        for t in range(steps):
            start = time.perf_counter()
            model.decoder(tokens[:, : t + 1], encoder_out, incremental_state=state)
            if reorder:
                model.decoder.reorder_incremental_state_scripting(state, orders[t])
                encoder_out = model.encoder.reorder_encoder_out(encoder_out, orders[t])
            seconds.append(time.perf_counter() - start)
        return seconds

    return hyps, decode


def step_medians(runs: list, prefixes) -> dict:
    """For each t, the median over decodings of the steps t-4 .. t+4."""
    return {t: median([s for run in runs for s in run[max(t - 4, 0) : t + 5]]) for t in prefixes}


def decoder_steps(args, size: str, model, prefixes):
    """Median seconds of the incremental decoder step after a prefix of t tokens, for each t
    in ``prefixes``, along whole decodings (``beam_decoding``) with and without reorders.
    The two kinds of decoding alternate, --repeats (default 2) of each."""
    hyps, decode = beam_decoding(args, model, max(prefixes) + 1)
    with torch.no_grad():
        decode(True)  # warm-up
        runs = {False: [], True: []}
        for _ in range(args.repeats or 2):
            for reorder in runs:
                runs[reorder].append(decode(reorder))
    return hyps, {(t, r): v for r in runs for t, v in step_medians(runs[r], prefixes).items()}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="demo,wmt", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--data", help="a fairseq data-bin: run fairseq-generate on its test split")
    p.add_argument("--sentences", type=int, default=1000, help="synthetic sources to translate (no --data)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per batch, as fairseq-generate --batch-size")
    p.add_argument("--length", type=int, default=16, help="forced output length L (tokens before EOS)")
    p.add_argument("--alignments", action="store_true",
                   help="also time beam search with and without --print-alignment (always with --tiny)")
    p.add_argument("--precisions", default="fp32",
                   help="comma-separated inference precisions to run each model in, of fp32, bf16, int8 "
                        "(fp32 is always included: the others are compared with it)")
    args = p.parse_args()
    args.precision_list = ["fp32"] + [x for x in args.precisions.split(",") if x and x != "fp32"]
    setup(args)
    if args.tiny:
        args.sentences, args.batch_size, args.length = 24, 8, 6
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    env = environment(args.threads)
    rows, ratios, step_rows, align_rows, raw = [], [], [], [], {}
    for size in sizes:
        models = {m: build(m, size, args.data) for m in MODELS}
        for _, _, model in models.values():
            model.eval()
        sentences, total, seconds = (with_cli if args.data else in_process)(args, size, models)
        for m in MODELS:
            for prec in args.precision_list:
                c = contender(m, prec)
                rows.append([size, m, prec, sentences, sentences / total[c], total[m] / total[c]])
        ratios.append(ratio_line(f"resmlp/transformer beam-4 sentences/s [{size}]",
                                 paired_speedup(seconds, "resmlp", "transformer"), TARGET))
        for prec in args.precision_list[1:]:
            ratios.append(ratio_line(f"resmlp/transformer beam-4 sentences/s in {prec} [{size}]",
                                     paired_speedup(seconds, contender("resmlp", prec),
                                                    contender("transformer", prec)), TARGET))
            for m in MODELS:
                ratios.append(ratio_line(f"{m} {prec}/fp32 beam-4 sentences/s [{size}]",
                                         paired_speedup(seconds, contender(m, prec), m), PRECISION_TARGET))

        prefixes = [1, 8, 32, SIZES[size]["positions"] - 1] if args.tiny else [1, 8, 32, 64, 127]
        hyps, step = decoder_steps(args, size, models["resmlp"][2], prefixes)
        t = np.array(prefixes, dtype=float)
        for reorder in (False, True):
            y = np.array([step[(x, reorder)] for x in prefixes])
            slope, intercept = np.polyfit(t, y, 1)
            r2 = 1 - ((y - (slope * t + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
            per_unit = slope / (hyps * SIZES[size]["dim"] * SIZES[size]["layers"]) * 1e9
            ratios.append(f"decoder step [{size}{', with reorder' if reorder else ''}]: "
                          f"{intercept * 1e3:.2f} ms + "
                          f"{slope * 1e6:.1f} us x t (R^2 {r2:.3f}); "
                          f"slope = {per_unit:.3f} ns per position x hypothesis "
                          f"x channel x layer ({hyps} hypotheses, d {SIZES[size]['dim']}, "
                          f"{SIZES[size]['layers']} layers)")
        step_rows += [[size, x, step[(x, False)] * 1e3, step[(x, True)] * 1e3] for x in prefixes]
        raw[size] = {"generate_seconds": seconds, "sentences": sentences,
                     "step_seconds": {f"t={x},reorder={r}": v for (x, r), v in step.items()}}
        if args.alignments or args.tiny:
            sentences, total, seconds, checks = alignment_costs(args, size, models)
            align_rows += [[size, m, v, sentences / total[(m, v)], checks[(m, v)]["weight_requests"],
                            "yes" if checks[(m, v)]["need_attn"] else "no",
                            "yes" if checks[(m, v)]["same_hypotheses"] else "NO"] for m, v in total]
            ratios += alignment_ratios(size, seconds, checks)
            raw[size]["alignment_seconds"] = {f"{m} {v}": s for (m, v), s in seconds.items()}
    how = (f"fairseq-generate --cpu on {args.data}/test" if args.data
           else "SequenceGenerator in-process, synthetic sources")
    report([(f"MT generation: beam 4, batch {args.batch_size}, forced length {args.length}, {how}",
             ["size", "model", "precision", "sentences", "sentences/s", "vs fp32"], rows),
            ("ResMLP decoder alone: one incremental step after a cached prefix of t tokens",
             ["size", "t", "step ms (median)", "step + reorder ms"], step_rows)]
           + ([(f"MT generation with and without --print-alignment hard: beam 4, batch {args.batch_size}, "
                f"forced length {args.length}, in-process; baseline = the decoder before alignments existed",
                ["size", "model", "alignments", "sentences/s", "x-attn calls asking weights, batch 1", "need_attn",
                 "same hypotheses"], align_rows)] if align_rows else []),
           ratios, env, args.out, raw=raw)


if __name__ == "__main__":
    main()
