"""Where ResMLP spends its time: torch.profiler over MT training steps and beam-4 search.

Prints the operators with the most self CPU time (with input shapes, so that the
token-mixing GEMM, the MLP's GEMMs and the output projection are told apart) for
--steps training updates and for beam search over --sentences synthetic sources.

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

    for title, work, inputs in (("training", train, samples[1:]), ("beam-4 generation", generate, sources)):
        work(samples[:1] if work is train else sources[:1])  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            work(inputs)
        print(f"== {args.model} [{args.size}] {title}: top operators by self CPU time")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                                 max_name_column_width=28, max_shapes_column_width=60))


if __name__ == "__main__":
    main()
