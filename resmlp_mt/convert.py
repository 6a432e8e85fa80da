"""``resmlp-convert``: ResMLP weights from timm or the official DeiT release <-> fairseq.

    resmlp-convert resmlp_12_no_dist.pth resmlp_s12.pt --data /data/imagenet
    fairseq-validate --user-dir resmlp_mt --path resmlp_s12.pt --valid-subset val --batch-size 64
    resmlp-convert resmlp_s12.pt resmlp_12_224_timm.pth --to timm

The input is read with timm's loader (tensors only; a ``model``/``state_dict`` entry
or a bare state dict; ``.safetensors`` too). Official keys (``patch_embed.proj``,
``attn``, ``gamma_1``, ...) become timm's through timm's own ResMLP filter, and
timm's become ours here. The architecture (depth, width, patch size, resolution,
classes, channels) is read off the weights, and the output is a fairseq checkpoint
with a complete config for ``--task image_classification`` that ``fairseq-validate
--path`` and ``fairseq-train --finetune-from-model`` load. ``--num-classes N`` puts a
new, untrained N-class head on for fine-tuning. ``--to timm`` takes image ResMLP
checkpoints only (timm has no translation model and no class-MLP stage) and writes a
plain state dict only after timm's model has loaded it (strict): the success line says
how, e.g. ``timm.create_model("resmlp_12_224", checkpoint_path=...)``.
"""
import argparse
import functools
import math
import os
import re
import sys

import timm
from fairseq import checkpoint_utils, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import OmegaConf
from timm.models import load_state_dict
from timm.models.mlp_mixer import Affine, MlpMixer, ResBlock, checkpoint_filter_fn

from . import checkpoint_file
from .models.resmlp_image import ARCHS, ResMLPImageModel, dino_trunk

USER_DIR = os.path.dirname(os.path.abspath(__file__))
# timm key pattern -> ours; Aff's alpha/beta are (1, 1, d) in timm and (d,) here.
TIMM_TO_OURS = [(r"^stem\.proj\.", "patch_embed."), (r"\.linear_tokens\.", ".token_mixing."),
                (r"\.mlp_channels\.", ".mlp."), (r"\.ls([12])$", r".ls\1.gamma")]
OURS_TO_TIMM = [(r"^patch_embed\.", "stem.proj."), (r"\.token_mixing\.", ".linear_tokens."),
                (r"\.mlp\.", ".mlp_channels."), (r"\.ls([12])\.gamma$", r".ls\1")]


def _rename(state_dict: dict, rules, affine_shape) -> dict:
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value.reshape(affine_shape(value)) if key.endswith((".alpha", ".beta")) else value
    return out


DINO_HEAD = ("head.mlp.", "head.last_layer.")  # DINO's projection head: not a classifier, not the trunk


def dino_layouts(state_dict: dict) -> dict:
    """The trunk of DINO's layouts, official keys kept: the released ``resmlp_{12,24}_dino.pth`` (a trunk
    without a head: as it is), DINO's training checkpoint (``{"teacher": {"backbone.*", "head.*"}, ...}``,
    with or without ``module.``) and bare ``backbone.*`` state dicts (the teacher's trunk: DINO evaluates it)."""
    if isinstance(state_dict.get("teacher"), dict):
        state_dict = state_dict["teacher"]
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").removeprefix("backbone.")
        if not key.startswith(DINO_HEAD):
            out[key] = value
    return out


def from_timm(state_dict: dict) -> dict:
    """timm's, the official (DeiT) or DINO's ResMLP state dict -> ``ResMLPImageModel``'s (a DINO trunk has
    no ``head.*``: ``num_classes`` 0, or ``--num-classes`` for a new head)."""
    dino = dino_trunk(state_dict)
    if dino is not state_dict:  # our own resmlp_dino checkpoint: its teacher's trunk, in our names already
        return dino
    state_dict = dino_layouts(state_dict)
    if "patch_embed.proj.weight" in state_dict:
        state_dict = checkpoint_filter_fn(state_dict, None)  # official names -> timm's
    if "stem.proj.weight" not in state_dict:
        hint = (" (it is a resmlp_mt checkpoint: convert it to timm's format with --to timm)"
                if "patch_embed.weight" in state_dict else "")
        raise ValueError(f"not a ResMLP state dict of timm or DeiT: no stem.proj.weight / patch_embed.proj.weight"
                         f"{hint}")
    return _rename(state_dict, TIMM_TO_OURS, lambda v: (-1,))


def to_timm(state_dict: dict) -> dict:
    return _rename(state_dict, OURS_TO_TIMM, lambda v: (1, 1, -1))


TIMM_ARCHS = [name for name, arch in ARCHS.items() if not arch.get("class_mlp_layers")]  # timm has no class-MLP
IMAGE_KEYS = ("patch_embed.weight", "blocks.0.token_mixing.weight", "head.weight")
# (patch, width, depth) -> timm's registered name; any resolution, class count and channels go as arguments.
TIMM_NAMES = {(16, 384, 12): "resmlp_12_224", (16, 384, 24): "resmlp_24_224", (16, 384, 36): "resmlp_36_224",
              (8, 768, 24): "resmlp_big_24_224"}


def image_state(checkpoint: dict, path: str) -> dict:
    """The model weights of a fairseq checkpoint of ``resmlp_image``; ValueError for any other model."""
    cfg = checkpoint.get("cfg") or {}
    arch = (cfg.get("model") or {}).get("_name") if hasattr(cfg, "get") else None
    state = checkpoint["model"]
    if (arch is not None and arch not in ARCHS and arch != "resmlp_image") or not all(k in state for k in IMAGE_KEYS):
        what = f"a {arch!r} checkpoint" if arch else "not an image ResMLP checkpoint"
        translation = (arch or "").startswith("resmlp") or "encoder.layers.0.token_mixing.weight" in state
        kind = " (translation)" if translation else ""
        raise ValueError(f"{path} is {what}{kind}: --to timm converts image ResMLP checkpoints only "
                         f"(--task image_classification, --arch {'/'.join(TIMM_ARCHS)}); "
                         f"timm has no translation models")
    return state


def timm_model(config: dict):
    """timm's model for these sizes, and the Python expression that builds it."""
    sizes = dict(img_size=config["img_size"], num_classes=config["num_classes"], in_chans=config["in_chans"])
    name = TIMM_NAMES.get((config["patch_size"], config["embed_dim"], config["depth"]))
    if name and config["mlp_ratio"] == 4:
        args = {k: v for k, v in sizes.items() if v != dict(img_size=224, num_classes=1000, in_chans=3)[k]}
        shown = "".join(f", {k}={v}" for k, v in args.items())
        return timm.create_model(name, pretrained=False, **args), f"timm.create_model({name!r}{shown}, " \
                                                                  "checkpoint_path=...)"
    args = dict(sizes, patch_size=config["patch_size"], num_blocks=config["depth"], embed_dim=config["embed_dim"],
                mlp_ratio=config["mlp_ratio"])
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    model = MlpMixer(**args, block_layer=functools.partial(ResBlock, init_values=0.1), norm_layer=Affine)
    return model, (f"MlpMixer({shown}, block_layer=ResBlock, norm_layer=Affine), all three from "
                   "timm.models.mlp_mixer, then .load_state_dict(torch.load(...))")


def checked_timm_state(state_dict: dict) -> tuple:
    """Our weights in timm's names, after timm's model has loaded them strictly; and how to load them."""
    config = model_config(state_dict)
    if config["class_mlp_layers"]:
        raise ValueError("it is a class-MLP model (--arch *_class_mlp): timm's ResMLP has no class-MLP stage, "
                         "only the average over patches")
    out = to_timm(state_dict)
    model, how = timm_model(config)
    try:
        model.load_state_dict(out, strict=True)
    except RuntimeError as e:
        raise ValueError(f"timm's model does not load the converted weights ({how}): "
                         f"{' '.join(str(e).split())[:500]}") from None
    return out, how


def model_config(state_dict: dict) -> dict:
    """ResMLPImageModel's arguments, read off the shapes of its state dict."""
    dim, in_chans, patch, _ = state_dict["patch_embed.weight"].shape
    patches = state_dict["blocks.0.token_mixing.weight"].size(0)
    return dict(
        num_classes=state_dict["head.weight"].size(0) if "head.weight" in state_dict else 0,  # 0: a trunk
        in_chans=in_chans,
        img_size=patch * math.isqrt(patches),
        patch_size=patch,
        embed_dim=dim,
        depth=len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")}),
        mlp_ratio=state_dict["blocks.0.mlp.fc1.weight"].size(0) / dim,
        class_mlp_layers=len({k.split(".")[2] for k in state_dict if k.startswith("class_mlp.layers.")}),
    )


def arch_name(config: dict) -> str:
    """The registered arch with these sizes, else the model's own name (every field explicit)."""
    for name, arch in ARCHS.items():
        arch = {"mlp_ratio": 4, "class_mlp_layers": 0, **arch}
        if all(config[k] == v for k, v in arch.items() if k != "layerscale_init"):
            return name
    return "resmlp_image"


def fairseq_checkpoint(state_dict: dict, data: str, dataset: str = "imagefolder", num_classes=None) -> dict:
    """A checkpoint as fairseq's trainer writes one, ready for ``fairseq-validate --path``."""
    config = model_config(state_dict)
    model = ResMLPImageModel(**config)
    model.load_state_dict(state_dict)  # strict: every weight has its place
    if not config["num_classes"] and not num_classes:
        print("note: the weights have no classifier (a trunk, e.g. DINO's): the checkpoint gives features "
              "(resmlp-knn --path); --num-classes N adds a new classifier for fine-tuning or a linear probe")
    if num_classes and num_classes != config["num_classes"]:
        config["num_classes"] = num_classes
        model.head = ResMLPImageModel(**config).head  # freshly initialised, for fine-tuning
    fields = [f"--{k.replace('_', '-')}={v}" for k, v in config.items() if k not in ("num_classes", "in_chans")]
    args = options.parse_args_and_arch(options.get_training_parser(), [
        data, "--user-dir", USER_DIR, "--task", "image_classification", "--dataset", dataset,
        "--arch", arch_name(config), *fields, "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb",
    ])
    cfg = convert_namespace_to_omegaconf(args)
    return {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ImageCrossEntropyCriterion", "optimizer_name": "TimmLamb",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="timm or official ResMLP weights (.pth, .safetensors); with --to timm, "
                                 "a fairseq checkpoint")
    p.add_argument("output", help="where to write the fairseq checkpoint (or, with --to timm, the state dict)")
    p.add_argument("--to", choices=["fairseq", "timm"], default="fairseq", help="output format")
    p.add_argument("--data", default="DATA", help="the image data the checkpoint's config names "
                                                  "(fairseq-validate --model-overrides \"{'data': ...}\" changes it)")
    p.add_argument("--dataset", default="imagefolder", help="what --data holds (see --task image_classification)")
    p.add_argument("--num-classes", type=int, help="replace the classifier by a new one with this many classes")
    args = p.parse_args(argv)
    how = None
    try:
        if args.to == "timm":
            checkpoint = checkpoint_file.load_fairseq(args.input, "a fairseq checkpoint of an image ResMLP")
            state, how = checked_timm_state(image_state(checkpoint, args.input))  # the load above: a pickle
        else:
            checkpoint_file.require(args.input, "ResMLP weights of timm or DeiT (.pth, .safetensors)",
                                    safetensors=True)
            weights = from_timm(load_state_dict(args.input))
            state = fairseq_checkpoint(weights, args.data, args.dataset, args.num_classes)
    except checkpoint_file.NotACheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ValueError, RuntimeError) as e:
        print(f"error: cannot convert {args.input}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    checkpoint_utils.torch_persistent_save(state, args.output)
    print(f"wrote {args.output}" + (f"; load it with {how}" if how else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
