"""BLEU and beam-4 speed of trained models in each inference precision, as the demo scores them.

For each model (a prepared Multi30k directory and a checkpoint) and each precision, the
real ``fairseq-generate`` translates test2016 with the demo's flags (``train_eval.sh``:
beam 4, batch 128, ``--post-process sentencepiece``, ``--cpu``) plus
``--inference-precision P``; sacreBLEU scores the detokenized output against the raw
references as ``resmlp-score`` does (every sentence scored, or an error). Speed is the
CLI's own ``Translated N sentences ... (X sentences/s)`` (start-up and loading left out),
with OMP/MKL threads set to ``--threads``. The runs are interleaved: round by round, each
model in each precision once, so that the load of a shared machine falls on all of them
alike; BLEU comes from the first round (every round translates the same), speed is the
median over rounds, and its ratio to fp32 the median of per-round ratios; "same output as
fp32" is the share of sentences translated exactly as fp32 translates them.

    R=runs/compare-joined-en-de
    python examples/translation/precision_table.py --out runs/precision --rounds 3 \\
        --model resmlp=runs/demo-en-de/data:runs/demo-en-de/resmlp_small/checkpoints/checkpoint_avg.pt \\
        --model transformer=$R/data:$R/transformer-s1/checkpoints/checkpoint_avg.pt
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

import sacrebleu

from resmlp_mt.cli.score import ordered, read_hypotheses, read_lines

USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "resmlp_mt")
BIN = os.path.dirname(sys.executable)
TRANSLATED = re.compile(r"Translated ([\d,]+) sentences .* \(([\d.]+) sentences/s")


def generate(data: str, checkpoint: str, pair: str, precision: str, out: str, threads: int) -> float:
    """Translate DATA's test split into OUT; return the CLI's sentences/s."""
    src, tgt = pair.split("-")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(out, "w", encoding="utf-8") as f:
        proc = subprocess.run([os.path.join(BIN, "fairseq-generate"), os.path.join(data, "data-bin"),
                               "--user-dir", USER_DIR, "--source-lang", src, "--target-lang", tgt,
                               "--path", checkpoint, "--gen-subset", "test", "--beam", "4", "--batch-size", "128",
                               "--post-process", "sentencepiece", "--cpu", "--inference-precision", precision],
                              stdout=f, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed ({precision}, {checkpoint}):\n{proc.stderr[-3000:]}")
    return float(TRANSLATED.search(proc.stderr).group(2))


def hypotheses(output: str, data: str, pair: str):
    """(hypotheses in test order, references): every sentence, or an error (as resmlp-score)."""
    refs = read_lines(os.path.join(data, f"test.raw.{pair.split('-')[1]}"))
    return ordered(read_hypotheses(output), len(refs), output), refs


def bleu(output: str, data: str, pair: str) -> float:
    hyps, refs = hypotheses(output, data, pair)
    return sacrebleu.BLEU(tokenize="13a").corpus_score(hyps, [refs]).score  # as resmlp-score


def same_as(output: str, reference_output: str, data: str, pair: str) -> float:
    """The share of sentences translated exactly as in ``reference_output`` (fp32's): a
    measure of fidelity that, unlike a BLEU difference, does not average changes away."""
    a, b = hypotheses(output, data, pair)[0], hypotheses(reference_output, data, pair)[0]
    return sum(x == y for x, y in zip(a, b)) / len(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=DATA:CHECKPOINT")
    p.add_argument("--precisions", default="fp32,bf16,int8")
    p.add_argument("--pair", default="en-de")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="directory for the outputs and results.json")
    args = p.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    precisions = args.precisions.split(",")
    if precisions[0] != "fp32":
        raise SystemExit("--precisions must start with fp32: the others are compared with it")
    os.makedirs(args.out, exist_ok=True)
    speed = {(m, p): [] for m in models for p in precisions}
    scores = {}
    for r in range(args.rounds):
        for name, spec in models.items():
            data, checkpoint = spec.split(":", 1)
            for precision in precisions:
                out = os.path.join(args.out, f"{name}.{precision}.txt")
                speed[name, precision].append(generate(data, checkpoint, args.pair, precision, out, args.threads))
                if r == 0:
                    scores[name, precision] = bleu(out, data, args.pair)
                print(f"round {r + 1}: {name} {precision}: {speed[name, precision][-1]:.1f} sentences/s, "
                      f"BLEU {scores[name, precision]:.2f}", flush=True)
    print("\n| model | precision | test2016 BLEU | Δ BLEU | same output as fp32 | beam-4 sentences/s | "
          "vs fp32 (quartiles) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in models:
        for precision in precisions:
            rate = statistics.median(speed[name, precision])
            ratios = [a / b for a, b in zip(speed[name, precision], speed[name, "fp32"])]
            q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
            delta = scores[name, precision] - scores[name, "fp32"]
            data = models[name].split(":", 1)[0]
            same = same_as(os.path.join(args.out, f"{name}.{precision}.txt"),
                           os.path.join(args.out, f"{name}.fp32.txt"), data, args.pair)
            print(f"| {name} | {precision} | {scores[name, precision]:.2f} | {delta:+.2f} | {same:.1%} | {rate:.1f} | "
                  f"{q[1]:.2f}× ({q[0]:.2f}–{q[2]:.2f}) |")
            rows.append({"model": name, "precision": precision, "bleu": scores[name, precision], "same_as_fp32": same,
                         "sentences_per_s": speed[name, precision], "ratio_quartiles": q})
    load = os.getloadavg()[0]
    print(f"\n{args.threads} threads, {args.rounds} rounds, 1-min load average {load:.2f} at the end")
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"rows": rows, "threads": args.threads, "load_average_1min_end": load}, f, indent=1)


if __name__ == "__main__":
    main()
