"""ResMLP for image classification (Touvron et al., 2021, Sec. 2-3).

Image -> non-overlapping patches, each embedded by one linear map (a strided
convolution) -> ResMLP blocks (the translation model's block, with "full" token
mixing over all patches and the paper's Aff norm) -> Aff -> average over patches ->
linear classifier. No positional embedding and (but in the class-MLP archs below) no
class token: row i of each token-mixing matrix already is patch i. Activations are time-first
``(patches, batch, channels)`` inside, so token mixing is one GEMM.

The architectures are timm's ``resmlp_{12,24,36}_224`` and ``resmlp_big_24_224``
(same modules, same parameter counts); ``resmlp_mt.convert`` maps their weights,
and the official DeiT ones, to this model. The ``*_class_mlp`` archs replace the
average by the paper's class-MLP stage (``modules/class_mlp.py``; ResMLP-S12: 17.7M
parameters), which timm does not have. ``build_resmlp_image`` builds one
without fairseq.
"""
from dataclasses import dataclass, field

from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from torch import Tensor, nn

from .. import fairseq_compat
from ..modules import Affine, ClassMLP, ResMLPBlock

# name -> what it sets (img_size is the task's --img-size); the rest keep the config's defaults.
ARCHS = {
    "resmlp_s12": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, layerscale_init=0.1),
    "resmlp_s24": dict(img_size=224, patch_size=16, embed_dim=384, depth=24, layerscale_init=1e-5),
    "resmlp_s36": dict(img_size=224, patch_size=16, embed_dim=384, depth=36, layerscale_init=1e-6),
    "resmlp_b24": dict(img_size=224, patch_size=8, embed_dim=768, depth=24, layerscale_init=1e-6),
    # For small images on a CPU (their speed and accuracy are in the README's image section).
    # Fashion-MNIST: 7x7 patches of 4x4 pixels, 145k parameters; CIFAR: 8x8 patches, 0.8M.
    "resmlp_tiny_28": dict(img_size=28, patch_size=4, embed_dim=64, depth=4, layerscale_init=0.1),
    "resmlp_tiny_32": dict(img_size=32, patch_size=4, embed_dim=128, depth=6, layerscale_init=0.1),
}
# The paper's class-MLP variant of each: the same trunk, a class token and 2 class-MLP layers instead of the average.
ARCHS.update({f"{name}_class_mlp": dict(ARCHS[name], class_mlp_layers=2)
              for name in ("resmlp_s12", "resmlp_s24", "resmlp_tiny_28", "resmlp_tiny_32")})


@dataclass
class ResMLPImageConfig(FairseqDataclass):
    """Defaults are ResMLP-S12 (``resmlp_s12``). The resolution is the task's ``--img-size``,
    which the archs set (it is also the data's: the transforms resize to it)."""

    patch_size: int = field(default=16, metadata={"help": "side of the square patches"})
    embed_dim: int = field(default=384, metadata={"help": "width d"})
    depth: int = field(default=12, metadata={"help": "number of ResMLP blocks"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "MLP hidden size / d"})
    layerscale_init: float = field(
        default=0.1, metadata={"help": "initial LayerScale: 0.1 / 1e-5 / 1e-6 for 12 / 24 / 36 blocks"}
    )
    drop_path: float = field(
        default=0.0, metadata={"help": "stochastic depth rate, the same in every block (as the official code)"}
    )
    class_mlp_layers: int = field(
        default=0, metadata={"help": "0: average the patches (the paper's main models); K > 0: a class token "
                                     "read by K class-MLP layers instead (the paper's class-MLP variant: 2)"}
    )
    freeze_trunk: bool = field(
        default=False, metadata={"help": "linear probe: train the classifier only; everything before it keeps its "
                                         "weights (requires_grad=False) and runs in eval mode (no drop-path)"}
    )
    new_head: bool = field(
        default=False, metadata={"help": "when loaded weights (--finetune-from-model) classify another number of "
                                         "classes than the data have, keep this model's new classifier instead of "
                                         "failing"}
    )


CONFIG_FIELDS = tuple(f for f in ResMLPImageConfig.__dataclass_fields__ if f != "_name")


class InputSizeError(ValueError):
    """Images of another resolution or channel count than the model was built for."""


def _init_linear(module: nn.Module) -> None:
    """The official code's initialisation: truncated normal (std 0.02), zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


@register_model("resmlp_image", dataclass=ResMLPImageConfig)
class ResMLPImageModel(BaseFairseqModel):
    """ResMLP image classifier; ``forward(images)`` -> logits ``(B, num_classes)``."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        mlp_ratio: float = 4.0,
        layerscale_init: float = 0.1,
        drop_path: float = 0.0,
        class_mlp_layers: int = 0,
        freeze_trunk: bool = False,
        new_head: bool = False,
    ):
        super().__init__()
        self.freeze_trunk, self.new_head = freeze_trunk, new_head
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.grid_size = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            ResMLPBlock(
                embed_dim,
                self.grid_size**2,
                mixing="full",
                hidden_dim=int(mlp_ratio * embed_dim),
                norm="affine",
                layerscale_init=layerscale_init,
                drop_path=drop_path,
            )
            for _ in range(depth)
        )
        self.class_mlp = ClassMLP(embed_dim, self.grid_size**2, class_mlp_layers, int(mlp_ratio * embed_dim),
                                  layerscale_init) if class_mlp_layers else None
        self.norm = Affine(embed_dim)  # the trunk's last Aff; with class-MLP, CaiT's final norm on the class token
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()  # 0: features (timm's rule)
        self.apply(_init_linear)
        if freeze_trunk:
            for name, param in self.named_parameters():
                param.requires_grad_(name.startswith("head."))

    @classmethod
    def build_model(cls, cfg: ResMLPImageConfig, task):
        fairseq_compat.mark_plugin_task(task)  # its batches: see fairseq_compat, epoch_batches
        if not task.cfg.img_size:
            raise ValueError("no image resolution: pass --img-size (the resmlp_* archs set it)")
        config = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
        return cls(task.num_classes, task.in_chans, task.cfg.img_size, **config)

    def train(self, mode: bool = True):
        """With ``freeze_trunk`` the trunk stays in eval mode (no stochastic depth) while the head trains:
        its features are then the ones a probe (or kNN) of the trained model sees."""
        super().train(mode)
        if self.freeze_trunk:
            for name, module in self.named_children():
                if name != "head":
                    module.train(False)
        return self

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.forward_features(images))

    def forward_features(self, images: Tensor) -> Tensor:
        """The pooled representation ``(B, d)`` the classifier reads (after the final Aff): the features
        of kNN evaluation and linear probes."""
        if images.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise InputSizeError(
                f"this model takes {self.in_chans}x{self.img_size}x{self.img_size} images (channels x height x width), "
                f"got {'x'.join(map(str, images.shape[1:]))}: the token-mixing matrices fix the resolution "
                f"(--img-size / the arch)"
            )
        x = self.patch_embed(images).flatten(2).permute(2, 0, 1).contiguous()  # (patches, B, d)
        for block in self.blocks:
            x = block(x)
        if self.class_mlp is not None:
            return self.norm(self.class_mlp(x))
        return self.norm(x).mean(0)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Name the cause when a checkpoint does not fit, instead of torch's size-mismatch dump.

        A DINO checkpoint (``--arch resmlp_dino_*``) gives its teacher's trunk, the network DINO
        evaluates; weights without a classifier (DINO's, or ``num_classes`` 0) take this model's
        new one with ``new_head``."""
        state_dict = dino_trunk(state_dict)
        head = state_dict.get("head.weight")
        if self.num_classes and self.new_head and (head is None or head.size(0) != self.num_classes):
            state_dict = {**state_dict, **{f"head.{k}": v for k, v in self.head.state_dict().items()}}
        elif head is None and self.num_classes:
            raise ValueError(
                f"the checkpoint has no classifier (a trunk, e.g. self-supervised), this model classifies "
                f"{self.num_classes} classes: pass --new-head to train a new classifier on it"
            )
        elif head is not None and head.size(0) != self.num_classes:
            raise ValueError(
                f"the checkpoint classifies {head.size(0)} classes but the data have {self.num_classes}: "
                f"evaluate it on data with the same classes (or, for fine-tuning or a probe, pass --new-head)"
            )
        mixing = state_dict.get("blocks.0.token_mixing.weight")
        if mixing is not None and mixing.size(0) != self.grid_size**2:
            raise ValueError(
                f"the checkpoint mixes {mixing.size(0)} patches, this model {self.grid_size ** 2} "
                f"({self.img_size}x{self.img_size} images): use the checkpoint's --img-size and --patch-size"
            )
        layers = len({k.split(".")[2] for k in state_dict if k.startswith("class_mlp.layers.")})
        ours = 0 if self.class_mlp is None else len(self.class_mlp.layers)
        if layers != ours:
            raise ValueError(f"the checkpoint has {_class_mlp_text(layers)}, this model {_class_mlp_text(ours)}: "
                             f"use the checkpoint's --arch (or --class-mlp-layers)")
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)


DINO_TEACHER_TRUNK = "teacher.backbone."  # resmlp_dino's keys of the teacher's trunk (models/resmlp_dino.py)


def dino_trunk(state_dict: dict) -> dict:
    """The teacher's trunk of a ``resmlp_dino`` checkpoint as an image model's (head-less) state dict;
    any other state dict as it is."""
    if not any(k.startswith(DINO_TEACHER_TRUNK) for k in state_dict):
        return state_dict
    return {k[len(DINO_TEACHER_TRUNK):]: v for k, v in state_dict.items() if k.startswith(DINO_TEACHER_TRUNK)}


def _class_mlp_text(layers: int) -> str:
    return f"{layers} class-MLP layers" if layers else "no class-MLP stage (it averages the patches)"


def build_resmlp_image(arch: str, num_classes: int = 1000, img_size=None, in_chans: int = 3, **overrides):
    """A model of a named architecture, without fairseq's configuration machinery."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    config = {**ARCHS[arch], **overrides, **({"img_size": img_size} if img_size else {})}
    return ResMLPImageModel(num_classes, in_chans, **config)


def _register(arch: str, config: dict) -> None:
    def set_defaults(args):
        """fairseq's arch convention: a flag given on the command line wins over the arch."""
        defaults = {**ResMLPImageConfig().__dict__, **config}
        for name in ("img_size", *CONFIG_FIELDS):
            if getattr(args, name, None) is None:
                setattr(args, name, defaults[name])

    set_defaults.__doc__ = f"{arch}: " + ", ".join(f"{k}={v}" for k, v in config.items())
    register_model_architecture("resmlp_image", arch)(set_defaults)


for _arch, _config in ARCHS.items():
    _register(_arch, _config)
