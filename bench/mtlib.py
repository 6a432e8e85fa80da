"""Translation models and data for the MT benches, built through fairseq's own machinery.

Both contenders come from ``options.parse_args_and_arch`` (``--arch transformer`` and
``--arch resmlp_small`` / ``resmlp_wmt_en_de``) with the same width, depth, FFN size,
heads, position limit, dropout and shared embeddings, and from a fairseq
``TranslationTask``, so that training and generation run the code fairseq-train and
fairseq-generate run.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from fairseq import options, tasks
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks.translation import TranslationTask

from benchlib import USER_DIR

MODELS = ("resmlp", "transformer")
SIZES = {  # vocab is the joined dictionary size used when no --data is given
    "tiny": dict(dim=32, ffn=64, layers=1, heads=2, positions=64, vocab=200, resmlp="resmlp_small"),
    "demo": dict(dim=256, ffn=1024, layers=3, heads=4, positions=128, vocab=8000, resmlp="resmlp_small"),
    "wmt": dict(dim=512, ffn=2048, layers=6, heads=8, positions=512, vocab=32000, resmlp="resmlp_wmt_en_de"),
}
COMMON = [
    "--task", "translation", "--cpu", "--share-all-embeddings", "--dropout", "0.1",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "5e-4",
]


def arch_args(model: str, size: str) -> List[str]:
    s = SIZES[size]
    argv = ["--arch", "transformer" if model == "transformer" else s["resmlp"],
            "--max-source-positions", s["positions"], "--max-target-positions", s["positions"],
            "--decoder-attention-heads", s["heads"]]
    if model == "transformer":  # ResMLP's encoder has no attention
        argv += ["--encoder-attention-heads", s["heads"]]
    for side in ("encoder", "decoder"):
        argv += [f"--{side}-layers", s["layers"], f"--{side}-embed-dim", s["dim"], f"--{side}-ffn-embed-dim", s["ffn"]]
    return [str(a) for a in argv]


def joined_dictionary(size: int) -> Dictionary:
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def setup_task(model: str, size: str, data: Optional[str], extra: Sequence[str] = ()):
    """(cfg, task) for ``model`` at ``size`` (``extra``: more flags); the task reads ``data`` when given."""
    argv = [data or "synthetic", "--user-dir", USER_DIR, *COMMON, *arch_args(model, size), *map(str, extra)]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    if data:
        return cfg, tasks.setup_task(cfg.task)
    d = joined_dictionary(SIZES[size]["vocab"])
    return cfg, TranslationTask(cfg.task, d, d)


def build(model: str, size: str, data: Optional[str], extra: Sequence[str] = ()):
    """(cfg, task, model) as fairseq-train builds them."""
    cfg, task = setup_task(model, size, data, extra)
    return cfg, task, task.build_model(cfg.model)


def multi30k_like(task, n: int, max_len: int, seed: int = 1) -> LanguagePairDataset:
    """n random sentence pairs whose lengths (EOS included) follow Multi30k's spm lengths.

    Multi30k En-De with the demo's 8k joint sentencepiece: mean 15.3 source / 15.8
    target tokens, median 14, 90th percentile 22, 99th 30, longest 53. A gamma(7, 2.2)
    clipped to [3, 55] has mean 15.3, median 14.6, p90 22.5, p99 31.
    """
    rng = np.random.default_rng(seed)
    d = task.source_dictionary
    src_len = np.clip(np.rint(rng.gamma(7.0, 2.2, n)), 3, min(55, max_len)).astype(int)
    tgt_len = np.clip(np.rint(src_len * rng.uniform(0.85, 1.2, n)), 3, min(55, max_len)).astype(int)

    def sentence(length):
        return torch.cat([torch.from_numpy(rng.integers(d.nspecial, len(d), length - 1)), torch.tensor([d.eos()])])

    src = [sentence(length) for length in src_len]
    tgt = [sentence(length) for length in tgt_len]
    return LanguagePairDataset(src, src_len, d, tgt, tgt_len, task.target_dictionary)


def batches(task, dataset, max_positions: int, count: Optional[int], seed: int = 1, **batching) -> list:
    """The first ``count`` (None: all) batches of a fairseq epoch iterator over ``dataset``."""
    itr = task.get_batch_iterator(
        dataset, max_positions=(max_positions, max_positions), ignore_invalid_inputs=True, seed=seed, **batching
    ).next_epoch_itr(shuffle=count is not None)
    return [b for _, b in zip(range(count or len(itr)), itr)]
