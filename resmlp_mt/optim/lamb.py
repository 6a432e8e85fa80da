"""``--optimizer timm_lamb``: timm's LAMB, the optimizer of DeiT and ResMLP, for fairseq.

fairseq's own ``--optimizer lamb`` wraps NVIDIA apex's FusedLAMB (CUDA only, and apex is
not a dependency here). timm's is registered under its own name and fairseq's is left as
it is: the two clip and decay differently (timm's clips the global gradient norm to
``--lamb-max-grad-norm`` and leaves vectors undecayed), so a run must say which it
means. As in DeiT, parameters with at most one dimension get no weight decay
(``decay_groups``), and thereby no layer-wise trust ratio either: timm's LAMB adapts
only where it decays.
"""
from dataclasses import dataclass, field
from typing import Any, List

from fairseq.dataclass import FairseqDataclass
from fairseq.optim import register_optimizer
from omegaconf import II

from .decay_groups import DecayGroupsOptimizer, betas, decay_groups


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
class TimmLamb(DecayGroupsOptimizer):
    def __init__(self, cfg: LambConfig, params):
        super().__init__(cfg)
        # imported here: timm pulls torchvision and torch._dynamo, 4 s, which translation runs never need
        from timm.optim import Lamb

        self._optimizer = Lamb(decay_groups(params), **self.optimizer_config)

    @property
    def optimizer_config(self):
        return {
            "lr": self.cfg.lr[0],
            "betas": betas(self.cfg.lamb_betas),
            "eps": self.cfg.lamb_eps,
            "weight_decay": self.cfg.weight_decay,
            "max_grad_norm": self.cfg.lamb_max_grad_norm or None,
        }
