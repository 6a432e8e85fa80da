"""Weighted k-nearest-neighbour classification of frozen features, as DINO evaluates them.

Caron et al. (2021, "Emerging properties in self-supervised vision transformers",
Sec. 4.1 and their eval_knn.py): features are L2-normalised, a query's k most similar
training features (cosine similarity) vote for their classes with weight
``exp(similarity / T)``, and the class with the largest summed vote wins; k = 20 and
T = 0.07 are their values. A kNN score needs no training, so it compares
representations (a trained model, the same network at random initialisation, raw
pixels) without the probe's own optimisation in the way.

The similarities are computed for a block of queries at a time, so memory stays at
``chunk x len(train)`` floats however many queries there are. Classes with equal votes
rank by class index (the lower first); which of several training features equally
similar at the k-th place is taken is unspecified, as with ``torch.topk``.
"""
from dataclasses import dataclass
from typing import Dict, Sequence

import torch
from torch import Tensor

K, TEMPERATURE = 20, 0.07  # DINO's
MAX_SIMILARITIES = 1 << 24  # floats per block of queries (64 MiB)


@dataclass(frozen=True)
class KnnResult:
    k: int
    temperature: float
    top1: float  # %
    top5: float  # %, or nan for fewer than 5 classes
    num_test: int
    num_train: int


def normalise(features: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm, in float32 (a zero row stays zero)."""
    return torch.nn.functional.normalize(features.float(), dim=1)


def class_votes(train: Tensor, train_labels: Tensor, queries: Tensor, num_classes: int,
                ks: Sequence[int] = (K,), temperature: float = TEMPERATURE,
                max_similarities: int = MAX_SIMILARITIES) -> Dict[int, Tensor]:
    """``{k: votes (len(queries), num_classes)}``: each query's summed ``exp(sim / T)`` per class over its k
    nearest training features. ``train`` and ``queries`` are L2-normalised rows (``normalise``)."""
    if not ks or min(ks) < 1:
        raise ValueError(f"k must be at least 1, got {list(ks)}")
    top = min(max(ks), len(train))  # k above the memory bank's size: every training feature votes
    chunk = max(1, max_similarities // max(1, len(train)))
    train_labels = train_labels.to(train.device)
    votes = {k: [] for k in ks}
    for start in range(0, len(queries), chunk):
        similarity = queries[start:start + chunk] @ train.T
        nearest, index = similarity.topk(top, dim=1)  # sorted: the first k of them are the k nearest
        weights, labels = (nearest / temperature).exp(), train_labels[index]
        for k in ks:
            kk = min(k, top)
            block = torch.zeros(len(index), num_classes, device=train.device)
            votes[k].append(block.scatter_add_(1, labels[:, :kk], weights[:, :kk]).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, num_classes) for k, v in votes.items()}


def ranked_classes(votes: Tensor) -> Tensor:
    """Classes by decreasing vote; equal votes by increasing class index (a stable sort)."""
    return torch.sort(votes, dim=1, descending=True, stable=True).indices


def accuracy(votes: Tensor, labels: Tensor, top: int) -> float:
    """Percentage of queries whose label is among their ``top`` best-voted classes."""
    if len(labels) == 0:
        return float("nan")
    hits = (ranked_classes(votes)[:, :top] == labels[:, None].to(votes.device)).any(1)
    return 100.0 * hits.float().mean().item()


def knn_classify(train: Tensor, train_labels: Tensor, queries: Tensor, query_labels: Tensor, num_classes: int,
                 ks: Sequence[int] = (K,), temperature: float = TEMPERATURE,
                 max_similarities: int = MAX_SIMILARITIES) -> Sequence[KnnResult]:
    """Top-1 (and top-5 with 5 classes or more) of the weighted kNN vote, for each k of ``ks``;
    the features are normalised here."""
    train, queries = normalise(train), normalise(queries)
    votes = class_votes(train, train_labels, queries, num_classes, ks, temperature, max_similarities)
    return [KnnResult(k, temperature, accuracy(v, query_labels, 1),
                      accuracy(v, query_labels, 5) if num_classes >= 5 else float("nan"),
                      len(queries), len(train)) for k, v in votes.items()]
