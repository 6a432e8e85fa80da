"""``resmlp-show-mixing``: pictures of the learned token-mixing matrices A of a checkpoint.

    resmlp-show-mixing checkpoints/checkpoint_best.pt pictures/ [--layers 0 5 11]

Vision models (``resmlp_image``), as in the paper's figures: row i of A holds the
weights with which output patch i reads every input patch, so each row is shown as
an image on the patch grid, placed where patch i is; the central ``--grid`` x
``--grid`` patches of each chosen layer form one PNG. Translation models
(``resmlp``): the top-left ``--positions`` x ``--positions`` block of each chosen
encoder and decoder matrix (the decoder's is lower-triangular). Blue is negative,
red positive; every small image (vision) or matrix (translation) has its own
symmetric scale. Layers default to the first, middle and last of each stack. A DINO
checkpoint (``resmlp_dino``) shows its teacher's trunk; ``--beside OTHER.pt`` draws each
layer beside the same layer of other image models (``make demo-dino``: self-supervised
beside supervised).
"""
import argparse
import logging
import math
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional

logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's logging setup lets its debug lines out
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import resmlp_mt  # noqa: E402,F401  (loads fairseq checkpoints on torch >= 2.6)
from resmlp_mt import checkpoint_file  # noqa: E402
from resmlp_mt.models.resmlp_image import dino_trunk  # noqa: E402

KEY = re.compile(r"^(?P<stack>.+)\.(?P<layer>\d+)\.token_mixing\.weight$")


def mixing_matrices(state_dict: Dict[str, torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    """{"blocks": [A_0, A_1, ...]} for a vision model; "encoder.layers", "decoder.layers" for translation."""
    stacks = defaultdict(dict)
    for key, value in state_dict.items():
        m = KEY.match(key)
        if m:
            stacks[m["stack"]][int(m["layer"])] = value.float()
    return {stack: [layers[i] for i in sorted(layers)] for stack, layers in stacks.items()}


def _symmetric(ax, image: np.ndarray, scale: float):
    return ax.imshow(image, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")


def patch_mosaic(matrix: torch.Tensor, grid: int) -> np.ndarray:
    """Rows of A (one per output patch) as side x side images on the patch grid, central grid x grid only."""
    side = math.isqrt(matrix.size(0))
    if side * side != matrix.size(0):
        raise ValueError(f"a {matrix.size(0)}x{matrix.size(0)} token-mixing matrix is not over a square patch grid")
    grid = min(grid, side)
    first = (side - grid) // 2
    rows = matrix.view(side, side, side, side)[first:first + grid, first:first + grid]  # out_y, out_x, in_y, in_x
    rows = rows / rows.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    mosaic = np.full((grid * (side + 1) - 1, grid * (side + 1) - 1), np.nan)  # NaN: a blank separating line
    for y in range(grid):
        for x in range(grid):
            mosaic[y * (side + 1):y * (side + 1) + side, x * (side + 1):x * (side + 1) + side] = rows[y, x].numpy()
    return mosaic


def draw(stack: str, layer: int, matrix: torch.Tensor, vision: bool, grid: int, positions: int, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    if vision:
        _symmetric(ax, patch_mosaic(matrix, grid), 1.0)
        ax.set_title(f"{stack} {layer}: rows of A on the patch grid", fontsize=10)
        ax.axis("off")
    else:
        block = matrix[:positions, :positions].numpy()
        if stack.startswith("decoder"):  # causal: the weights above the diagonal are never used
            block = np.where(np.tri(*block.shape, dtype=bool), block, np.nan)
        fig.colorbar(_symmetric(ax, block, float(np.nanmax(np.abs(block))) or 1.0), ax=ax, shrink=0.8)
        ax.set_title(f"{stack} {layer}: A[:{positions}, :{positions}]", fontsize=10)
        ax.set_xlabel("input position j")
        ax.set_ylabel("output position i")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def draw_beside(layer: int, matrices: List[torch.Tensor], names: List[str], grid: int, path: str) -> None:
    """Vision: the same layer of several models, one panel each (e.g. self-supervised beside supervised)."""
    fig, axes = plt.subplots(1, len(matrices), figsize=(5 * len(matrices), 5.4), squeeze=False)
    for ax, matrix, name in zip(axes[0], matrices, names):
        _symmetric(ax, patch_mosaic(matrix, grid), 1.0)
        ax.set_title(f"{name}: block {layer}", fontsize=10)
        ax.axis("off")
    fig.suptitle("rows of A on the patch grid", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def read_stacks(checkpoint: str) -> Dict[str, List[torch.Tensor]]:
    """The token-mixing matrices of a checkpoint; of a DINO one (resmlp_dino), its teacher's trunk."""
    state = checkpoint_file.load_fairseq(checkpoint, "a fairseq checkpoint of a ResMLP")  # a pickle: trusted only
    stacks = mixing_matrices(dino_trunk(state["model"]))
    if not stacks:
        raise ValueError(f"{checkpoint} has no token-mixing weights (*.token_mixing.weight): not a ResMLP checkpoint")
    return stacks


def chosen_layers(checkpoint: str, stack: str, depth: int, layers: Optional[List[int]]) -> List[int]:
    chosen = sorted({0, depth // 2, depth - 1}) if layers is None else layers
    for layer in chosen:
        if not 0 <= layer < depth:
            raise ValueError(f"{checkpoint}: {stack} has layers 0..{depth - 1}, not {layer}")
    return chosen


def show(
    checkpoint: str, out_dir: str, layers: Optional[List[int]] = None, grid: int = 8, positions: int = 32,
    beside: Optional[List[str]] = None, names: Optional[List[str]] = None,
) -> List[str]:
    stacks = read_stacks(checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if beside:
        others = [read_stacks(path).get("blocks") for path in beside]
        if "blocks" not in stacks or any(other is None for other in others):
            raise ValueError("--beside compares image ResMLPs (resmlp_image, resmlp_dino) only")
        models = [stacks["blocks"], *others]
        names = names or [os.path.basename(path) for path in (checkpoint, *beside)]
        depth = min(len(m) for m in models)
        for layer in chosen_layers(checkpoint, "blocks", depth, layers):
            path = os.path.join(out_dir, f"blocks_{layer}_beside.png")
            draw_beside(layer, [m[layer] for m in models], names, grid, path)
            written.append(path)
        return written
    for stack, matrices in stacks.items():
        for layer in chosen_layers(checkpoint, stack, len(matrices), layers):
            path = os.path.join(out_dir, f"{stack.replace('.layers', '')}_{layer}.png")
            draw(stack, layer, matrices[layer], stack == "blocks", grid, positions, path)
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a fairseq checkpoint of resmlp_image or resmlp (translation)")
    p.add_argument("out_dir", help="directory for the PNGs")
    p.add_argument("--layers", type=int, nargs="+", help="layer indices (default: first, middle, last)")
    p.add_argument("--grid", type=int, default=8, help="vision: show the central GRID x GRID output patches")
    p.add_argument("--positions", type=int, default=32, help="translation: show A[:POSITIONS, :POSITIONS]")
    p.add_argument("--beside", nargs="+", metavar="CKPT", help="vision: draw each layer beside the same layer of "
                                                              "these checkpoints (one PNG per layer)")
    p.add_argument("--names", nargs="+", help="panel titles with --beside (default: the file names)")
    args = p.parse_args(argv)
    if args.names and len(args.names) != 1 + len(args.beside or []):
        p.error("--names needs one name per checkpoint: the first, then each of --beside")
    try:
        written = show(args.checkpoint, args.out_dir, args.layers, args.grid, args.positions, args.beside,
                       args.names)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the pictures' directory
        print(f"error: cannot write the pictures to {args.out_dir}: {e.strerror} ({e.filename}); "
              "pass a directory you can write to", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
