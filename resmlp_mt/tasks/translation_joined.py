"""``--task translation_joined``: fairseq's ``translation`` task whose training set also holds
pairs made of consecutive training pairs joined into one (``--joined-pairs``: how many, as
a fraction of the training set; ``--joined-max-sentences K``: each joins 2 to K pairs).

A model that has only seen single sentences learns that a sentence end ends the output:
given several sentences as one input, it translates the first and stops (README, "Long
inputs"). Joined pairs teach it to go on while there is source left, for any model: the
recipes give the Transformer the same data. Which pairs are joined is drawn once from
``--seed``, so every epoch, and a resumed run, sees the same training set. Validation and
test sets are left as they are.
"""
from dataclasses import dataclass, field

import numpy as np
import torch
from fairseq.data import ConcatDataset, FairseqDataset, LanguagePairDataset
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask
from omegaconf import II


class JoinedTokensDataset(FairseqDataset):
    """Item k: lines ``first[k] .. first[k] + count[k] - 1`` of ``base``, each but the last
    without its final EOS."""

    def __init__(self, base, first: np.ndarray, count: np.ndarray, eos: int):
        self.base, self.first, self.count, self.eos = base, first, count, eos
        self.sizes = np.array([base.sizes[i : i + c].sum() - (c - 1) for i, c in zip(first, count)], dtype=np.int64)

    def __getitem__(self, k):
        i, c = int(self.first[k]), int(self.count[k])
        lines = [self.base[j] for j in range(i, i + c)]
        for j, line in enumerate(lines[:-1]):
            if line[-1] != self.eos:  # sizes above assume fairseq-preprocess's final EOS
                raise ValueError(f"--joined-pairs: training line {i + j} does not end with EOS; "
                                 "binarize the data with fairseq-preprocess")
        return torch.cat([line[:-1] for line in lines[:-1]] + [lines[-1]])

    def __len__(self):
        return len(self.first)

    def num_tokens(self, k):
        return self.sizes[k]

    def size(self, k):
        return self.sizes[k]


def with_joined_pairs(dataset: LanguagePairDataset, fraction: float, seed: int,
                      max_sentences: int = 2) -> LanguagePairDataset:
    """``dataset`` plus ``round(fraction * (N - 1))`` joins of 2 to ``max_sentences`` consecutive
    lines (the number drawn uniformly for each join), starting at distinct lines."""
    if dataset.tgt is None or dataset.align_dataset is not None or dataset.buckets is not None:
        raise ValueError("--joined-pairs needs a parallel training set without alignments or length buckets")
    n = len(dataset)
    rng = np.random.RandomState(seed)
    first = np.sort(rng.choice(n - 1, size=round(fraction * (n - 1)), replace=False))
    count = np.minimum(rng.randint(2, max_sentences + 1, size=len(first)), n - first)  # within the data
    src = ConcatDataset([dataset.src, JoinedTokensDataset(dataset.src, first, count, dataset.src_dict.eos())])
    tgt = ConcatDataset([dataset.tgt, JoinedTokensDataset(dataset.tgt, first, count, dataset.tgt_dict.eos())])
    return LanguagePairDataset(
        src, src.sizes, dataset.src_dict, tgt, tgt.sizes, dataset.tgt_dict,
        left_pad_source=dataset.left_pad_source, left_pad_target=dataset.left_pad_target,
        shuffle=dataset.shuffle, input_feeding=dataset.input_feeding,
        remove_eos_from_source=dataset.remove_eos_from_source, append_eos_to_target=dataset.append_eos_to_target,
        constraints=dataset.constraints, append_bos=dataset.append_bos, eos=dataset.eos,
        src_lang_id=dataset.src_lang_id, tgt_lang_id=dataset.tgt_lang_id, pad_to_multiple=dataset.pad_to_multiple,
    )


@dataclass
class JoinedTranslationConfig(TranslationConfig):
    joined_pairs: float = field(
        default=0.1, metadata={"help": "add this fraction of the training set as extra pairs, each two "
                                       "consecutive training pairs joined into one (0: none)"}
    )
    joined_max_sentences: int = field(
        default=2, metadata={"help": "each extra pair joins 2 to this many consecutive pairs (drawn uniformly)"}
    )
    seed: int = II("common.seed")


@register_task("translation_joined", dataclass=JoinedTranslationConfig)
class JoinedTranslationTask(TranslationTask):
    cfg: JoinedTranslationConfig

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        super().load_dataset(split, epoch, combine, **kwargs)
        if split == self.cfg.train_subset and self.cfg.joined_pairs > 0:
            if not 0 < self.cfg.joined_pairs <= 1:
                raise ValueError(f"--joined-pairs {self.cfg.joined_pairs}: expected a fraction in [0, 1]")
            if self.cfg.joined_max_sentences < 2:
                raise ValueError(f"--joined-max-sentences {self.cfg.joined_max_sentences}: expected 2 or more")
            self.datasets[split] = with_joined_pairs(self.datasets[split], self.cfg.joined_pairs, self.cfg.seed,
                                                     self.cfg.joined_max_sentences)
