"""``--optimizer timm_lamb``: timm's LAMB, the optimizer of DeiT and ResMLP, for fairseq.

fairseq's own ``--optimizer lamb`` wraps NVIDIA apex's FusedLAMB (CUDA only, and apex is
not a dependency here). timm's is registered under its own name and fairseq's is left as
it is: the two clip and decay differently (timm's clips the global gradient norm to
``--lamb-max-grad-norm`` and leaves vectors undecayed), so a run must say which it
means. As in DeiT (timm's ``param_groups_weight_decay``), parameters with at most one
dimension (biases, Aff's alpha/beta, LayerScale's gamma) get no weight decay, and
thereby no layer-wise trust ratio either: timm's LAMB adapts only where it decays.
"""
from dataclasses import dataclass, field
from typing import Any, List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II
from timm.optim import Lamb


@dataclass
class LambConfig(FairseqDataclass):
    lamb_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for LAMB"})
    lamb_eps: float = field(default=1e-8, metadata={"help": "epsilon for LAMB (DeiT's --opt-eps)"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the matrices (ResMLP: 0.2)"})
    lamb_max_grad_norm: float = field(
        default=1.0, metadata={"help": "LAMB's own global gradient-norm clipping (timm's default); 0: none"}
    )
    lr: List[float] = II("optimization.lr")


@register_optimizer("timm_lamb", dataclass=LambConfig)
class TimmLamb(FairseqOptimizer):
    def __init__(self, cfg: LambConfig, params):
        super().__init__(cfg)
        params = list(params)
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        self._optimizer = Lamb([g for g in groups if g["params"]], **self.optimizer_config)

    @property
    def optimizer_config(self):
        betas = self.cfg.lamb_betas
        return {
            "lr": self.cfg.lr[0],
            "betas": eval(betas) if isinstance(betas, str) else tuple(betas),
            "eps": self.cfg.lamb_eps,
            "weight_decay": self.cfg.weight_decay,
            "max_grad_norm": self.cfg.lamb_max_grad_norm or None,
        }

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """fairseq's overrides (--optimizer-overrides) set every group: keep the no-decay ones at 0."""
        no_decay = [g.get("weight_decay", None) == 0.0 for g in self.param_groups]
        super().load_state_dict(state_dict, optimizer_overrides)
        for group, zero in zip(self.param_groups, no_decay):
            if zero:
                group["weight_decay"] = 0.0
