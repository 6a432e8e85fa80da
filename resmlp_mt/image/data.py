"""Image sources (an ImageFolder tree, or a torchvision dataset from a local root) and
the FairseqDataset that feeds them to fairseq's batching, sharding and workers.

A source is indexable and yields ``(PIL image, class index)``; ``ImageDataset``
applies the (timm) transform and collates. Bad data fail with the file's name:
a corrupt or unreadable image when it is read, an empty class folder, a missing
root or a directory link that loops back (torchvision follows links and would list
the images below it once per level, 40 levels deep) when the split is opened. Files
without an image extension inside class folders are skipped with one warning that
lists them (torchvision's ImageFolder skips them silently). Each split logs its image
count per class when it is opened.

torchvision is imported in the functions that use it, and timm not at all: both pull
torch._dynamo, seconds, which translation runs (which import this module with the plugin)
never need.
"""
import gzip
import logging
import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset
from PIL import Image

from .class_folders import ClassFolderError, image_folder_class
from .real_labels import collate_real_labels
from .transfer import open_transfer_split

if TYPE_CHECKING:
    import torchvision

logger = logging.getLogger(__name__)

# timm.data's IMAGENET_DEFAULT_MEAN and IMAGENET_DEFAULT_STD (tests/test_import_cost.py checks them)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


class ImageDataError(ValueError):
    """Image data that cannot be used: a bad file, an empty class, a missing split."""


@dataclass(frozen=True)
class NamedDataset:
    torchvision_class: str
    num_classes: int
    in_chans: int
    img_size: Optional[int]  # the images' own resolution; None: photographs of any size
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


NAMED = {
    "fashion-mnist": NamedDataset("FashionMNIST", 10, 1, 28, (0.2860,), (0.3530,)),
    "mnist": NamedDataset("MNIST", 10, 1, 28, (0.1307,), (0.3081,)),
    "cifar10": NamedDataset("CIFAR10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": NamedDataset("CIFAR100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # The transfer sets (transfer.py): photographs, normalised as ImageNet, for ImageNet-trained models.
    "flowers102": NamedDataset("Flowers102", 102, 3, None, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "stanford-cars": NamedDataset("StanfordCars", 196, 3, None, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "inat2018": NamedDataset("INaturalist", 8142, 3, None, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "inat2019": NamedDataset("INaturalist", 1010, 3, None, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
}
DEFAULT_IMG_SIZE = 224  # for the photographs, when neither --img-size nor the arch sets one


def require_dir(path: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a directory)")
    return path


def load_rgb(path: str) -> Image.Image:
    """PIL's loader, with the file named in every failure (corrupt, truncated, unreadable)."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDataError(f"cannot read image {path}: {e}") from e


def check_link_loops(root: str) -> None:
    """ImageDataError naming the first directory link under ``root`` that leads back to a directory
    containing it (by resolved paths), which torchvision's ``os.walk(followlinks=True)`` would follow."""
    stack = [(root, (os.path.realpath(root),))]  # (path, resolved paths of it and its ancestors)
    while stack:
        path, ancestors = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue  # unreadable: torchvision's walk skips it as well
        for entry in entries:
            if not entry.is_dir():  # follows links; a dangling or self-referential link is no directory
                continue
            real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(ancestors[-1], entry.name)
            if real in ancestors:
                raise ImageDataError(
                    f"directory link loop: {entry.path} -> {os.readlink(entry.path)} leads back to {real}, which "
                    f"contains it, so its images would be listed again at every level; remove the link "
                    f"(or replace it by a copy)"
                )
            stack.append((entry.path, ancestors + (real,)))


def describe_counts(targets, classes: List[str]) -> str:
    """'20 images, 2 classes: cat 10, dog 10' (the fewest and most for many classes)."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(classes))
    per_class = sorted(zip(counts.tolist(), map(str, classes)), key=lambda x: (x[0], x[1]))
    text = f"{int(counts.sum())} images, {len(classes)} classes: "
    if len(classes) <= 20:
        return text + ", ".join(f"{c} {n}" for c, n in zip(map(str, classes), counts.tolist()))
    (fewest, a), (most, b) = per_class[0], per_class[-1]
    return text + f"from {fewest} ({a}) to {most} ({b}) per class"


def image_folder(root: str, class_order: str = "names") -> "torchvision.datasets.ImageFolder":
    """torchvision's ImageFolder over ROOT/CLASS/*.{jpg,png,...}, checked for link loops and empty classes;
    ``class_order`` as ``--class-folders`` (class_folders.py)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    require_dir(root, "image folder")
    check_link_loops(root)
    skipped: List[str] = []

    def is_image(path: str) -> bool:
        if has_file_allowed_extension(path, IMG_EXTENSIONS):
            return True
        skipped.append(path)
        return False

    try:
        folder = image_folder_class(class_order)(root, loader=load_rgb, is_valid_file=is_image, allow_empty=True)
    except ClassFolderError as e:
        raise ImageDataError(str(e)) from e
    except FileNotFoundError as e:  # no class sub-folder at all
        raise ImageDataError(f"{root} has no class sub-folders (expected {root}/CLASS/IMAGE.jpg): {e}") from e
    counts = np.bincount(folder.targets, minlength=len(folder.classes))
    empty = [os.path.join(root, folder.classes[i]) for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ImageDataError(
            f"class folder(s) without images: {', '.join(empty)} (extensions: {', '.join(IMG_EXTENSIONS)})"
        )
    if skipped:
        listed = ", ".join(sorted(skipped)[:20]) + (", ..." if len(skipped) > 20 else "")
        logger.warning(f"{root}: skipped {len(skipped)} file(s) without an image extension: {listed}")
    return folder


class _IdxImages:
    """MNIST-format images and labels (the idx files, gzipped or not) as (PIL image, label) pairs."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.targets = images, labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index]), int(self.targets[index])


def _read_idx(path: str) -> np.ndarray:
    """The idx format: 2 zero bytes, a type byte (0x08: uint8), ndim, big-endian int32 dims, data."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    if data[:3] != b"\x00\x00\x08":
        raise ImageDataError(f"{path} is not an idx file of bytes")
    shape = np.frombuffer(data, ">i4", ndim, 4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: str, name: str, subdir: str):
    """Debian's layout (ROOT/NAME.gz) or torchvision's (ROOT/FashionMNIST/raw/NAME)."""
    for directory in (root, os.path.join(root, "raw"), os.path.join(root, subdir, "raw")):
        for candidate in (name, name + ".gz"):
            if os.path.isfile(os.path.join(directory, candidate)):
                return os.path.join(directory, candidate)
    return None


def named_dataset(name: str, root: str, train: bool):
    """A torchvision dataset from ``root``; downloaded there by torchvision only if absent."""
    info = NAMED[name]
    require_dir(root, f"{name} data root")
    if info.img_size is None:
        return open_transfer_split(name, root, train, load_rgb)
    if info.torchvision_class.endswith("MNIST"):
        prefix = "train" if train else "t10k"
        files = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
        if any(_find_idx(root, f, info.torchvision_class) is None for f in files):
            _download(name, root, train)
        return _IdxImages(*(_read_idx(_find_idx(root, f, info.torchvision_class)) for f in files))
    import torchvision

    cls = getattr(torchvision.datasets, info.torchvision_class)
    try:
        return cls(root, train=train)
    except RuntimeError:  # "Dataset not found or corrupted"
        _download(name, root, train)
        return cls(root, train=train)


def _download(name: str, root: str, train: bool) -> None:
    logger.info(f"{name} not found under {root}: asking torchvision to download it there")
    import torchvision

    try:
        getattr(torchvision.datasets, NAMED[name].torchvision_class)(root, train=train, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all end here
        raise FileNotFoundError(
            f"{name} is not under {root} and torchvision could not download it ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); put the files there (Debian: apt-get install "
            f"dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist)"
        ) from e


def reseed(*keys: int) -> None:
    """Seed Python's, NumPy's and torch's global generators, all of which timm's transforms
    draw from, from ``keys``. Nothing needs the old states back: fairseq draws its own
    randomness under its own seeds (``numpy_seed`` contexts, torch reseeded every update)."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also visits every accelerator: 100x slower


class ImageDataset(FairseqDataset):
    """Images through a transform, batched by fairseq as one-"token" examples.

    For training (``shuffle``), the order is a new permutation each epoch (fairseq
    draws it under ``seed + epoch``) and each example's random augmentation is seeded
    by (seed, epoch, index): the same run gives the same batches and the same
    augmented images, with any ``--num-workers``, and a resumed run as well.
    """

    def __init__(self, source, transform: Callable, shuffle: bool = False, seed: int = 1, real_labels=None,
                 seed_items: Optional[bool] = None):
        self.source, self.transform, self.shuffle, self.seed = source, transform, shuffle, seed
        # a random transform of an evaluation split (DINO's views) is seeded per example as well
        self.seed_items = shuffle if seed_items is None else seed_items
        self.real_labels = real_labels  # per example, its ImageNet-ReaL set (real_labels.py), or None
        self.epoch = 1

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if self.seed_items:
            reseed(self.seed, self.epoch, index)
        image, target = self.source[index]
        item = {"id": index, "image": self.transform(image), "target": target}
        if self.real_labels is not None:
            item["real"] = self.real_labels[index]
        return item

    def collater(self, samples: List[dict]) -> dict:
        if not samples:
            return {}
        batch = {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": len(samples),
            "net_input": {"images": torch.stack([s["image"] for s in samples])},
            "target": torch.tensor([s["target"] for s in samples]),
        }
        if self.real_labels is not None:
            batch["real_labels"] = collate_real_labels([s["real"] for s in samples])
        return batch

    def num_tokens(self, index: int) -> int:
        return 1

    def size(self, index: int) -> int:
        return 1

    def ordered_indices(self) -> np.ndarray:
        return np.random.permutation(len(self)) if self.shuffle else np.arange(len(self))

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return not self.shuffle  # a training epoch regroups the examples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
