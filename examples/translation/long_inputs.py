"""Long inputs: translate k consecutive test sentences as one input, and one by one.

For each factor k (default 2, 4, 8), the test set's sentences i*k .. i*k+k-1 are joined
with a space, sources and references alike. Each model translates every joined source
as one input ("whole") and, separately, the original sentences one at a time, whose
translations are joined the same way ("parts"). Both are scored with sacreBLEU against
the joined references; the drop (parts - whole) is what the length alone costs. The words
of the whole translations over the references' tell why: below 1 the model stopped early,
above 1 it repeated itself.

A model whose limits do not fit an input (the absolute mixing matrix of ResMLP) cannot
translate it: fairseq-generate skips it (--skip-invalid-size-inputs-valid-test), and
both columns of that row are scored on the groups it did translate, with the count shown.

    python examples/translation/long_inputs.py --data runs/compare-en-de/data --pair en-de \\
        --model relative=runs/.../checkpoint_avg.pt --model transformer=... [--factors 2,4,8] \\
        [--overrides NAME="{'model': {...}}"]

The drop's 95% interval comes from a paired bootstrap over the joined inputs (``--resamples``
draws of the inputs with replacement; parts and whole scored on the same draw, as sacreBLEU's
own paired bootstrap does): it tells a drop of 1.4 from one of 1.0 or not. For the mean over
seeds, every seed's drop is scored on the same draw (the seeds translate the same inputs).
``--versus A,B`` adds, per factor, A's drop minus B's with its interval, on the same draws:
whether one model drops less than another beyond the noise.

``--subset valid`` does the same with the validation set (``raw/valid.*``), to choose a
decoding setting without looking at the test set.

``--overrides NAME=DICT`` passes DICT to fairseq-generate's ``--model-overrides`` for model NAME
(a setting changed at decoding time, e.g. ``cross_attention_locality_floor``), and
``--generate-args NAME=ARGS`` adds search options for model NAME (e.g. ``--lenpen 1.5``); both
apply to the whole inputs and to their parts alike.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import sacrebleu
from sacrebleu.metrics import BLEU

from resmlp_mt.cli.score import read_hypotheses, read_lines
from resmlp_mt.prep.common import encode

USER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "resmlp_mt")
BIN = os.path.dirname(sys.executable)
# Generous output limits for all runs alike (fairseq's default caps outputs at 200 tokens).
GENERATION = ["--beam", "4", "--max-len-a", "1.5", "--max-len-b", "10", "--post-process", "sentencepiece"]


def joined(lines: Sequence[str], k: int) -> List[str]:
    """Groups of k consecutive lines, each joined with a space (a last short group is dropped)."""
    return [" ".join(lines[i : i + k]) for i in range(0, len(lines) - k + 1, k)]


def raw_lines(data: str, subset: str, lang: str) -> List[str]:
    """The untokenized sentences of a subset (resmlp-prep-multi30k keeps the test set's at the top)."""
    return read_lines(os.path.join(data, "test.raw." + lang) if subset == "test"
                      else os.path.join(data, "raw", f"{subset}.{lang}"))


def binarize(data: str, src: str, tgt: str, k: int, work: str, subset: str = "test") -> str:
    """The k-fold joined subset, through the data's sentencepiece model and dictionaries, as the
    split "test" of its own data-bin."""
    out = os.path.join(work, f"x{k}" if subset == "test" else f"{subset}-x{k}")
    bin_dir = os.path.join(out, "bin")
    if os.path.exists(os.path.join(bin_dir, f"test.{src}-{tgt}.{src}.bin")):
        return bin_dir
    os.makedirs(out, exist_ok=True)
    for lang in (src, tgt):
        with open(os.path.join(out, f"raw.{lang}"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in joined(raw_lines(data, subset, lang), k))
        encode(os.path.join(data, "spm.model"), os.path.join(out, f"raw.{lang}"), os.path.join(out, f"test.{lang}"), 1)
    dicts = os.path.join(data, "data-bin")
    subprocess.run([os.path.join(BIN, "fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt,
                    "--testpref", os.path.join(out, "test"), "--destdir", bin_dir,
                    "--srcdict", os.path.join(dicts, f"dict.{src}.txt"),
                    "--tgtdict", os.path.join(dicts, f"dict.{tgt}.txt"),
                    "--workers", "1"], check=True, capture_output=True)
    return bin_dir


def translate(bin_dir: str, src: str, tgt: str, checkpoint: str, out: str, batch_size: int,
              overrides: Optional[str] = None, subset: str = "test", generate_args: str = "") -> Dict[int, str]:
    """fairseq-generate's detokenized hypotheses by sentence id (skipped inputs are absent)."""
    extra = (["--model-overrides", overrides] if overrides else []) + shlex.split(generate_args)
    with open(out, "w", encoding="utf-8") as f:
        subprocess.run([os.path.join(BIN, "fairseq-generate"), bin_dir, "--user-dir", USER_DIR, "--path", checkpoint,
                        "--source-lang", src, "--target-lang", tgt, "--gen-subset", subset, "--cpu",
                        "--batch-size", str(batch_size), "--skip-invalid-size-inputs-valid-test", *GENERATION, *extra],
                       check=True, stdout=f, stderr=subprocess.DEVNULL)
    return read_hypotheses(out)


def evaluate(data: str, pair: str, models: Dict[str, str], factors: Sequence[int], work: str,
             overrides: Optional[Dict[str, str]] = None, subset: str = "test",
             generate_args: Optional[Dict[str, str]] = None) -> List[list]:
    src, tgt = pair.split("-")
    overrides, generate_args = overrides or {}, generate_args or {}
    refs = raw_lines(data, subset, tgt)
    tag = "" if subset == "test" else f"{subset}."
    rows = []
    for name, checkpoint in models.items():
        parts = translate(os.path.join(data, "data-bin"), src, tgt, checkpoint,
                          os.path.join(work, f"{name}.{tag}x1.txt"), 64, overrides.get(name), subset,
                          generate_args.get(name, ""))
        for k in factors:
            whole = translate(binarize(data, src, tgt, k, work, subset), src, tgt, checkpoint,
                              os.path.join(work, f"{name}.{tag}x{k}.txt"), 16, overrides.get(name),
                              generate_args=generate_args.get(name, ""))
            groups = [g for g in range(len(refs) // k)
                      if g in whole and all(i in parts for i in range(g * k, g * k + k))]
            joined_refs = [joined(refs, k)[g] for g in groups]
            by_parts = [" ".join(parts[i] for i in range(g * k, g * k + k)) for g in groups]
            bleu_whole = (sacrebleu.corpus_bleu([whole[g] for g in groups], [joined_refs]).score
                          if groups else float("nan"))
            bleu_parts = sacrebleu.corpus_bleu(by_parts, [joined_refs]).score if groups else float("nan")
            # below 1: the model stopped early; above: it repeated itself
            length = (sum(len(whole[g].split()) for g in groups) / max(sum(len(r.split()) for r in joined_refs), 1)
                      if groups else float("nan"))
            rows.append([name, k, f"{len(groups)}/{len(refs) // k}", bleu_parts, bleu_whole, bleu_parts - bleu_whole,
                         length, Scored(groups, by_parts, [whole[g] for g in groups], joined_refs)])
    return rows


class Scored:
    """One model's translations of the joined inputs ``groups``, whole and by parts, as sacreBLEU's
    sufficient statistics per input (n-gram matches and lengths), which add up over any draw.
    They come from the same BLEU methods that sacreBLEU's paired bootstrap uses (private names,
    so a test checks that they still add up to ``corpus_bleu``)."""

    def __init__(self, groups: List[int], parts: List[str], whole: List[str], refs: List[str]):
        self.groups = groups
        self.parts, self.whole = (np.array(BLEU()._extract_corpus_statistics(hyps, [refs]), dtype=np.float64)
                                  .reshape(len(groups), -1) for hyps in (parts, whole))


def drop_interval(scored: Sequence[Scored], resamples: int = 1000, seed: int = 12345,
                  minus: Sequence[Scored] = ()) -> Optional[Tuple[float, float]]:
    """The 95% interval of the drop (parts BLEU - whole BLEU), averaged over ``scored`` (the seeds
    of one model), from ``resamples`` draws with replacement of the joined inputs, the same draw
    for parts, whole and every seed. With ``minus`` (another model's seeds): the interval of the
    difference of the two mean drops, on the same draws. None when they did not all translate
    the same inputs."""
    everyone = [*scored, *minus]
    if not scored or not everyone[0].groups or any(s.groups != everyone[0].groups for s in everyone):
        return None
    count = len(everyone[0].groups)
    draws = np.random.default_rng(seed).integers(0, count, size=(resamples, count))
    drops = _mean_drops(scored, draws) - (_mean_drops(minus, draws) if minus else 0.0)
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(low), float(high)


def _mean_drops(scored: Sequence[Scored], draws: np.ndarray) -> np.ndarray:
    """The drop on each draw (a row of input indices), averaged over ``scored``."""
    metric = BLEU()
    drops = np.zeros(len(draws))
    for s in scored:
        for i, draw in enumerate(draws):
            drops[i] += (metric._compute_score_from_stats(s.parts[draw].sum(0)).score
                         - metric._compute_score_from_stats(s.whole[draw].sum(0)).score)
    return drops / len(scored)


def interval_text(interval: Optional[Tuple[float, float]]) -> str:
    return "–" if interval is None else f"{interval[0]:.2f}..{interval[1]:.2f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="resmlp-prep-multi30k's output (data-bin/, spm.model, test.raw.*)")
    p.add_argument("--pair", default="en-de")
    p.add_argument("--model", action="append", required=True, metavar="NAME=CHECKPOINT")
    p.add_argument("--subset", default="test", choices=["test", "valid"],
                   help="the sentences to join: test2016 (test.raw.*) or the validation set (raw/valid.*)")
    p.add_argument("--overrides", action="append", default=[], metavar="NAME=DICT",
                   help="fairseq-generate --model-overrides DICT for model NAME")
    p.add_argument("--generate-args", action="append", default=[], metavar="NAME=ARGS",
                   help="more fairseq-generate options for model NAME, e.g. NAME='--lenpen 1.5'")
    p.add_argument("--factors", default="2,4,8", help="comma-separated numbers of sentences per input")
    p.add_argument("--work", help="where the joined sets and translations go (default DATA/long-inputs)")
    p.add_argument("--resamples", type=int, default=1000, help="paired-bootstrap draws for the drop's 95%% interval")
    p.add_argument("--versus", action="append", default=[], metavar="A,B",
                   help="also print, per factor, A's drop minus B's and its 95%% interval (A, B: a --model "
                        "NAME, or the NAME of models NAME-sSEED, their mean)")
    args = p.parse_args(argv)
    if args.resamples < 1:
        p.error(f"--resamples {args.resamples}: expected 1 or more draws")
    models = dict(m.split("=", 1) for m in args.model)
    versus = [tuple(v.split(",")) for v in args.versus]
    for pair in versus:
        if len(pair) != 2 or not all(any(_is_member(m, name) for m in models) for name in pair):
            p.error(f"--versus {','.join(pair)}: expected A,B, each a --model NAME or the NAME of NAME-sSEED models")
    overrides = dict(o.split("=", 1) for o in args.overrides)
    generate_args = dict(g.split("=", 1) for g in args.generate_args)
    for option, given in (("--overrides", overrides), ("--generate-args", generate_args)):
        unknown = sorted(set(given) - set(models))
        if unknown:
            p.error(f"{option} for {', '.join(unknown)}: no such --model")
    work = args.work or os.path.join(args.data, "long-inputs")
    os.makedirs(work, exist_ok=True)
    factors = [int(k) for k in args.factors.split(",")]
    rows = evaluate(args.data, args.pair, models, factors, work, overrides, args.subset, generate_args)
    header = f"{'BLEU parts':>10} {'BLEU whole':>10} {'drop':>6} {'words out / ref':>15} {'drop, 95%':>12}"
    print(f"\n{'model':<20} {'k':>2} {'groups':>9} {header}")
    for name, k, groups, parts, whole, drop, length, scored in rows:
        interval = interval_text(drop_interval([scored], args.resamples))
        print(f"{name:<20} {k:>2} {groups:>9} {parts:>10.2f} {whole:>10.2f} {drop:>6.2f} {length:>15.2f} "
              f"{interval:>12}")
    means = seed_means(rows)
    if means:
        print(f"\nmean over seeds (models named NAME-sSEED)\n{'model':<20} {'k':>2} {'seeds':>9} {header}")
        for name, k, seeds, parts, whole, drop, length in means:
            members = [row[7] for row in rows if row[1] == k and _seed_name(row[0]) == name]
            interval = interval_text(drop_interval(members, args.resamples))
            print(f"{name:<20} {k:>2} {seeds:>9} {parts:>10.2f} {whole:>10.2f} {drop:>6.2f} {length:>15.2f} "
                  f"{interval:>12}")
    for a, b in versus:
        print(f"\ndrop of {a} minus drop of {b} (paired bootstrap on the same inputs)\n{'k':>2} {'difference':>10} "
              f"{'95%':>14}")
        for k in factors:
            mine, theirs = ([row for row in rows if row[1] == k and _is_member(row[0], name)] for name in (a, b))
            difference = sum(r[5] for r in mine) / len(mine) - sum(r[5] for r in theirs) / len(theirs)
            interval = drop_interval([r[7] for r in mine], args.resamples, minus=[r[7] for r in theirs])
            print(f"{k:>2} {difference:>10.2f} {interval_text(interval):>14}")
    return 0


def _seed_name(model: str) -> Optional[str]:
    """NAME of a model named NAME-sSEED (one seed of NAME), else None."""
    match = re.fullmatch(r"(.+)-s\d+", model)
    return match.group(1) if match else None


def _is_member(model: str, name: str) -> bool:
    """``model`` is ``name`` itself, or one of its seeds (``name-sSEED``)."""
    return model == name or _seed_name(model) == name


def seed_means(rows: List[list]) -> List[list]:
    """Rows of models named NAME-sSEED averaged over their seeds, per NAME and factor (only
    where some NAME has two seeds or more)."""
    groups: Dict[tuple, List[list]] = {}
    for row in rows:
        name = _seed_name(row[0])
        if name:
            groups.setdefault((name, row[1]), []).append(row)
    if not any(len(members) > 1 for members in groups.values()):
        return []
    return [[name, k, len(members), *(sum(m[i] for m in members) / len(members) for i in (3, 4, 5, 6))]
            for (name, k), members in groups.items()]


if __name__ == "__main__":
    sys.exit(main())
