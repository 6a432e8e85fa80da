"""A prefetch thread freeing tensors while the interpreter exits: what fairseq's
BackgroundConsumer does when --max-update stops a run mid-epoch.

    python tests/scripts/prefetch_at_exit.py plugin|stock

"plugin" imports resmlp_mt first (its shims), "stock" leaves fairseq as it is. Used by
test_clean_exit_mid_epoch.py.
"""
import sys

import torch

if sys.argv[1] == "plugin":
    import resmlp_mt  # noqa: F401
from fairseq.data import iterators  # noqa: E402


class Batches:
    def __len__(self):
        return 10 ** 6

    def __iter__(self):
        while True:
            for _ in range(2000):
                torch.ones(4) + 1
            yield torch.zeros(2)


iterator = iterators.BufferedIterator(2, Batches())
next(iterator)
