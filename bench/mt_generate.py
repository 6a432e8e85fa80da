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

With --precisions fp32,bf16,int8 every model also runs in each inference precision
(``resmlp_mt.precision``: converted in-process, or fairseq-generate --inference-precision),
all (model, precision) contenders interleaved, and each gets its ratio against fp32.

    python bench/mt_generate.py                    # demo and wmt sizes, synthetic sources
    python bench/mt_generate.py --data DATA_BIN    # fairseq-generate on DATA_BIN's test split
    python bench/mt_generate.py --sizes demo --precisions fp32,bf16,int8
"""
import copy
import functools
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
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
PRECISION_TARGET = 2.5  # the fastest lower precision against fp32 (README, "precision")
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences .* \(([\d.]+) sentences/s")


def generation_args(args):
    return {"beam": 4, "min_len": args.length, "max_len_a": 0, "max_len_b": args.length}


def contender(model: str, precision: str) -> str:
    """The name of a (model, precision) contender: ``resmlp``, ``resmlp@bf16``, ..."""
    return model if precision == "fp32" else f"{model}@{precision}"


def in_process(args, size: str, models: dict):
    """Seconds per beam search over each batch of synthetic sources, contenders alternating batch by batch."""
    from resmlp_mt import precision as inference_precision

    task = models["resmlp"][1]
    dataset = multi30k_like(task, args.sentences, SIZES[size]["positions"])
    samples = batches(task, dataset, SIZES[size]["positions"], None, max_sentences=args.batch_size)
    runs = {}
    for name, (cfg, task, model) in models.items():
        for key, value in generation_args(args).items():
            setattr(cfg.generation, key, value)
        for p in args.precision_list:
            converted = inference_precision.convert_(copy.deepcopy(model) if p != "fp32" else model, p)
            generator = task.build_generator([converted], cfg.generation)
            runs[contender(name, p)] = cycling(functools.partial(task.inference_step, generator, [converted]),
                                               samples)
    seconds = interleaved(runs, len(samples) * (args.repeats or (1 if args.tiny else 3)))
    return len(dataset), {m: pass_seconds(s, len(samples)) for m, s in seconds.items()}, seconds


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
    rows, ratios, step_rows, raw = [], [], [], {}
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
    how = (f"fairseq-generate --cpu on {args.data}/test" if args.data
           else "SequenceGenerator in-process, synthetic sources")
    report([(f"MT generation: beam 4, batch {args.batch_size}, forced length {args.length}, {how}",
             ["size", "model", "precision", "sentences", "sentences/s", "vs fp32"], rows),
            ("ResMLP decoder alone: one incremental step after a cached prefix of t tokens",
             ["size", "t", "step ms (median)", "step + reorder ms"], step_rows)],
           ratios, env, args.out, raw=raw)


if __name__ == "__main__":
    main()
