"""ImageNet-ReaL labels (Beyer et al., 2020, "Are we done with ImageNet?") for the ImageNet
validation images, so that ``fairseq-validate`` reports ``real_accuracy``.

``real.json`` (github.com/google-research/reassessed-imagenet) lists, for the i-th image
``ILSVRC2012_val_{i:08d}.JPEG``, the set of ImageNet class indices judged right; 3,163
of the 50,000 sets are empty. Scored as timm's ``RealLabelsImagenet``: a prediction is
correct when it is in its image's set, and images with an empty set are left out of the
denominator. timm's class takes the predictions in file order, one process, all 50,000
images; fairseq batches by example id and shards over GPUs, so the sets travel with
each batch instead and the criterion sums the counts like ``accuracy``'s (any subset of
the validation images works). ``--real-labels timm`` reads the copy timm ships.
"""
import json
import os
import pkgutil
from typing import List, Sequence

import torch


class RealLabelsError(ValueError):
    """A labels file that does not fit the images."""


def read_real_json(path: str) -> dict:
    """{'ILSVRC2012_val_00000001.JPEG': [labels], ...} from ``real.json``, or timm's copy for ``timm``."""
    if path == "timm":
        sets = json.loads(pkgutil.get_data("timm.data", "_info/imagenet_real_labels.json").decode("utf-8"))
    else:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--real-labels {path} does not exist (real.json of "
                                    f"github.com/google-research/reassessed-imagenet, or 'timm' for timm's copy)")
        with open(path) as f:
            sets = json.load(f)
    if not isinstance(sets, list) or not all(isinstance(s, list) for s in sets):
        raise RealLabelsError(f"--real-labels {path}: expected a JSON list of label lists, one per validation image")
    return {f"ILSVRC2012_val_{i + 1:08d}.JPEG": labels for i, labels in enumerate(sets)}


def real_labels_for(paths: Sequence[str], table: dict, num_classes: int, source: str) -> List[List[int]]:
    """Each image's ReaL set, by its file name; an image the table does not name is an error."""
    sets = []
    for path in paths:
        labels = table.get(os.path.basename(path))
        if labels is None:
            raise RealLabelsError(
                f"--real-labels {source} has no labels for {path}: ReaL labels the ImageNet validation images, "
                f"named ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG"
            )
        if any(not 0 <= c < num_classes for c in labels):
            raise RealLabelsError(f"--real-labels {source}: the labels {labels} of {path} are not classes of "
                                  f"the data's {num_classes}")
        sets.append(labels)
    return sets


def collate_real_labels(sets: Sequence[List[int]]) -> torch.Tensor:
    """A batch's sets as one (batch, longest set) tensor, padded with -1."""
    out = torch.full((len(sets), max(map(len, sets), default=0)), -1, dtype=torch.long)
    for row, labels in enumerate(sets):
        out[row, : len(labels)] = torch.tensor(labels, dtype=torch.long)
    return out


def real_counts(logits: torch.Tensor, real: torch.Tensor):
    """(correct, scored): top-1 predictions in their image's set, and the images with a non-empty set."""
    scored = (real >= 0).any(1)
    correct = (real == logits.argmax(1, keepdim=True)).any(1) & scored
    return int(correct.sum()), int(scored.sum())
