"""``--task image_dino``: DINO self-supervised training (Caron et al., 2021) of a ResMLP,
through ``fairseq-train``, on any images ``--task image_classification`` reads (labels unused).

    fairseq-train DATA --user-dir resmlp_mt --task image_dino --arch resmlp_dino_s12 --criterion dino \\
        --optimizer timm_adamw --lr 5e-4 --weight-decay 0.04 --weight-decay-end 0.4 \\
        --lr-scheduler cosine --warmup-updates 10000 --max-update 300000 --clip-norm 3.0 \\
        --teacher-temp 0.04 --warmup-teacher-temp-updates 30000 --freeze-last-layer-updates 1250

Batches are ``MultiCrop`` views (``image/multi_crop.py``): ``(B, 2 + local crops, C, H,
W)``, every view at the model's resolution. What DINO schedules and fairseq does not,
this task does, as functions of the update number (so a resumed run redoes them exactly),
around each optimizer step:

- before it, the last layer of the student's head gets no update during the first
  ``--freeze-last-layer-updates`` (DINO: the first epoch), and the weight decay of the
  decayed parameter groups follows a cosine from ``--weight-decay`` to
  ``--weight-decay-end`` over ``--max-update``;
- after it, the teacher moves towards the student with the momentum of that update,
  a cosine from ``--momentum-teacher`` to 1 over ``--max-update``.

The learning rate is fairseq's scheduler (``cosine`` with ``--warmup-updates`` is
DINO's linear warm-up and cosine decay); the teacher temperature and the centre belong
to the ``dino`` criterion. Validation splits get the same views, seeded per image, and
report the loss without moving the centre.
"""
import math
from dataclasses import dataclass, field
from typing import Optional

from fairseq import metrics
from fairseq.tasks import register_task
from omegaconf import II

from ..image.data import ImageDataset
from ..image.multi_crop import MultiCrop
from .image_classification import ImageClassificationConfig, ImageClassificationTask


@dataclass
class ImageDinoConfig(ImageClassificationConfig):
    """The data options of ``image_classification``; its augmentation options give way to DINO's views."""

    local_crops: int = field(default=0, metadata={"help": "local views per image besides the 2 global ones, each "
                                                          "resized to the model's resolution (see multi_crop.py)"})
    global_crop_min_scale: float = field(default=0.4, metadata={"help": "smallest area of a global view"})
    local_crop_min_scale: float = field(default=0.05, metadata={"help": "smallest area of a local view"})
    local_crop_max_scale: float = field(default=0.4, metadata={"help": "largest area of a local view"})
    momentum_teacher: float = field(default=0.996, metadata={"help": "teacher EMA momentum at update 0; a cosine "
                                                                     "takes it to 1 at --max-update"})
    weight_decay_end: Optional[float] = field(
        default=None, metadata={"help": "weight decay at --max-update, on a cosine from --weight-decay "
                                        "(DINO: 0.04 -> 0.4); unset: constant"})
    freeze_last_layer_updates: int = field(default=0, metadata={"help": "updates during which the last layer of "
                                                                        "the student's head does not change"})
    max_update: int = II("optimization.max_update")


def cosine(update: int, total: int, start: float, end: float) -> float:
    """DINO's cosine schedule: ``start`` at update 0, ``end`` at ``total``."""
    t = min(update, total) / total
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


@register_task("image_dino", dataclass=ImageDinoConfig)
class ImageDinoTask(ImageClassificationTask):
    @classmethod
    def setup_task(cls, cfg: ImageDinoConfig, **kwargs):
        if not cfg.max_update:
            raise ValueError("--task image_dino schedules the teacher's momentum (and the weight decay) over the "
                             "whole run: pass --max-update")
        return super().setup_task(cfg, **kwargs)

    def image_dataset(self, source, cfg, train: bool, real_labels=None) -> ImageDataset:
        views = MultiCrop(cfg.img_size, self.mean, self.std, cfg.local_crops,
                          global_scale=(cfg.global_crop_min_scale, 1.0),
                          local_scale=(cfg.local_crop_min_scale, cfg.local_crop_max_scale), hflip=cfg.hflip)
        return ImageDataset(source, views, shuffle=train, seed=cfg.seed, seed_items=True)

    def teacher_momentum(self, update: int) -> float:
        return cosine(update, self.cfg.max_update, self.cfg.momentum_teacher, 1.0)

    def optimizer_step(self, optimizer, model, update_num):
        dino = model
        while not hasattr(dino, "update_teacher") and hasattr(dino, "module"):  # fairseq's DDP wrappers
            dino = dino.module
        if update_num < self.cfg.freeze_last_layer_updates:
            for param in dino.student.head.last_layer.parameters():
                param.grad = None  # the optimizer skips it, moments and weight decay alike
        if self.cfg.weight_decay_end is not None:
            self._schedule_weight_decay(optimizer, update_num)
        super().optimizer_step(optimizer, model, update_num)
        momentum = self.teacher_momentum(update_num)
        dino.update_teacher(momentum)
        metrics.log_scalar("teacher_momentum", momentum, weight=0, round=5)

    def _schedule_weight_decay(self, optimizer, update_num: int) -> None:
        start = getattr(getattr(optimizer, "cfg", None), "weight_decay", None)
        if start is None:
            raise ValueError("--weight-decay-end needs an optimizer with --weight-decay (e.g. timm_adamw)")
        decay = cosine(update_num, self.cfg.max_update, start, self.cfg.weight_decay_end)
        for group in optimizer.param_groups:
            if not group.get("no_weight_decay"):
                group["weight_decay"] = decay
        metrics.log_scalar("wd", decay, weight=0, round=5)
