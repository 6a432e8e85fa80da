"""``--arch resmlp_dino_*``: a ResMLP student and its EMA teacher for DINO self-supervised
training (Caron et al., 2021), as the paper trains ResMLP-S12/S24 without labels (Sec. 4.3).

The model holds both networks (trunk + ``DINOHead``) and the teacher's centre, so that
fairseq's checkpoints carry all of DINO's state: ``student.*``, ``teacher.*`` and
``center``. The teacher is fairseq's own ``EMAModule`` of the student (``update_teacher``,
called by the ``image_dino`` task right after each optimizer step with the momentum of
that update); it has no gradients and always runs in eval mode (no stochastic depth).
The schedules are functions of the update number, so a resumed run redoes them exactly.

``forward(images)`` takes the multi-crop batch ``(B, V, C, H, W)`` of ``--task
image_dino`` (the first two views are the global crops) and returns the student's logits
for every view ``(V, B, K)`` and the teacher's for the global views ``(2, B, K)``; the
``dino`` criterion turns them into the loss and updates the centre. Feature extraction,
kNN and linear probes use the teacher's trunk: ``resmlp-knn --path`` and
``fairseq-train --finetune-from-model ... --new-head`` read it from the checkpoint.
"""
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from fairseq.models import BaseFairseqModel, register_model, register_model_architecture
from fairseq.modules.ema_module import EMAModule, EMAModuleConfig
from torch import Tensor, nn

from .. import fairseq_compat
from ..modules.dino_head import DINOHead
from .resmlp_image import ARCHS, CONFIG_FIELDS, ResMLPImageConfig, ResMLPImageModel

HEAD_FIELDS = ("dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim", "dino_head_layers", "norm_last_layer")
# name -> (trunk arch of resmlp_image.py, head sizes). DINO's head for the paper's models; a small one for 28x28.
DINO_ARCHS = {
    "resmlp_dino_s12": ("resmlp_s12", dict(dino_out_dim=65536, dino_hidden_dim=2048, dino_bottleneck_dim=256)),
    "resmlp_dino_s24": ("resmlp_s24", dict(dino_out_dim=65536, dino_hidden_dim=2048, dino_bottleneck_dim=256)),
    "resmlp_dino_tiny_28": ("resmlp_tiny_28", dict(dino_out_dim=1024, dino_hidden_dim=256, dino_bottleneck_dim=64)),
}


@dataclass
class ResMLPDinoConfig(ResMLPImageConfig):
    """The trunk's options (``resmlp_image``'s) and the DINO head's."""

    dino_out_dim: int = field(default=65536, metadata={"help": "DINO head: number of prototypes K"})
    dino_hidden_dim: int = field(default=2048, metadata={"help": "DINO head: MLP hidden width"})
    dino_bottleneck_dim: int = field(default=256, metadata={"help": "DINO head: width before the last layer"})
    dino_head_layers: int = field(default=3, metadata={"help": "DINO head: MLP layers"})
    norm_last_layer: bool = field(
        default=True, metadata={"help": "fix the last layer's weight-norm gain at 1 (DINO's default: stabler)"}
    )


class DinoNetwork(nn.Module):
    """A trunk (head-less image ResMLP) and a DINO head: images -> K logits."""

    def __init__(self, backbone: ResMLPImageModel, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


@register_model("resmlp_dino", dataclass=ResMLPDinoConfig)
class ResMLPDinoModel(BaseFairseqModel):
    GLOBAL_VIEWS = 2

    def __init__(self, student: DinoNetwork, momentum: float = 0.996):
        super().__init__()
        self.student = student
        self.ema = EMAModule(student, EMAModuleConfig(ema_decay=momentum, add_missing_params=False))
        self.teacher = self.ema.model  # a registered module: its weights are in the checkpoint
        self.teacher.train(False)
        self.register_buffer("center", torch.zeros(1, student.head.last_layer.out_features))
        self.num_updates = 0

    @classmethod
    def build_model(cls, cfg: ResMLPDinoConfig, task):
        fairseq_compat.mark_plugin_task(task)
        if not hasattr(task, "teacher_momentum"):
            raise ValueError("--arch resmlp_dino_* trains with --task image_dino (its multi-crop batches and the "
                             "teacher's schedule), not --task " + type(task).__name__)
        if cfg.freeze_trunk or cfg.new_head or cfg.class_mlp_layers:
            raise ValueError("DINO trains the whole trunk, which averages its patches: --freeze-trunk, --new-head "
                             "and --class-mlp-layers are options of the supervised resmlp_image archs")
        trunk = {name: getattr(cfg, name) for name in CONFIG_FIELDS}
        backbone = ResMLPImageModel(0, task.in_chans, task.cfg.img_size, **trunk)
        head = DINOHead(cfg.embed_dim, cfg.dino_out_dim, cfg.dino_hidden_dim, cfg.dino_bottleneck_dim,
                        cfg.dino_head_layers, cfg.norm_last_layer)
        return cls(DinoNetwork(backbone, head), task.teacher_momentum(0))

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.train(False)
        return self

    def set_num_updates(self, num_updates):
        """fairseq calls this before every step and when it loads a checkpoint: the criterion's schedules read it."""
        self.num_updates = num_updates
        super().set_num_updates(num_updates)

    def forward(self, images: Tensor):
        if images.dim() != 5 or images.size(1) < self.GLOBAL_VIEWS:
            raise ValueError(f"DINO takes multi-crop batches (B, views >= 2, C, H, W) from --task image_dino, "
                             f"got a tensor of shape {tuple(images.shape)}")
        batch, views = images.shape[:2]
        crops = images.transpose(0, 1).flatten(0, 1)  # view-major: the global views first
        student = self.student(crops).unflatten(0, (views, batch))
        with torch.no_grad():
            teacher = self.teacher(crops[: self.GLOBAL_VIEWS * batch]).unflatten(0, (self.GLOBAL_VIEWS, batch))
        return student, teacher

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for every parameter."""
        self.ema.set_decay(momentum)
        self.ema.step(self.student)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor, momentum: float) -> None:
        """The centre follows the mean teacher output over the whole (all-ranks) batch."""
        total = teacher_logits.detach().float().flatten(0, -2).sum(0, keepdim=True)
        count = torch.tensor(float(teacher_logits[..., 0].numel()), device=total.device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
            dist.all_reduce(count)
        self.center.mul_(momentum).add_(total / count, alpha=1 - momentum)

    def max_positions(self):
        return None


def _register(arch: str, trunk_arch: str, head: dict) -> None:
    def set_defaults(args):
        defaults = {**ResMLPDinoConfig().__dict__, **ARCHS[trunk_arch], **head}
        for name in ("img_size", *CONFIG_FIELDS, *HEAD_FIELDS):
            if getattr(args, name, None) is None:
                setattr(args, name, defaults[name])

    set_defaults.__doc__ = f"{arch}: the {trunk_arch} trunk, " + ", ".join(f"{k}={v}" for k, v in head.items())
    register_model_architecture("resmlp_dino", arch)(set_defaults)


for _arch, (_trunk, _head) in DINO_ARCHS.items():
    _register(_arch, _trunk, _head)
