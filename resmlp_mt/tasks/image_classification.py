"""``--task image_classification``: ImageFolder trees and torchvision datasets for fairseq.

Data: ``DATA/train/CLASS/*.jpg``, ``DATA/val/CLASS/*.jpg`` (``--valid-subset``
``valid`` reads ``DATA/val`` when there is no ``DATA/valid``; ``--class-folders numeric``
for folders named by class index, as ImageNet-V2's), or with ``--dataset
fashion-mnist|mnist|cifar10|cifar100`` the root of that torchvision dataset (Debian's
``/usr/share/datasets/fashion-mnist`` works as is), or of a transfer set,
``flowers102|stanford-cars|inat2018|inat2019`` (``image/transfer.py``; 224 pixels unless
the arch or ``--img-size`` says otherwise). Those have no validation split: every split
but ``train`` is their official test (or, iNaturalist, val) set. ``--real-labels`` adds
ImageNet-ReaL top-1 to the evaluation of ImageNet's validation images.

Augmentation is timm's (DeiT's defaults: RandAugment, random erasing, bicubic
random-resized crops); Mixup/CutMix and label smoothing belong to the criterion
(``image_cross_entropy``). Evaluation resizes to ``img_size / crop_pct`` and takes
the centre crop; ResMLP's crop_pct is 0.9 (the official evaluation transform; timm's
generic default is 0.875).
Batching, sharding over GPUs and loader workers are fairseq's (``--batch-size``,
``--num-workers``).
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II

from ..image.class_folders import ORDERS, ClassFolderError, class_folders
from ..image.data import (
    DEFAULT_IMG_SIZE,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    NAMED,
    ImageDataError,
    ImageDataset,
    describe_counts,
    image_folder,
    named_dataset,
    require_dir,
)
from ..image.real_labels import read_real_json, real_labels_for

logger = logging.getLogger(__name__)

DATASET_CHOICES = ChoiceEnum(["imagefolder", *NAMED])


@dataclass
class ImageClassificationConfig(FairseqDataclass):
    data: Optional[str] = field(
        default=None, metadata={"help": "ImageFolder root (DATA/train, DATA/val, one folder per class), "
                                      "or the root of the --dataset"}
    )
    dataset: DATASET_CHOICES = field(default="imagefolder", metadata={"help": "what DATA holds"})
    img_size: Optional[int] = field(
        default=None, metadata={"help": "image side in pixels, which fixes the model's token-mixing size; "
                                        "the --arch sets it (224 for resmlp_s12 ... b24)"}
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "evaluation centre crop / resized image; default 0.9 (ResMLP's), "
                                        "1.0 for a named dataset at its own resolution"}
    )
    class_folders: ChoiceEnum(ORDERS) = field(
        default="names", metadata={"help": "ImageFolder class order: names (sorted, torchvision's) or numeric "
                                           "(folders 0 ... N-1 are the class indices: ImageNet-V2)"}
    )
    real_labels: Optional[str] = field(
        default=None, metadata={"help": "ImageNet-ReaL labels (real.json, or 'timm' for timm's copy): the "
                                        "evaluation splits also report real_accuracy"}
    )
    no_augment: bool = field(default=False, metadata={"help": "train on the evaluation transform"})
    aa: str = field(default="rand-m9-mstd0.5-inc1", metadata={"help": "timm auto-augment policy, or none"})
    min_crop_scale: float = field(default=0.08, metadata={"help": "smallest area of a random-resized crop"})
    hflip: float = field(default=0.5, metadata={"help": "horizontal flip probability"})
    color_jitter: float = field(default=0.3, metadata={"help": "colour jitter (timm turns it off with --aa)"})
    train_interpolation: str = field(default="bicubic", metadata={"help": "random, bilinear or bicubic"})
    reprob: float = field(default=0.25, metadata={"help": "random erasing probability"})
    remode: str = field(default="pixel", metadata={"help": "random erasing fill: const, rand or pixel"})
    recount: int = field(default=1, metadata={"help": "random erasing count"})
    seed: int = II("common.seed")


@register_task("image_classification", dataclass=ImageClassificationConfig)
class ImageClassificationTask(FairseqTask):
    def __init__(self, cfg: ImageClassificationConfig, classes, in_chans, mean, std):
        super().__init__(cfg)
        self.classes, self.in_chans, self.mean, self.std = classes, in_chans, mean, std

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def setup_task(cls, cfg: ImageClassificationConfig, **kwargs):
        if cfg.dataset in NAMED:
            info = NAMED[cfg.dataset]
            if info.img_size is None and cfg.img_size is None:
                cfg.img_size = DEFAULT_IMG_SIZE
            return cls(cfg, [str(c) for c in range(info.num_classes)], info.in_chans, info.mean, info.std)
        root = require_dir(cfg.data, "image data directory")
        splits = [s for s in ("train", "val", "valid", "test") if os.path.isdir(os.path.join(root, s))]
        if not splits:
            raise ImageDataError(f"{root} has none of the split folders train/, val/, valid/, test/")
        try:
            classes, _ = class_folders(os.path.join(root, splits[0]), cfg.class_folders)
        except ClassFolderError as e:
            raise ImageDataError(str(e)) from e
        return cls(cfg, classes, 3, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, task_cfg=None, **kwargs):
        cfg = task_cfg or self.cfg
        train = split == "train"
        if cfg.dataset in NAMED:
            source = named_dataset(cfg.dataset, cfg.data, train)
            where = f"{cfg.dataset} {'train' if train else 'test'} set in {cfg.data}"
        else:
            where = self._split_dir(cfg.data, split)
            source = image_folder(where, getattr(cfg, "class_folders", "names"))  # older checkpoints' cfg lack it
            if source.classes != self.classes:
                raise ImageDataError(
                    f"{source.root} has {len(source.classes)} classes {source.classes[:10]}, but the task has "
                    f"{self.num_classes} {self.classes[:10]}: every split needs the same class folders"
                )
        logger.info(f"{split} ({where}): {describe_counts(source.targets, self.classes)}")
        real = None
        if getattr(cfg, "real_labels", None) and not train:
            if cfg.dataset in NAMED:
                raise ImageDataError(f"--real-labels labels ImageNet's validation images, not {cfg.dataset}")
            table = read_real_json(cfg.real_labels)
            real = real_labels_for([path for path, _ in source.samples], table, self.num_classes, cfg.real_labels)
            logger.info(f"{split}: ImageNet-ReaL labels for {sum(map(bool, real))} of {len(real)} images")
        self.datasets[split] = self.image_dataset(source, cfg, train, real)

    def image_dataset(self, source, cfg, train: bool, real_labels=None) -> ImageDataset:
        return ImageDataset(source, self.transform(cfg, train), shuffle=train, seed=cfg.seed, real_labels=real_labels)

    @staticmethod
    def _split_dir(root: str, split: str) -> str:
        path = os.path.join(require_dir(root, "image data directory"), split)
        if split == "valid" and not os.path.isdir(path):
            path = os.path.join(root, "val")  # ImageNet's name
        return path

    def transform(self, cfg: ImageClassificationConfig, train: bool):
        """timm's training transform (augmentation) or evaluation transform (resize, centre crop)."""
        # imported here: timm pulls torchvision and torch._dynamo, 4 s, which translation runs never need
        from timm.data import create_transform

        common = dict(input_size=(self.in_chans, cfg.img_size, cfg.img_size), mean=self.mean, std=self.std)
        if train and not cfg.no_augment:
            return create_transform(
                **common,
                is_training=True,
                scale=(cfg.min_crop_scale, 1.0),
                hflip=cfg.hflip,
                color_jitter=cfg.color_jitter,
                auto_augment=None if cfg.aa in ("", "none") else cfg.aa,
                interpolation=cfg.train_interpolation,
                re_prob=cfg.reprob,
                re_mode=cfg.remode,
                re_count=cfg.recount,
            )
        crop_pct = cfg.crop_pct
        if crop_pct is None:
            native = cfg.dataset in NAMED and NAMED[cfg.dataset].img_size == cfg.img_size
            crop_pct = 1.0 if native else 0.9
        return create_transform(**common, crop_pct=crop_pct, interpolation="bicubic")

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """With ``--num-workers 0`` the images are loaded on the training thread itself.

        timm's and torchvision's transforms draw from the global ``random``, NumPy and
        torch generators, which ``ImageDataset`` reseeds per example. In a worker process
        that is private; in fairseq's in-process prefetch thread (``--data-buffer-size``)
        it would race with dropout, stochastic depth and Mixup on the training thread,
        and make runs (and resumed runs) differ.
        """
        if kwargs.get("num_workers", 0) == 0:
            kwargs["data_buffer_size"] = 0
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None
