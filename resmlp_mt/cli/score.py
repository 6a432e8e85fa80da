"""``resmlp-score``: sacreBLEU of a ``fairseq-generate`` output against raw references.

fairseq-generate prints hypotheses out of order (``D-<id>`` lines, detokenized when
run with ``--post-process sentencepiece``). This puts them back in order, refuses
to score unless there is exactly one hypothesis per reference line (a silently
dropped sentence would inflate or deflate BLEU unnoticed), and prints the BLEU with
its sacreBLEU signature and a few example translations.
"""
import argparse
import re
import sys
from typing import Dict, List

import sacrebleu

_LINE = re.compile(r"^D-(\d+)\t[^\t]*\t(.*)$")


class ScoringError(ValueError):
    pass


def read_hypotheses(path: str) -> Dict[int, str]:
    hyps: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if m:
                hyps[int(m.group(1))] = m.group(2)
    return hyps


def read_lines(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def ordered(hyps: Dict[int, str], n_refs: int, where: str) -> List[str]:
    missing = sorted(set(range(n_refs)) - set(hyps))
    extra = sorted(set(hyps) - set(range(n_refs)))
    if missing or extra:
        raise ScoringError(
            f"{where}: {len(hyps)} hypotheses for {n_refs} references "
            f"(missing ids {missing[:10]}{'...' if len(missing) > 10 else ''}, unexpected ids {extra[:10]})"
        )
    return [hyps[i] for i in range(n_refs)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("generate_output", help="stdout of fairseq-generate (with --post-process sentencepiece)")
    p.add_argument("--ref", required=True, help="detokenized references, one per line")
    p.add_argument("--src", help="source sentences, to print next to the examples")
    p.add_argument("--examples", type=int, default=5, help="how many example translations to print")
    p.add_argument("--tokenize", default="13a", help="sacreBLEU tokenizer (13a is WMT's standard)")
    args = p.parse_args(argv)

    refs = read_lines(args.ref)
    try:
        hyps = ordered(read_hypotheses(args.generate_output), len(refs), args.generate_output)
    except ScoringError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bleu = sacrebleu.BLEU(tokenize=args.tokenize)
    score = bleu.corpus_score(hyps, [refs])
    srcs = read_lines(args.src) if args.src else None
    step = max(len(refs) // max(args.examples, 1), 1)
    for i in list(range(0, len(refs), step))[: args.examples]:
        if srcs:
            print(f"SRC  {srcs[i]}")
        print(f"REF  {refs[i]}\nHYP  {hyps[i]}\n")
    print(f"sentences scored: {len(hyps)} of {len(refs)}")
    print(f"{score}")
    print(f"signature: {bleu.get_signature()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
