"""GPU bench: fairseq-train words/s and peak memory with --fp16 and --bf16, fp16 loss parity,
beam-4 sentences/s, and ResMLP-S12/S24 images/s, each against its anchor, in one table.

One command, about 5 minutes on one H100/H200 (at most 8), on the first visible GPU:

* **Training**: the real fairseq-train (its ``main``, run in a child process of this
  script) on a synthetic data-bin that fairseq-preprocess builds in a temporary directory
  (32k joined vocabulary; WMT-like sentence lengths; each target token a fixed function of
  the source token, so that the loss falls), ``resmlp_wmt_en_de`` against fairseq's
  ``transformer`` with the same layers, widths, heads and position limits (``mtlib``'s WMT
  size: 6+6, d 512, FFN 2048, 8 heads), Adam, label-smoothed cross-entropy, --max-tokens
  4096, --max-update 200, with --fp16 and with --bf16. Words/s is fairseq's own ``wps``
  (target tokens per second of its ``train_inner`` log lines, every 10 updates), the
  median over the intervals after the first 50 updates; peak memory is
  ``torch.cuda.max_memory_allocated()`` at the end of the run (parameters, fp32 master
  copy, gradients, Adam state, activations).
* **--bf16 on a GPU**: fairseq main makes --bf16 imply --tpu (``options.parse_args_and_arch``),
  and its trainer then asks torch_xla for a TPU. The child undoes that for a CUDA run
  (``args.tpu = False`` after parsing) and fairseq trains as it does with --fp16: model and
  criterion cast to bf16, ``FP16Optimizer`` (fp32 master weights; no loss scaling for bf16).
* **fp16 loss parity**: a fp32 run of 50 updates, same data, seed and schedule; the
  training loss fairseq logs at update 50 (the mean over updates 41-50) against the fp16
  run's (and the bf16 run's) at the same update: the schedule does not depend on
  --max-update, so the first 50 updates of the longer runs are the same computation.
* **Generation**: beam 4 in fp16 (fairseq-generate --fp16: ``model.half()``), fairseq's
  SequenceGenerator in-process on synthetic sources with the output length forced
  (``mt_generate.in_process``), the two models alternating batch by batch.
* **Vision**: our ResMLP-S12/S24 and timm's ``resmlp_12_224`` / ``resmlp_24_224`` with the
  same weights (``vision.pair``), fp16 autocast (AMP), inference at batch 256 and a
  training step (AdamW, GradScaler) at batch 256, interleaved; the paper's V100 figures
  (AMP inference: S12 1,415, S24 715 images/s) are printed beside them.

--tiny runs every part on the CPU at toy sizes in fp32 (fp16 and bf16 need the GPU):
fairseq-preprocess, two fairseq-train runs and their fp32 parity runs (then a determinism
check), generation and the vision timings; it is what tests/test_bench.py runs.

    python bench/gpu.py                      # one GPU; --out gpu.json keeps every figure
    python bench/gpu.py --parts train        # a part only: train, generate, vision
    python bench/gpu.py --tiny               # seconds-long CPU smoke run
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
from torch import nn

from benchlib import USER_DIR, environment, interleaved, median, paired_speedup, parser, report, rss_kib, setup
from mtlib import COMMON, MODELS, SIZES, arch_args, build

TARGET_SPEED, TARGET_MEMORY, TARGET_PARITY = 1.3, 1.0, 0.01  # as mt_train.py; fp16 loss within 1% of fp32
PAPER_V100 = {"s12": 1415, "s24": 715}  # ResMLP paper, Table 3: images/s on one V100, AMP inference
TRAIN_INNER = re.compile(r"\btrain_inner(?: \| |:)(\{.*\})\s*$")  # fairseq's format, or logging's default
OVERFLOW = "gradient overflow detected"
PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "bf16": ["--bf16"]}


# --- the fairseq-train child --------------------------------------------------------------


def fairseq_train_child(argv) -> None:
    """fairseq-train's own ``cli_main``, in this process, then the peak GPU memory as one JSON
    line. The one change: fairseq main makes --bf16 imply --tpu; on a GPU that is undone."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as distributed_utils
    from fairseq_cli import train

    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    if args.bf16 and not args.cpu and torch.cuda.is_available():
        args.tpu = False  # bf16 on CUDA: the trainer casts to bf16 and uses FP16Optimizer
    cfg = convert_namespace_to_omegaconf(args)
    distributed_utils.call_main(cfg, train.main)
    cuda = torch.cuda.is_available() and not args.cpu
    # on the CPU (--tiny), the peak resident memory of the whole process stands in
    print(json.dumps({"peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else rss_kib("VmHWM") / 1024,
                      "tpu": bool(cfg.common.tpu), "bf16": bool(cfg.common.bf16)}))


# --- synthetic data-bin -------------------------------------------------------------------


def synthetic_data_bin(work: str, vocab: int, sentences: int, max_len: int, workers: int, seed: int = 1) -> str:
    """A fairseq data-bin (train split, joined dictionary of ``vocab`` entries with fairseq's 4
    specials) from random token lines, built by fairseq-preprocess. Lengths: a gamma(2.5, 11)
    clipped to [3, min(250, max_len)], mean 27.5 (WMT-like subword sentences); tokens Zipf-distributed
    (exponent 1.1); the target is the source with every token replaced by a fixed
    permutation of the vocabulary, so that the models learn and the loss falls."""
    rng = np.random.default_rng(seed)
    words = vocab - 4
    weights = 1.0 / np.arange(1, words + 1) ** 1.1
    weights /= weights.sum()
    permutation = rng.permutation(words)
    lengths = np.clip(np.rint(rng.gamma(2.5, 11.0, sentences)), 3, min(250, max_len)).astype(int)
    tokens = rng.choice(words, size=int(lengths.sum()), p=weights)
    raw = os.path.join(work, "raw")
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, "dict.txt"), "w") as f:
        f.writelines(f"w{i} {words - i}\n" for i in range(words))
    with open(os.path.join(raw, "train.src"), "w") as src, open(os.path.join(raw, "train.tgt"), "w") as tgt:
        start = 0
        for n in lengths:
            line = tokens[start : start + n]
            start += n
            src.write(" ".join(f"w{i}" for i in line) + "\n")
            tgt.write(" ".join(f"w{i}" for i in permutation[line]) + "\n")
    out = os.path.join(work, "data-bin")
    cli = os.path.join(os.path.dirname(sys.executable), "fairseq-preprocess")
    proc = subprocess.run([cli, "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
                           os.path.join(raw, "train"), "--srcdict", os.path.join(raw, "dict.txt"),
                           "--joined-dictionary", "--destdir", out, "--workers", str(workers)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed:\n{proc.stderr[-3000:]}")
    return out


# --- training runs ------------------------------------------------------------------------


def train_run(args, work: str, data_bin: str, size: str, model: str, precision: str, updates: int,
              skip: int) -> dict:
    """One fairseq-train run (a child process): its train_inner records, words/s (the median over
    the log intervals after update ``skip``), peak memory, fp16 overflows."""
    common = [a for a in COMMON if a != "--cpu"] + (["--cpu"] if args.tiny else [])
    argv = [data_bin, "--user-dir", USER_DIR, *common, *arch_args(model, size), *PRECISION_FLAGS[precision],
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(args.warmup), "--warmup-init-lr", "1e-07",
            "--max-tokens", str(args.max_tokens), "--max-update", str(updates), "--seed", "1",
            "--log-format", "json", "--log-interval", str(args.log_interval), "--disable-validation", "--no-save",
            "--save-dir", os.path.join(work, f"save-{model}-{precision}-{updates}"),
            "--distributed-world-size", "1", "--num-workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--fairseq-train", *argv],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    with open(os.path.join(work, f"train-{model}-{precision}-{updates}.log"), "w") as f:
        f.write(log)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train {model} {precision} failed (exit {proc.returncode}):\n{log[-4000:]}")
    records = [{k: float(v) if isinstance(v, str) and re.fullmatch(r"-?[\d.]+(e-?\d+)?", v) else v
                for k, v in json.loads(m.group(1)).items()}
               for m in map(TRAIN_INNER.search, log.splitlines()) if m]
    if not records:
        raise RuntimeError(f"fairseq-train {model} {precision}: no train_inner lines in its log:\n{log[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steady = [r for r in records if r["num_updates"] > skip] or records[-1:]
    return {"model": model, "precision": precision, "updates": int(records[-1]["num_updates"]),
            "wps": median([r["wps"] for r in steady]), "ups": median([r["ups"] for r in steady]),
            "wpb": median([r["wpb"] for r in steady]), "peak_mib": result["peak_mib"],
            "overflows": log.count(OVERFLOW), "wall_s": wall, "tpu": result["tpu"], "records": records}


def loss_at(run: dict, update: int):
    """The training loss fairseq logged at ``update`` (the mean over the log interval ending there)."""
    return next((r["loss"] for r in run["records"] if r["num_updates"] == update), None)


def training(args, device: str, rows: list, ratios: list, raw: dict) -> None:
    size = "tiny" if args.tiny else "wmt"
    precisions = ["fp32"] if args.tiny else args.precisions.split(",")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        work = args.workdir or tmp
        os.makedirs(work, exist_ok=True)
        start = time.perf_counter()
        data_bin = synthetic_data_bin(work, SIZES[size]["vocab"], args.train_sentences,
                                      SIZES[size]["positions"] - 2, max(os.cpu_count() // 2, 1))
        raw["data_bin_seconds"] = time.perf_counter() - start
        runs = {(m, p): train_run(args, work, data_bin, size, m, p, args.updates, args.skip_updates)
                for p in precisions for m in MODELS}
        parity = {m: train_run(args, work, data_bin, size, m, "fp32", args.parity_updates, args.log_interval)
                  for m in MODELS}
    raw["training"] = {f"{m} {p}": r for (m, p), r in runs.items()}
    raw["parity_fp32"] = parity
    for p in precisions:
        r, t = runs[("resmlp", p)], runs[("transformer", p)]
        label = f"--{p}" if p != "fp32" else "fp32"
        rows.append([f"fairseq-train words/s (wps), {label}", r["wps"], t["wps"], f"{r['wps'] / t['wps']:.2f}x",
                     f">= {TARGET_SPEED}x"])
        ratios.append(f"ratio resmlp/transformer fairseq-train wps [{size}, {label}]: {r['wps'] / t['wps']:.2f}x "
                      f"(target >= {TARGET_SPEED}x: {'met' if r['wps'] / t['wps'] >= TARGET_SPEED else 'NOT met'}; "
                      f"median of {args.log_interval}-update intervals after update {args.skip_updates}; "
                      f"{r['wpb']:,.0f} / {t['wpb']:,.0f} target tokens per batch)")
        m = r["peak_mib"] / t["peak_mib"]
        memory = "peak resident memory of the process (CPU)" if args.tiny else "peak GPU memory"
        rows.append([f"{memory} MiB, {label}", r["peak_mib"], t["peak_mib"], f"{m:.2f}x", f"<= {TARGET_MEMORY}x"])
        ratios.append(f"ratio resmlp/transformer {memory} [{size}, {label}]: {m:.2f}x "
                      f"(target <= {TARGET_MEMORY}x: {'met' if m <= TARGET_MEMORY else 'NOT met'})")
    if "fp32" not in precisions:
        r, t = parity["resmlp"], parity["transformer"]
        rows.append([f"fairseq-train words/s, fp32 (the parity runs, updates {args.log_interval + 1}-"
                     f"{args.parity_updates})", r["wps"], t["wps"], f"{r['wps'] / t['wps']:.2f}x", ""])
    u = args.parity_updates
    for p in precisions:
        cells = []
        for m in MODELS:
            ref, low = loss_at(parity[m], u), loss_at(runs[(m, p)], u)
            if ref is None or low is None:
                cells.append("n/a")
                ratios.append(f"loss parity {p} vs fp32 [{m}]: no loss logged at update {u}")
                continue
            rel = abs(low - ref) / abs(ref)
            cells.append(f"{low:.3f} vs {ref:.3f} ({rel:.2%})")
            target = (f"target <= {TARGET_PARITY:.0%}: {'met' if rel <= TARGET_PARITY else 'NOT met'}"
                      if p == "fp16" else "a determinism check on the CPU" if args.tiny else "no target")
            overflows = f"; {runs[(m, p)]['overflows']} overflowing steps skipped" if p == "fp16" else ""
            ratios.append(f"loss parity {p} vs fp32 [{m}, {size}]: training loss at update {u} "
                          f"{low:.4f} vs {ref:.4f}, relative difference {rel:.3%} ({target}{overflows})")
        rows.append([f"loss at update {u}: {p} vs fp32 (rel. diff.)", *cells, "",
                     f"<= {TARGET_PARITY:.0%}" if p == "fp16" else ""])
    if "bf16" in precisions:
        tpu = any(runs[(m, "bf16")]["tpu"] for m in MODELS)
        ratios.append(f"note: fairseq main makes --bf16 imply --tpu; the bench set tpu back to False for CUDA "
                      f"(cfg.common.tpu in the bf16 runs: {tpu}); fairseq then casts model and criterion to bf16, "
                      f"FP16Optimizer keeps fp32 master weights, unflattened, without loss scaling")


# --- generation ---------------------------------------------------------------------------


def generation(args, device: str, rows: list, ratios: list, raw: dict) -> None:
    from mt_generate import in_process

    size = "tiny" if args.tiny else "wmt"
    dtype = torch.float32 if args.tiny else torch.float16
    gen_args = argparse.Namespace(sentences=24 if args.tiny else args.sentences,
                                  batch_size=8 if args.tiny else args.batch_size,
                                  length=6 if args.tiny else args.length, repeats=args.repeats, tiny=args.tiny)
    models = {}
    for m in MODELS:
        cfg, task, model = build(m, size, None)
        models[m] = (cfg, task, model.eval().to(device=device, dtype=dtype))
    with torch.no_grad():
        sentences, total, seconds = in_process(gen_args, size, models, device)
    speed = {m: sentences / total[m] for m in MODELS}
    r = paired_speedup(seconds, "resmlp", "transformer")
    label = "fp32" if args.tiny else "--fp16"
    rows.append([f"beam-4 sentences/s, {label}, batch {gen_args.batch_size}, length {gen_args.length}",
                 speed["resmlp"], speed["transformer"], f"{r[0]:.2f}x", f">= {TARGET_SPEED}x"])
    ratios.append(f"ratio resmlp/transformer beam-4 sentences/s [{size}, {label}]: {r[0]:.2f}x, "
                  f"quartiles {r[1]:.2f}-{r[2]:.2f} (target >= {TARGET_SPEED}x: "
                  f"{'met' if r[0] >= TARGET_SPEED else 'NOT met'}; {sentences} sentences)")
    raw["generation"] = {"seconds": seconds, "sentences": sentences}


# --- vision -------------------------------------------------------------------------------


def on_device(run, device: str):
    """``run`` then, on a GPU, wait for it: the timer reads the host clock."""
    def call():
        run()
        if device == "cuda":
            torch.cuda.synchronize()

    return call


def amp_train_step(model, optimizer, scaler, images, labels, device: str, amp: bool) -> None:
    with torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
        loss = nn.functional.cross_entropy(model(images), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def amp_inference(model, images, device: str, amp: bool) -> None:
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
        model(images)


def vision(args, device: str, rows: list, ratios: list, raw: dict) -> None:
    from vision import ARCHS, forward_gflop, max_logit_difference, pair

    from resmlp_mt.models.resmlp_image import ARCHS as OUR_ARCHS

    amp = device == "cuda"
    archs = ["s12"] if args.tiny else args.archs.split(",")
    img, classes, batch = (32, 10, 4) if args.tiny else (224, 1000, args.image_batch)
    repeats = args.repeats or (2 if args.tiny else 10)
    label = "AMP fp16" if amp else "fp32"
    for arch in archs:
        ours, reference = pair(arch, classes, img)
        diff = max_logit_difference(ours, reference, img)
        ratios.append(f"check [{arch}]: max |ours - timm| logit difference {diff:.2e} (same weights, fp32, CPU)")
        fwd = forward_gflop(OUR_ARCHS[ARCHS[arch][1]]["depth"], classes, img)
        images = torch.randn(batch, 3, img, img, device=device)
        labels = torch.randint(0, classes, (batch,), device=device)
        for mode in ("infer", "train"):
            runs = {}
            for name, model in (("ours", ours), ("timm", reference)):
                model.to(device).train(mode == "train")
                if mode == "infer":
                    runs[name] = on_device(lambda m=model: amp_inference(m, images, device, amp), device)
                else:
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                    scaler = torch.amp.GradScaler(device, enabled=amp)
                    runs[name] = on_device(lambda m=model, o=opt, s=scaler: amp_train_step(
                        m, o, s, images, labels, device, amp), device)
            seconds = interleaved(runs, repeats, warmup=1 if args.tiny else 3)
            speed = {n: batch / median(s) for n, s in seconds.items()}
            r = paired_speedup(seconds, "ours", "timm")
            paper = f"paper V100: {PAPER_V100[arch]:,}" if mode == "infer" and not args.tiny else ""
            what = "inference" if mode == "infer" else "training step (AdamW)"
            rows.append([f"ResMLP-{arch.upper()} {what} images/s, {label}, batch {batch}", speed["ours"],
                         speed["timm"], f"{r[0]:.2f}x", paper])
            flops = fwd * batch * (3 if mode == "train" else 1) / median(seconds["ours"]) / 1e3
            extra = (f"; {speed['ours'] / PAPER_V100[arch]:.2f}x the paper's V100 figure" if paper else "")
            ratios.append(f"ratio ours/timm images/s [{arch} {mode} b{batch}, {label}]: {r[0]:.2f}x, quartiles "
                          f"{r[1]:.2f}-{r[2]:.2f}{extra}; ours {flops:.3g} TFLOP/s by the shapes")
            raw[f"vision {arch} {mode}"] = seconds
        ours.cpu()
        reference.cpu()


# --- main ---------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--fairseq-train":
        return fairseq_train_child(sys.argv[2:])
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--parts", default="train,generate,vision", help="comma-separated, of train, generate, vision")
    p.add_argument("--precisions", default="fp16,bf16", help="training precisions (fp32 runs for parity anyway)")
    p.add_argument("--updates", type=int, default=200, help="updates per timed fairseq-train run")
    p.add_argument("--skip-updates", type=int, default=50, help="wps from the log intervals after this update")
    p.add_argument("--parity-updates", type=int, default=50, help="updates of the fp32 runs, and the loss compared")
    p.add_argument("--log-interval", type=int, default=10)
    p.add_argument("--warmup", type=int, default=100, help="--warmup-updates (lr 5e-4, inverse_sqrt)")
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--train-sentences", type=int, default=40000, help="synthetic training pairs in the data-bin")
    p.add_argument("--sentences", type=int, default=1000, help="sources to translate")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per beam search")
    p.add_argument("--length", type=int, default=25, help="forced output length (WMT-like)")
    p.add_argument("--archs", default="s12,s24")
    p.add_argument("--image-batch", type=int, default=256)
    p.add_argument("--workdir", help="keep the data-bin and the fairseq-train logs here (default: a temp dir)")
    args = p.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA GPU is visible (torch.cuda.is_available() is False). It measures fp16/bf16 "
                 "training, generation and AMP vision on a GPU; `python bench/gpu.py --tiny` runs its CPU smoke "
                 "test.")
    if args.tiny:
        args.updates, args.skip_updates, args.parity_updates, args.log_interval = 20, 5, 10, 5
        args.warmup, args.max_tokens, args.train_sentences = 10, 512, 400
    setup(args)
    device = "cpu" if args.tiny else "cuda"
    env = environment(args.threads)
    parts = args.parts.split(",")
    rows, ratios, raw, failed = [], [], {}, []
    start = time.perf_counter()
    for part, measure in (("train", training), ("generate", generation), ("vision", vision)):
        if part not in parts:
            continue
        try:  # a part that fails leaves the others their chance on a GPU lent for minutes
            measure(args, device, rows, ratios, raw)
        except Exception as e:
            traceback.print_exc()
            failed.append(part)
            rows.append([f"{part}: FAILED", "", "", "", ""])
            ratios.append(f"part {part} FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0][:300]} "
                          f"(traceback on stderr)")
    wall = time.perf_counter() - start
    ratios.append(f"wall time: {wall:.0f} s" + ("" if args.tiny else " (budget: 8 minutes on one H100/H200)"))
    size = "toy sizes, CPU, fp32" if args.tiny else "WMT size 6+6 d 512 vocab 32k; S12/S24 at 224 px"
    report([(f"GPU bench: ResMLP against fairseq's transformer and timm's ResMLP ({size})",
             ["what", "ResMLP (ours)", "anchor (transformer / timm)", "ratio", "target / reference"], rows)],
           ratios, env, args.out, raw=raw, wall_seconds=wall, failed=failed)
    if failed:
        sys.exit(f"bench/gpu.py: part(s) {', '.join(failed)} failed")


if __name__ == "__main__":
    main()
