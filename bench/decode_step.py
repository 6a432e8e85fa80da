"""The cost of one beam-search decoding step as the prefix grows: relative token mixing,
the paper's absolute matrix, and fairseq's Transformer, side by side.

Each decoder runs whole decodings as beam search does (beam 4 over --batch-size
sentences, every cache reordered after each step; ``mt_generate.decoder_steps``), the
three models alternating decoding by decoding, and the figure for t is the median step
time over the steps t-2 .. t+2. Relative mixing keeps the last K inputs and a running
sum, so its step should cost the same at every t; absolute mixing reads the whole
cached prefix (a + b*t), and so does the Transformer's self-attention.

    python bench/decode_step.py                       # demo size, t = 10, 100, 500
"""
import torch
from mt_generate import beam_decoding, step_medians

from benchlib import environment, parser, report, setup
from mtlib import build

TARGET = 0.10  # relative: the step at the largest t within 10% of the step at the smallest
DECODERS = {  # name: (mtlib model, extra flags)
    "resmlp relative": ("resmlp", ["--token-mixing", "relative"]),
    "resmlp absolute": ("resmlp", []),
    "transformer": ("transformer", []),
}


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size", default="demo", help="model size of bench/mtlib.py (demo, wmt)")
    p.add_argument("--prefixes", default="10,100,500", help="comma-separated prefix lengths t")
    p.add_argument("--batch-size", type=int, default=16, help="sentences (x beam 4 hypotheses)")
    args = p.parse_args()
    setup(args)
    size, prefixes = ("tiny", [4, 20, 60]) if args.tiny else (args.size, [int(t) for t in args.prefixes.split(",")])
    if args.tiny:
        args.batch_size = 2
    positions = ["--max-source-positions", max(prefixes) + 8, "--max-target-positions", max(prefixes) + 8]
    decodings = {}
    for name, (model, extra) in DECODERS.items():
        _, _, built = build(model, size, None, [*extra, *positions])
        hyps, decodings[name] = beam_decoding(args, built.eval(), max(prefixes) + 1)
    for decode in decodings.values():  # warm-up
        decode(True)
    runs = {name: [] for name in decodings}
    for _ in range(args.repeats or 2):  # the decoders alternate, decoding by decoding
        for name, decode in decodings.items():
            runs[name].append(decode(True))
    steps = {name: step_medians(results, prefixes) for name, results in runs.items()}
    rows = [[name, *(steps[name][t] * 1e3 for t in prefixes), steps[name][prefixes[-1]] / steps[name][prefixes[0]]]
            for name in DECODERS]
    growth = steps["resmlp relative"][prefixes[-1]] / steps["resmlp relative"][prefixes[0]] - 1
    ratios = [f"relative step at t={prefixes[-1]} vs t={prefixes[0]}: {growth:+.1%} "
              f"(target within +-{TARGET:.0%}: {'met' if abs(growth) <= TARGET else 'NOT met'})"]
    for name in ("resmlp absolute", "transformer"):
        ratios.append(f"ratio {name}/relative step at t={prefixes[-1]}: "
                      f"{steps[name][prefixes[-1]] / steps['resmlp relative'][prefixes[-1]]:.2f}x")
    report([(f"Decoding step, beam 4 x {args.batch_size} sentences ({hyps} hypotheses), {size} size, "
             f"with the reorder of every cache", ["decoder", *(f"t={t} ms" for t in prefixes), "last/first"], rows)],
           ratios, environment(args.threads), args.out,
           raw={n: {str(t): s for t, s in v.items()} for n, v in steps.items()})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
