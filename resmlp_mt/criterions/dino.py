"""``--criterion dino``: DINO's self-distillation loss (Caron et al., 2021, Eq. 1 and Algorithm 1).

For each global view the teacher's output, centred and sharpened (``softmax((t - c) / tau_t)``),
is the target of the student's ``log_softmax(s / tau_s)`` on every *other* view; the loss
is the cross entropy averaged over those pairs. Centring (subtracting a running mean of the
teacher's outputs) keeps one prototype from winning every image; sharpening (tau_t below
tau_s) keeps the output from spreading uniformly: together they avoid collapse. The centre
is updated from the teacher's outputs after the loss, in training only.

tau_t warms up linearly from ``--warmup-teacher-temp`` to ``--teacher-temp`` over
``--warmup-teacher-temp-updates`` (DINO counts epochs; here, updates). Logged besides the
loss (nats): ``teacher_entropy``, the mean entropy of the teacher's distributions (0 when
each image picks one prototype with certainty), and ``batch_entropy``, the entropy of their
average over the batch (log K when the images spread over all K prototypes). A collapse
shows as both near 0 (one prototype for everything) or both near log K (uniform outputs).
"""
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from torch import Tensor


@dataclass
class DinoLossConfig(FairseqDataclass):
    student_temp: float = field(default=0.1, metadata={"help": "student temperature tau_s"})
    teacher_temp: float = field(default=0.04, metadata={"help": "teacher temperature tau_t after the warm-up "
                                                                "(DINO: 0.04, up to 0.07)"})
    warmup_teacher_temp: float = field(default=0.04, metadata={"help": "teacher temperature at update 0"})
    warmup_teacher_temp_updates: int = field(default=0, metadata={"help": "updates of the linear warm-up of tau_t"})
    center_momentum: float = field(default=0.9, metadata={"help": "momentum of the teacher centre"})


def teacher_temperature(update: int, start: float, end: float, warmup: int) -> float:
    if update >= warmup:
        return end
    return start + (end - start) * update / warmup


def teacher_targets(teacher: Tensor, center: Tensor, teacher_temp: float) -> Tensor:
    """The teacher's centred, sharpened distributions ``(G, B, K)``, in fp32."""
    return torch.softmax((teacher.float() - center) / teacher_temp, dim=-1)


def dino_loss(student: Tensor, q: Tensor, student_temp: float) -> Tensor:
    """Per image, the cross entropy of every (teacher global view, other student view) pair, averaged
    over pairs: student ``(V, B, K)``, teacher targets ``q`` ``(G, B, K)`` -> ``(B,)``. Computed in fp32."""
    log_p = torch.log_softmax(student.float() / student_temp, dim=-1)
    cross = -torch.einsum("gbk,vbk->gvb", q, log_p)  # (G, V, B)
    views, globals_ = student.size(0), q.size(0)
    other = ~torch.eye(globals_, views, dtype=torch.bool, device=cross.device)  # teacher view g, student view v != g
    return cross[other].mean(0)


def entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


@register_criterion("dino", dataclass=DinoLossConfig)
class DinoCriterion(FairseqCriterion):
    def __init__(self, cfg: DinoLossConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        if not hasattr(model, "update_center"):
            raise ValueError("--criterion dino trains a DINO model: --arch resmlp_dino_* (with --task image_dino)")
        student, teacher = model(sample["net_input"]["images"])
        cfg = self.cfg
        tau_t = teacher_temperature(model.num_updates, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                    cfg.warmup_teacher_temp_updates)
        q = teacher_targets(teacher, model.center, tau_t)
        per_image = dino_loss(student, q, cfg.student_temp)
        loss = per_image.sum()
        n = per_image.size(0)
        with torch.no_grad():
            q = q.flatten(0, -2)
            teacher_entropy = entropy(q).sum().item() / q.size(0) * n
            batch_entropy = entropy(q.mean(0)).item() * n
        if model.training:
            model.update_center(teacher, cfg.center_momentum)
        logging_output = {"loss": loss.data, "nsentences": n, "ntokens": n, "sample_size": n,
                          "teacher_entropy": teacher_entropy, "batch_entropy": batch_entropy, "teacher_temp": tau_t * n}
        return loss, n, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        n = sum(log.get("sample_size", 0) for log in logging_outputs)
        if not n:
            return
        metrics.log_scalar("loss", sum(log.get("loss", 0) for log in logging_outputs) / n, n, round=4)
        for key in ("teacher_entropy", "batch_entropy", "teacher_temp"):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n, n, round=4)
        metrics.log_scalar("nsentences", sum(log.get("nsentences", 0) for log in logging_outputs), priority=900,
                           round=0)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

