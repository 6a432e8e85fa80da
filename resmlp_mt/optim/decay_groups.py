"""DeiT's and DINO's weight-decay rule for fairseq optimizers: matrices decay, vectors do not.

As timm's ``param_groups_weight_decay``, parameters with at most one dimension (biases,
Aff's alpha/beta, LayerScale's gamma) go to a group with no weight decay, marked
``no_weight_decay`` so that schedules (``--task image_dino``'s ``--weight-decay-end``) and
``--optimizer-overrides`` leave it at 0.
"""
from fairseq.optim import FairseqOptimizer


def betas(value) -> tuple:
    """fairseq passes betas as a string ("(0.9, 0.999)") from the command line, a list from a config."""
    return tuple(eval(value) if isinstance(value, str) else value)


def decay_groups(params) -> list:
    params = list(params)
    groups = [
        {"params": [p for p in params if p.ndim > 1]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "no_weight_decay": True},
    ]
    return [g for g in groups if g["params"]]


class DecayGroupsOptimizer(FairseqOptimizer):
    """A fairseq optimizer over ``decay_groups``; subclasses set ``_optimizer``."""

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        """fairseq's overrides (--optimizer-overrides) set every group: keep the no-decay ones at 0."""
        super().load_state_dict(state_dict, optimizer_overrides)
        for group, ours in zip(self.param_groups, decay_groups(p for g in self.param_groups for p in g["params"])):
            if ours.get("no_weight_decay"):
                group.update(weight_decay=0.0, no_weight_decay=True)
