"""Where ResMLP spends its time: torch.profiler over MT training steps and beam-4 search.

Prints, for --steps training updates and for beam search over --sentences synthetic
sources, the self CPU time by kind (the output projection's GEMMs, which both models do
alike, apart from the layers' GEMMs; the log-softmax and loss; other operators by name),
then the operators with the most self CPU time, with input shapes.

    python bench/profile_mt.py --size demo --model resmlp
"""
from fairseq import optim
from torch.profiler import ProfilerActivity, profile

from benchlib import parser, setup
from mtlib import MODELS, SIZES, batches, build, multi30k_like


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size", default="demo", choices=SIZES)
    p.add_argument("--model", default="resmlp", choices=MODELS)
    p.add_argument("--steps", type=int, default=4, help="training updates to profile")
    p.add_argument("--sentences", type=int, default=256, help="sources to translate with beam 4")
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    setup(args)
    if args.tiny:
        args.size, args.steps, args.sentences, args.rows = "tiny", 1, 16, 10
    positions = SIZES[args.size]["positions"]
    cfg, task, model = build(args.model, args.size, None)
    data = multi30k_like(task, 4000 if args.tiny else 29000, positions)
    samples = batches(task, data, positions, args.steps + 1, max_tokens=4096)
    criterion = task.build_criterion(cfg.criterion)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))

    def train(batch):
        for update, sample in enumerate(batch):
            task.train_step(sample, model, criterion, optimizer, update)
            optimizer.step()
            optimizer.zero_grad()

    for key, value in {"beam": 4, "min_len": 16, "max_len_a": 0, "max_len_b": 16}.items():
        setattr(cfg.generation, key, value)
    generator = task.build_generator([model], cfg.generation)
    sources = batches(task, multi30k_like(task, args.sentences, positions), positions, None, max_sentences=128)

    def generate(batch):
        model.eval()
        for sample in batch:
            task.inference_step(generator, [model], sample)

    vocab = len(task.target_dictionary)
    for title, work, inputs in (("training", train, samples[1:]), ("beam-4 generation", generate, sources)):
        work(samples[:1] if work is train else sources[:1])  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            work(inputs)
        events = prof.key_averages(group_by_input_shape=True)
        print(f"== {args.model} [{args.size}] {title}: self CPU time by kind")
        shares = by_kind(events, vocab)
        total = sum(shares.values())
        ranked = sorted(shares, key=lambda kind: -shares[kind])
        shown = ranked[:12] + [kind for kind in GEMM_KINDS if kind in ranked[12:]]  # GEMMs always listed
        for kind in shown:
            print(f"{kind:<58} {shares[kind] / 1e3:>9.0f} ms {shares[kind] / total:>6.1%}")
        print(f"== {args.model} [{args.size}] {title}: top operators by self CPU time")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows,
                           max_name_column_width=28, max_shapes_column_width=60))


GEMM_KINDS = ("GEMM, output projection (vocabulary-sized)", "GEMM, the model's layers")
GEMMS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::matmul")


def by_kind(events, vocab: int) -> dict:
    """Self CPU microseconds: GEMMs with a vocabulary-sized operand (the output projection,
    the same work for both models) apart from the model's other GEMMs; vocabulary-sized
    element-wise work and the softmax/loss; every other operator by name."""
    shares = {}
    for event in events:
        vocab_sized = any(vocab in shape for shape in event.input_shapes if isinstance(shape, (list, tuple)))
        if event.key in GEMMS:
            kind = GEMM_KINDS[0] if vocab_sized else GEMM_KINDS[1]
        elif "softmax" in event.key or "nll" in event.key:
            kind = "log-softmax and loss"
        elif vocab_sized:
            kind = "other vocabulary-sized element-wise work"
        else:
            kind = event.key
        shares[kind] = shares.get(kind, 0) + event.self_cpu_time_total
    return shares


if __name__ == "__main__":
    main()
