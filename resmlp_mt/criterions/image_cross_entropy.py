"""Image classification losses: cross entropy with Mixup/CutMix soft targets and label
smoothing (``image_cross_entropy``), and DeiT's hard distillation (``hard_distillation``).

Both report top-1 ``accuracy`` and ``top5`` (in %) whenever the targets are hard labels
(validation, or training without Mixup), ``real_accuracy`` (ImageNet-ReaL top-1) when the
task has ``--real-labels``, and ``nsentences``, the number of images evaluated. Losses are in nats, as in timm and DeiT.

timm is imported where it is used: it pulls torchvision and torch._dynamo, 4 s, which
translation runs (which import this module with the plugin) never need.
"""
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils, metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.data import data_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from omegaconf import MISSING
from torch import Tensor

from ..image.real_labels import real_counts


@dataclass
class ImageCrossEntropyConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing (DeiT: 0.1)"})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (DeiT: 0.8); 0 and --cutmix 0: no mixing"})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha (DeiT: 1.0)"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of mixing a batch"})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "probability of CutMix when both are on"})
    mixup_mode: ChoiceEnum(["batch", "pair", "elem"]) = field(
        default="batch", metadata={"help": "mix parameters per batch, per pair or per image"}
    )


@register_criterion("image_cross_entropy", dataclass=ImageCrossEntropyConfig)
class ImageCrossEntropyCriterion(FairseqCriterion):
    """Cross entropy; in training, on timm's Mixup/CutMix of the batch when enabled.

    Mixing draws from NumPy, seeded from torch's generator, which fairseq reseeds at
    every update with ``--seed`` + update number: a run, and its resumption, mix alike.
    A batch of odd size (the last one of an epoch) loses one image to be mixed in pairs.
    """

    def __init__(self, cfg: ImageCrossEntropyConfig, task):
        super().__init__(task)
        self.label_smoothing = cfg.label_smoothing
        self.mixup = None
        if cfg.mixup > 0 or cfg.cutmix > 0:
            from timm.data import Mixup

            self.mixup = Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                prob=cfg.mixup_prob,
                switch_prob=cfg.mixup_switch_prob,
                mode=cfg.mixup_mode,
                label_smoothing=cfg.label_smoothing,
                num_classes=task.num_classes,
            )

    def forward(self, model, sample, reduce=True):
        images, target = sample["net_input"]["images"], sample["target"]
        if model.training and self.mixup is not None:
            images, target = self.mix(images, target)
        logits = model(images)
        loss, logging_output = self.compute_loss(model, images, logits, target)
        n = target.size(0)
        logging_output.update(loss=loss.data, nsentences=n, ntokens=n, sample_size=n)
        if target.dim() == 1:  # hard labels
            top = logits.topk(min(5, logits.size(1)), dim=1).indices.eq(target.unsqueeze(1))
            logging_output.update(ncorrect=top[:, 0].sum().item(), ncorrect5=top.any(1).sum().item())
            if "real_labels" in sample:  # --real-labels: ImageNet-ReaL top-1
                logging_output["nreal_correct"], logging_output["nreal"] = real_counts(logits, sample["real_labels"])
        return loss, n, logging_output

    def mix(self, images: Tensor, target: Tensor):
        even = images.size(0) // 2 * 2
        with data_utils.numpy_seed(int(torch.randint(2**31 - 1, ()))):
            return self.mixup(images[:even].clone(), target[:even])

    def compute_loss(self, model, images: Tensor, logits: Tensor, target: Tensor):
        """The summed loss (fairseq divides by the sample size) and extra logging outputs."""
        if target.dim() == 2:  # Mixup's soft targets, label smoothing included
            from timm.loss import SoftTargetCrossEntropy

            return SoftTargetCrossEntropy()(logits, target) * logits.size(0), {}
        return F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, reduction="sum"), {}

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        n = total("nsentences")
        metrics.log_scalar("loss", total("loss") / max(n, 1), n, round=3)
        for key in ("loss_ce", "loss_teacher"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, total(key) / max(n, 1), n, round=3)
        metrics.log_scalar_sum("nsentences", n, round=0)
        scored = sum(log["nsentences"] for log in logging_outputs if "ncorrect" in log)
        if scored:
            metrics.log_scalar("accuracy", 100.0 * total("ncorrect") / scored, scored, round=2)
            metrics.log_scalar("top5", 100.0 * total("ncorrect5") / scored, scored, round=2)
        real = total("nreal")
        if real:
            metrics.log_scalar("real_accuracy", 100.0 * total("nreal_correct") / real, real, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@dataclass
class HardDistillationConfig(ImageCrossEntropyConfig):
    teacher_path: str = field(
        default=MISSING, metadata={"help": "teacher weights: a fairseq checkpoint, or with --teacher-model "
                                           "a timm state dict (.pth/.safetensors)"}
    )
    teacher_model: Optional[str] = field(
        default=None, metadata={"help": "timm model name of the teacher (e.g. regnety_160, the paper's)"}
    )
    distillation_alpha: float = field(default=0.5, metadata={"help": "weight of the teacher's term"})


@register_criterion("hard_distillation", dataclass=HardDistillationConfig)
class HardDistillationCriterion(ImageCrossEntropyCriterion):
    """DeiT's hard distillation, as ResMLP trains with it (Touvron et al., 2021, Sec. 3):
    ``(1 - alpha) * CE(logits, y) + alpha * CE(logits, argmax teacher(x))``, alpha = 1/2.

    ResMLP has no distillation token, so both terms use the one classifier output, as
    DeiT does for a model without one. The teacher sees the student's (mixed) images,
    in eval mode and without gradients; validation reports the plain cross entropy.
    """

    def __init__(self, cfg: HardDistillationConfig, task):
        super().__init__(cfg, task)
        self.alpha = cfg.distillation_alpha
        # In a list, not a submodule: neither trained nor saved with each checkpoint.
        self._teacher = [load_teacher(cfg.teacher_path, cfg.teacher_model, task).eval().requires_grad_(False)]

    def compute_loss(self, model, images, logits, target):
        base, _ = super().compute_loss(model, images, logits, target)
        if not model.training:
            return base, {}
        teacher = self._teacher[0].to(images.device)
        with torch.no_grad():
            teacher_labels = teacher(images).argmax(dim=1)
        distill = F.cross_entropy(logits, teacher_labels, reduction="sum")
        loss = (1 - self.alpha) * base + self.alpha * distill
        return loss, {"loss_ce": base.data, "loss_teacher": distill.data}


def load_teacher(path: str, timm_name: Optional[str], task) -> torch.nn.Module:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher weights {path} do not exist")
    if timm_name:
        import timm

        return timm.create_model(
            timm_name, pretrained=False, num_classes=task.num_classes, in_chans=task.in_chans, checkpoint_path=path
        )
    models, _ = checkpoint_utils.load_model_ensemble([path], task=task)
    return models[0]
