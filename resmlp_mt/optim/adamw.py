"""``--optimizer timm_adamw``: AdamW with DeiT's and DINO's decay groups (``decay_groups``).

fairseq's ``--optimizer adam`` is AdamW as well, but decays every parameter, biases and
norms included; DINO (and DeiT with AdamW) exempt the vectors. The update is torch's
``AdamW``, which timm's ``create_optimizer`` builds too.
"""
from dataclasses import dataclass, field
from typing import Any, List

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import register_optimizer
from omegaconf import II

from .decay_groups import DecayGroupsOptimizer, betas, decay_groups


@dataclass
class AdamWConfig(FairseqDataclass):
    adam_betas: Any = field(default=(0.9, 0.999), metadata={"help": "betas for AdamW"})
    adam_eps: float = field(default=1e-8, metadata={"help": "epsilon for AdamW"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay of the matrices (DINO: 0.04 -> 0.4)"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("timm_adamw", dataclass=AdamWConfig)
class TimmAdamW(DecayGroupsOptimizer):
    def __init__(self, cfg: AdamWConfig, params):
        super().__init__(cfg)
        self._optimizer = torch.optim.AdamW(decay_groups(params), **self.optimizer_config)

    @property
    def optimizer_config(self):
        return {
            "lr": self.cfg.lr[0],
            "betas": betas(self.cfg.adam_betas),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }
