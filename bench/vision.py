"""ResMLP-S12/S24 image speed: ours (the shared ResMLPBlock, time-first) vs timm, same weights.

Contenders, interleaved with a large fp32 GEMM so that all three see the same load:
ours, timm's ``resmlp_12_224`` / ``resmlp_24_224`` (pretrained=False) with its weights
converted into ours (logits checked equal before timing), and an n x n matmul that
gives the machine's fp32 GEMM rate under that load (the "peak").

Work per image, in multiply-adds (FLOPs = 2 x MACs; norms, GELU, LayerScale, biases
and the pooling are not counted), N = (img / patch)^2 patches, d channels:
    patch embedding   N * (in_chans * patch^2) * d
    per block         N^2 * d            token mixing
                    + 2 * N * d * 4d     the MLP's two linears
    head              d * classes
A training step (forward, backward, AdamW) is counted as 3x the forward FLOPs.

Our model is the plugin's ``ResMLPImageModel`` (``build_resmlp_image``), its weights
timm's through ``resmlp_mt.convert.from_timm``, the same path ``resmlp-convert`` takes.

The training step also runs under bf16 autocast (``fairseq-train --bf16`` on the CPU,
``resmlp_mt.cpu_bf16``; fp32 weights and AdamW), for ours and timm's, unless --no-bf16;
its "of peak" is still against the fp32 GEMM.

    python bench/vision.py                 # S12 and S24 at 224 px
"""
import contextlib
import re

import timm
import torch
from torch import nn

from benchlib import environment, interleaved, median, paired_speedup, parser, ratio_line, report, setup
from resmlp_mt import cpu_bf16
from resmlp_mt.convert import from_timm
from resmlp_mt.models.resmlp_image import ARCHS as OUR_ARCHS
from resmlp_mt.models.resmlp_image import build_resmlp_image

ARCHS = {"s12": ("resmlp_12_224", "resmlp_s12"), "s24": ("resmlp_24_224", "resmlp_s24")}  # timm's name, ours
DIM, PATCH = 384, 16
TARGET_SPEED, TARGET_PEAK, TARGET_BF16 = 1.0, 0.75, 2.0


def pair(arch: str, num_classes: int, img_size: int):
    """(ours, timm) with the same weights. timm's zero-initialised head, and its LayerScale and
    Affine constants, are randomised first: the logits the equivalence check compares are then
    not all zero, and every block contributes to them."""
    name, ours_name = ARCHS[arch]
    reference = timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size)
    with torch.no_grad():
        for key, p in reference.named_parameters():
            if re.search(r"\.(alpha|beta)$|\.ls[12]$|^head\.", key):
                p.normal_(1.0 if key.endswith("alpha") else 0.0, 0.2)
    ours = build_resmlp_image(ours_name, num_classes, img_size=img_size)
    ours.load_state_dict(from_timm(reference.state_dict()))
    return ours, reference


def max_logit_difference(ours, reference, img_size: int, batch: int = 2) -> float:
    images = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (ours.eval()(images) - reference.eval()(images)).abs().max().item()


def forward_gflop(depth: int, num_classes: int, img_size: int, in_chans: int = 3) -> float:
    n = (img_size // PATCH) ** 2
    macs = n * in_chans * PATCH**2 * DIM + depth * (n * n * DIM + 2 * n * DIM * 4 * DIM) + DIM * num_classes
    return 2 * macs / 1e9


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--archs", default="s12,s24", help="comma-separated, of " + ", ".join(ARCHS))
    p.add_argument("--batch", type=int, default=32, help="the large batch for inference and training")
    p.add_argument("--gemm", type=int, default=2048, help="n of the n x n fp32 matmul that measures the peak")
    p.add_argument("--no-bf16", dest="bf16", action="store_false",
                   help="skip the training steps under bf16 autocast (fairseq-train --bf16 on the CPU)")
    args = p.parse_args()
    setup(args)
    archs = ["s12"] if args.tiny else args.archs.split(",")
    img, classes, big, n = (32, 10, 4, 256) if args.tiny else (224, 1000, args.batch, args.gemm)
    repeats = args.repeats or (2 if args.tiny else 5)
    env = environment(args.threads)
    a, b = torch.randn(n, n), torch.randn(n, n)

    def gemm():
        return torch.mm(a, b)

    rows, ratios, raw = [], [], {}
    for arch in archs:
        ours, reference = pair(arch, classes, img)
        diff = max_logit_difference(ours, reference, img)
        ratios.append(f"check [{arch}]: max |ours - timm| logit difference {diff:.2e} (same weights)")
        fwd = forward_gflop(OUR_ARCHS[ARCHS[arch][1]]["depth"], classes, img)
        for mode, batch in (("infer", 1), ("infer", big), ("train", big)):
            images = torch.randn(batch, 3, img, img)
            labels = torch.randint(0, classes, (batch,))
            runs = {"gemm": gemm}
            for name, model in (("ours", ours), ("timm", reference)):
                if mode == "infer":
                    model.eval()
                    runs[name] = lambda m=model: m(images)
                else:
                    model.train()
                    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
                    runs[name] = lambda m=model, o=opt: train_step(m, o, images, labels)
                    if args.bf16:  # what fairseq-train --bf16 does on the CPU (resmlp_mt.cpu_bf16)
                        runs[f"{name} bf16"] = lambda m=model, o=opt: train_step(m, o, images, labels, bf16=True)
            with torch.inference_mode(mode == "infer"):
                seconds = interleaved(runs, repeats)
            peak = 2 * n**3 / 1e9 / median(seconds["gemm"])
            flop = fwd * batch * (3 if mode == "train" else 1)
            for name in [n for n in runs if n != "gemm"]:
                t = median(seconds[name])
                rows.append([arch, f"{mode} b{batch}", name, batch / t,
                             f"{batch / max(seconds[name]):.1f}-{batch / min(seconds[name]):.1f}",
                             flop / t, f"{flop / t / peak:.0%}"])
            rows.append([arch, f"{mode} b{batch}", f"gemm {n}", "", "", peak, "100%"])
            r = paired_speedup(seconds, "ours", "timm")
            if (mode, batch) == ("infer", big):
                ratios.append(ratio_line(f"ours/timm images/s [{arch} infer b{batch}]", r, TARGET_SPEED))
                frac = flop / median(seconds["ours"]) / peak
                ratios.append(f"fraction of GEMM peak, ours [{arch} infer b{batch}]: {frac:.0%} "
                              f"(target >= {TARGET_PEAK:.0%}: {'met' if frac >= TARGET_PEAK else 'NOT met'})")
            else:
                ratios.append(f"ratio ours/timm images/s [{arch} {mode} b{batch}]: "
                              f"{r[0]:.2f}x, quartiles {r[1]:.2f}-{r[2]:.2f}")
            for name in ("ours", "timm"):
                if f"{name} bf16" in seconds:
                    ratios.append(ratio_line(f"{name} bf16/fp32 training images/s [{arch} b{batch}]",
                                             paired_speedup(seconds, f"{name} bf16", name), TARGET_BF16))
            raw[f"{arch} {mode} b{batch}"] = seconds
        ratios.append(f"work [{arch}]: {fwd:.3g} GFLOP per {img}px image forward ({classes} classes)")
    report([(f"Vision: ResMLP ours vs timm (same weights), images/s and GFLOP/s, fp32 GEMM {n} as peak",
             ["arch", "mode", "model", "images/s (median)", "range", "GFLOP/s", "of peak"], rows)],
           ratios, env, args.out, raw=raw)


def train_step(model, optimizer, images, labels, bf16: bool = False) -> None:
    with cpu_bf16.autocast() if bf16 else contextlib.nullcontext():
        loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


if __name__ == "__main__":
    main()
