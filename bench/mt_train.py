"""MT training throughput and peak memory: ResMLP vs fairseq's Transformer at matched size.

One unit of work is a forward + backward + Adam step (fairseq's FairseqAdam, as
fairseq-train uses on CPU) with label-smoothed cross-entropy on one batch of at most
--max-tokens tokens; the two models alternate step by step over the same K batches,
--repeats passes. Throughput: target tokens (fairseq's "wps") of the K batches over the
sum of each batch's median step time; the ratio is the median of the per-step ratios.

Peak memory: each contender runs the same K steps in a fresh interpreter, which
resets the kernel's resident-set high-water mark (/proc/self/clear_refs) just before
building the model; the figure is VmHWM minus the RSS at that moment, i.e. the peak
resident memory added by parameters, gradients, Adam state and activations (plus
whatever the allocator keeps), with interpreter, libraries and data excluded.

    python bench/mt_train.py                       # demo and wmt sizes, synthetic batches
    python bench/mt_train.py --data DATA_BIN       # real batches from DATA_BIN's train split
    python bench/mt_train.py --torch-dropout       # also ResMLP with torch's dropout masks
    python bench/mt_train.py --fused-loss          # also both models with the fused loss

``--torch-dropout`` adds a ResMLP contender whose dropout modules draw their masks with
torch's ``F.dropout`` instead of ``resmlp_mt.modules.dropout``'s cheaper CPU mask: the
same model, data and steps otherwise, so the ratio is what the cheaper mask buys.
``--fused-loss`` adds each model again with ``--criterion fused_label_smoothed_cross_entropy``
(the same loss, its gradient written out) in place of fairseq's ``label_smoothed_cross_entropy``.
"""
import argparse
import json
import types

from fairseq import optim
from fairseq.modules import FairseqDropout

from benchlib import (
    cycling,
    environment,
    in_fresh_processes,
    interleaved,
    paired_speedup,
    parser,
    pass_seconds,
    ratio_line,
    report,
    reset_peak_rss,
    rss_kib,
    setup,
)
from mtlib import MODELS, SIZES, batches, multi30k_like, setup_task
from resmlp_mt import cpu_bf16
from resmlp_mt.modules import Dropout

TARGET_SPEED, TARGET_MEMORY, TARGET_BF16 = 1.3, 1.0, 2.0


class TrainingRun:
    """One contender: model, criterion and Adam as fairseq-train builds them, from (cfg, task);
    precision "bf16" is what ``fairseq-train --bf16`` does on the CPU with the plugin loaded."""

    def __init__(self, cfg, task, precision: str = "fp32", torch_dropout: bool = False):
        self.task, self.model = task, task.build_model(cfg.model)
        if torch_dropout:  # fairseq's FairseqDropout.forward: F.dropout, torch's masks
            for module in self.model.modules():
                if isinstance(module, Dropout):
                    module.forward = types.MethodType(FairseqDropout.forward, module)
        self.criterion = task.build_criterion(cfg.criterion)
        if precision == "bf16":
            cpu_bf16.autocast_forward(self.criterion)
        self.optimizer = optim.build_optimizer(cfg.optimizer, [p for p in self.model.parameters() if p.requires_grad])
        self.params = sum(p.numel() for p in self.model.parameters())

    def __call__(self, samples) -> None:
        for update, sample in enumerate(samples):
            self.task.train_step(sample, self.model, self.criterion, self.optimizer, update)
            self.optimizer.step()
            self.optimizer.zero_grad()


def training_batches(args, task, size: str, count: int):
    """The batches both contenders train on (deterministic, so fresh processes agree)."""
    if args.data:
        task.load_dataset("train")
        dataset = task.dataset("train")
    else:
        dataset = multi30k_like(task, 4000 if args.tiny else 29000, SIZES[size]["positions"])
    return batches(task, dataset, SIZES[size]["positions"], count, max_tokens=args.max_tokens)


TORCH_DROPOUT = "resmlp-torch-dropout"
FUSED_LOSS = "-fused-loss"  # suffix: the model with --criterion fused_label_smoothed_cross_entropy
VARIANTS = (TORCH_DROPOUT,) + tuple(m + FUSED_LOSS for m in MODELS)


def contenders(precisions, torch_dropout: bool = False, fused_loss: bool = False):
    """(name, model, precision): "resmlp", "transformer", and "resmlp+bf16", ... for bf16;
    with ``torch_dropout``, also "resmlp-torch-dropout" in each precision; with ``fused_loss``,
    also "resmlp-fused-loss" and "transformer-fused-loss"."""
    models = (MODELS + ((TORCH_DROPOUT,) if torch_dropout else ())
              + (tuple(m + FUSED_LOSS for m in MODELS) if fused_loss else ()))
    return [(named(m, p), m, p) for m in models for p in precisions]


def named(model: str, precision: str) -> str:
    """A contender's name: the model, with "+bf16" for bf16."""
    return model if precision == "fp32" else f"{model}+{precision}"


def contender_task(model: str, size: str, data):
    """(cfg, task) of a contender: "resmlp-torch-dropout" is built as "resmlp", "X-fused-loss" as X
    with the fused criterion."""
    if model == TORCH_DROPOUT:
        return setup_task("resmlp", size, data)
    if model.endswith(FUSED_LOSS):
        return setup_task(model[:-len(FUSED_LOSS)], size, data, ["--criterion", "fused_label_smoothed_cross_entropy"])
    return setup_task(model, size, data)


def peak_memory_child(args) -> None:
    cfg, task = contender_task(args.memory_of, args.size, args.data)
    samples = training_batches(args, task, args.size, args.batches)
    base = reset_peak_rss()
    TrainingRun(cfg, task, args.precision, args.memory_of == TORCH_DROPOUT)(samples)
    print(json.dumps({"peak_mib": (rss_kib("VmHWM") - base) / 1024}))


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--sizes", default="demo,wmt", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--data", help="a fairseq data-bin: train on its train split instead of synthetic pairs")
    p.add_argument("--batches", type=int, help="batches per timed round (default 6; wmt size 2)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--precisions", default="fp32,bf16",
                   help="fp32 and/or bf16 (fairseq-train --bf16 on the CPU: autocast, fp32 weights)")
    p.add_argument("--torch-dropout", action="store_true",
                   help="also time ResMLP with torch's dropout masks (F.dropout) instead of the plugin's CPU mask")
    p.add_argument("--fused-loss", action="store_true",
                   help="also time each model with --criterion fused_label_smoothed_cross_entropy")
    p.add_argument("--memory-of", choices=MODELS + VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    args = p.parse_args()
    setup(args)
    if args.memory_of:
        return peak_memory_child(args)
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    precisions = args.precisions.split(",")
    who = contenders(precisions, args.torch_dropout, args.fused_loss)
    env = environment(args.threads)
    rows, ratios, raw = [], [], {}
    for size in sizes:
        k = args.batches or (1 if args.tiny else 2 if size == "wmt" else 6)
        child_args = ["--size", size, "--batches", str(k), "--max-tokens", str(args.max_tokens),
                      *(["--tiny"] if args.tiny else []), *(["--data", args.data] if args.data else [])]
        children = in_fresh_processes(__file__, [["--memory-of", m, "--precision", pr, *child_args]
                                                 for _, m, pr in who], args.threads)
        memory = {name: child["peak_mib"] for (name, _, _), child in zip(who, children)}
        runs = {name: TrainingRun(*contender_task(m, size, args.data), pr, m == TORCH_DROPOUT)
                for name, m, pr in who}
        samples = training_batches(args, runs["resmlp"].task if "resmlp" in runs else runs[who[0][0]].task, size, k)
        tokens = sum(s["ntokens"] for s in samples)
        seconds = interleaved({name: cycling(lambda s, r=runs[name]: r([s]), samples) for name, _, _ in who},
                              k * (args.repeats or (2 if args.tiny else 5)))
        speed = {name: tokens / pass_seconds(seconds[name], k) for name, _, _ in who}
        for name, m, pr in who:
            rows.append([size, m, pr, runs[name].params / 1e6, len(samples), tokens, speed[name], memory[name]])
        for pr in precisions:
            a, b = named("resmlp", pr), named("transformer", pr)
            ratios.append(ratio_line(f"resmlp/transformer training tokens/s [{size}, {pr}]",
                                     paired_speedup(seconds, a, b), TARGET_SPEED))
            ratios.append(ratio_line(f"resmlp/transformer training peak memory [{size}, {pr}]",
                                     memory[a] / memory[b], TARGET_MEMORY, better_high=False))
        if "fp32" in precisions and "bf16" in precisions:
            for m in MODELS:
                ratios.append(ratio_line(f"{m} bf16/fp32 training tokens/s [{size}]",
                                         paired_speedup(seconds, named(m, "bf16"), m), TARGET_BF16))
                ratios.append(ratio_line(f"{m} bf16/fp32 training peak memory [{size}]",
                                         memory[named(m, "bf16")] / memory[m], TARGET_MEMORY, better_high=False))
        if args.torch_dropout:
            for pr in precisions:
                ratios.append(ratio_line(f"resmlp cheaper/torch dropout masks, training tokens/s [{size}, {pr}]",
                                         paired_speedup(seconds, named("resmlp", pr), named(TORCH_DROPOUT, pr)), 1.0))
        if args.fused_loss:
            for m, pr in ((m, pr) for m in MODELS for pr in precisions):
                ratios.append(ratio_line(f"{m} fused/fairseq's label-smoothed loss, training tokens/s [{size}, {pr}]",
                                         paired_speedup(seconds, named(m + FUSED_LOSS, pr), named(m, pr)), 1.0))
            if "fp32" in precisions and "bf16" in precisions:
                for m in MODELS:
                    ratios.append(ratio_line(f"{m} bf16/fp32 training tokens/s, fused loss [{size}]",
                                             paired_speedup(seconds, named(m + FUSED_LOSS, "bf16"),
                                                            named(m + FUSED_LOSS, "fp32")), TARGET_BF16))
        raw[size] = {"seconds_per_step": seconds, "target_tokens": tokens, "peak_mib": memory}
    source = f"batches of {args.data}/train" if args.data else "synthetic Multi30k-like batches"
    report([(f"MT training: fwd+bwd+Adam, label-smoothed CE, {source}, --max-tokens {args.max_tokens}",
             ["size", "model", "precision", "params M", "batches", "tgt tokens", "tokens/s", "peak MiB"], rows)],
           ratios, env, args.out, raw=raw)


if __name__ == "__main__":
    main()
