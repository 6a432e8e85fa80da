"""Two small shims that make fairseq main (``ve-fairseq``) behave on torch >= 2.6.

Both are applied when the plugin is imported (``--user-dir resmlp_mt``), so they
serve every model and task the user runs with the plugin loaded, including
fairseq's own Transformer.

1. Checkpoint loading. fairseq checkpoints are pickles (configs, meters, optimizer
   state), which torch >= 2.6 refuses by default (``weights_only=True``). fairseq's
   two loading paths (``checkpoint_utils`` for files, ``distributed.utils`` for a
   state broadcast from rank 0) get a ``torch`` whose ``load`` defaults to
   ``weights_only=False``. Nothing else in the process changes. Loading a pickle
   runs code from it: load only checkpoints you trust (see README, "Security";
   ``resmlp_mt.safe_load`` reads tensors only).

2. No silently dropped evaluation sentences. fairseq main's ``batch_by_size``
   (commit d871f616) drops the last batch when its size is not a multiple of
   ``--required-batch-size-multiple``; ``fairseq-generate`` then skips up to 7
   sentences without a word. The batches are consecutive runs of ``indices``, so
   the dropped ones are exactly the tail; we give them back as a final batch
   (fairseq 0.12.2's behaviour, for training and evaluation alike).
"""
import functools
import types

import numpy as np
import torch
from fairseq import checkpoint_utils
from fairseq.data import data_utils
from fairseq.distributed import utils as distributed_utils


class _TorchLoadingPickles(types.ModuleType):
    """``torch`` as fairseq's checkpoint code sees it: ``load`` defaults to pickles."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, weights_only=False, **kwargs):
        return torch.load(f, *args, weights_only=weights_only, **kwargs)


def _keep_last_batch(batch_by_size):
    @functools.wraps(batch_by_size)
    def wrapper(indices, *args, **kwargs):
        if not isinstance(indices, np.ndarray):
            indices = np.fromiter(indices, dtype=np.int64, count=-1)
        batches = batch_by_size(indices, *args, **kwargs)
        kept = sum(len(b) for b in batches)
        if kept < len(indices) and kwargs.get("fixed_shapes") is None:
            batches = list(batches) + [indices[kept:]]
        return batches

    wrapper.resmlp_keeps_last_batch = True
    return wrapper


def apply() -> None:
    """Idempotent: safe to call on every import of the plugin."""
    for module in (checkpoint_utils, distributed_utils):
        if not isinstance(module.torch, _TorchLoadingPickles):
            module.torch = _TorchLoadingPickles()
    if not getattr(data_utils.batch_by_size, "resmlp_keeps_last_batch", False):
        data_utils.batch_by_size = _keep_last_batch(data_utils.batch_by_size)
