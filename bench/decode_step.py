"""The cost of one beam-search decoding step as the prefix grows: relative token mixing,
the paper's absolute matrix, and fairseq's Transformer, side by side.

For each decoder, one decoding (beam 4 over --batch-size sentences, fairseq's expansion of
the encoder output, every cache reordered after each step as beam search does) is run to
the largest t, and its incremental state is kept at every t of --prefixes. The timed
operation is one step from such a state (on a copy of it): the decoder on the next token,
then the reorder of every cache. Steps of every (decoder, t) alternate round by round
(--repeats rounds, default 200), in a new random order each round, and the median is
reported: a VM's drifts (10-20% from one moment to the next) and the cold caches after a
large step fall on every contender alike. Relative mixing keeps the last K inputs and a
running sum, so its step should cost the same at every t (a little less before the window
fills, t < K); absolute mixing reads the whole cached prefix (a + b*t), and so does the
Transformer's self-attention. Cross-attention coverage adds a running sum per hypothesis,
head and source position, and locality a distance to each source position: costs that grow
with the source, not with t.

    python bench/decode_step.py                       # demo size, t = 10, 100, 500
"""
import random
import time

import torch

from benchlib import environment, median, parser, report, setup
from mtlib import build

TARGET = 0.10  # relative: the step at the largest t within 10% of the step at the smallest
DECODERS = {  # name: (mtlib model, extra flags)
    "resmlp relative": ("resmlp", ["--token-mixing", "relative"]),
    "resmlp relative+coverage": ("resmlp", ["--token-mixing", "relative", "--cross-attention-coverage"]),
    "resmlp relative+coverage+locality": ("resmlp", ["--token-mixing", "relative", "--cross-attention-coverage",
                                                     "--cross-attention-locality"]),
    "resmlp absolute": ("resmlp", []),
    "transformer": ("transformer", []),
}


def copy_state(state: dict) -> dict:
    """A copy of fairseq's incremental state (a dict of dicts of tensors) that a step may change."""
    return {k: {kk: vv.clone() if torch.is_tensor(vv) else vv for kk, vv in v.items()} for k, v in state.items()}


def prefix_states(model, sentences: int, prefixes: list):
    """``step(t)``: the seconds of one step (decoder and reorder) after a prefix of t tokens,
    from the state that one beam-4 decoding reached at t."""
    beam, hyps = 4, 4 * sentences
    d = model.decoder.dictionary
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(d.nspecial, len(d), (sentences, 16), generator=gen)
    tokens = torch.randint(d.nspecial, len(d), (hyps, max(prefixes) + 1), generator=gen)
    expand = torch.arange(sentences).repeat_interleave(beam)
    order = expand * beam + torch.randint(beam, (hyps,), generator=gen)  # each hypothesis continues a beam
    encoder_out = model.encoder.reorder_encoder_out(model.encoder(src, torch.full((sentences,), 16)), expand)
    state, snapshots = {}, {}
    for t in range(max(prefixes)):
        model.decoder(tokens[:, : t + 1], encoder_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        if t + 1 in prefixes:
            snapshots[t + 1] = copy_state(state)

    def step(t: int) -> float:
        state = copy_state(snapshots[t])
        start = time.perf_counter()
        model.decoder(tokens[:, : t + 1], encoder_out, incremental_state=state)
        model.decoder.reorder_incremental_state_scripting(state, order)
        model.encoder.reorder_encoder_out(encoder_out, order)
        return time.perf_counter() - start

    return hyps, step


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
    steps, hyps = {}, 0
    with torch.no_grad():  # as fairseq's generator
        for name, (model, extra) in DECODERS.items():
            _, _, built = build(model, size, None, [*extra, *positions])
            hyps, steps[name] = prefix_states(built.eval(), args.batch_size, prefixes)
        for name, step in steps.items():  # warm-up
            for t in prefixes:
                step(t)
        seconds = {(name, t): [] for name in steps for t in prefixes}
        rng = random.Random(0)
        for _ in range(args.repeats or (3 if args.tiny else 200)):  # every (decoder, t) once per round,
            contenders = list(seconds)  # in a new order each time: a step that follows a large one
            rng.shuffle(contenders)  # (the Transformer's at t=500) finds the CPU caches cold
            for name, t in contenders:
                seconds[name, t].append(steps[name](t))
    steps = {name: {t: median(seconds[name, t]) for t in prefixes} for name in DECODERS}
    rows = [[name, *(steps[name][t] * 1e3 for t in prefixes), steps[name][prefixes[-1]] / steps[name][prefixes[0]]]
            for name in DECODERS]
    ratios = []
    for name in ("resmlp relative", "resmlp relative+coverage", "resmlp relative+coverage+locality"):
        growth = steps[name][prefixes[-1]] / steps[name][prefixes[0]] - 1
        ratios.append(f"{name.split(' ', 1)[1]} step at t={prefixes[-1]} vs t={prefixes[0]}: {growth:+.1%} "
                      f"(target within +-{TARGET:.0%}: {'met' if abs(growth) <= TARGET else 'NOT met'})")
    for name in ("resmlp relative+coverage", "resmlp relative+coverage+locality", "resmlp absolute", "transformer"):
        ratios.append(f"ratio {name}/relative step at t={prefixes[-1]}: "
                      f"{steps[name][prefixes[-1]] / steps['resmlp relative'][prefixes[-1]]:.2f}x")
    rounds = len(seconds[next(iter(seconds))])
    report([(f"Decoding step, beam 4 x {args.batch_size} sentences ({hyps} hypotheses), {size} size, with the "
             f"reorder of every cache, median of {rounds} rounds", ["decoder", *(f"t={t} ms" for t in prefixes),
                                                                    "last/first"], rows)],
           ratios, environment(args.threads), args.out,
           raw={n: {str(t): s for t, s in v.items()} for n, v in steps.items()})


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
