"""The paper's transfer sets (Flowers-102, Stanford Cars, iNaturalist 2018 and 2019) through
torchvision's own dataset classes, from a local root.

The task has a training split and evaluation splits; each set is split as in DeiT's and
ResMLP's transfer tables (DeiT, Touvron et al. 2021, Table 6):

* ``flowers102``: train = the official train + val (2,040 images, 10 + 10 per class),
  every other split = the official test set (6,149).
* ``stanford-cars``: train = cars_train (8,144), every other split = cars_test (8,041).
* ``inat2018`` / ``inat2019``: train = the images listed in ``train2018.json`` (437,513) /
  ``train2019.json`` (265,213), every other split = ``val2018.json`` (24,426) /
  ``val2019.json`` (3,030). torchvision's class reads the image tree only (train and val
  images together, ``ROOT/2018/SUPERCATEGORY/ID/*.jpg``), so the competition's json files
  choose the split. The label is torchvision's ``target_type="full"``: the species id,
  the folder's number (8,142 / 1,010 classes); ``super`` would be the 14 / 6 super-categories.

Images are read with ``load_rgb`` (RGB, the file named in any failure). The labels are
listed when the split is opened (for the per-class counts) without reading an image;
that reads torchvision's private lists (``_labels``, ``_samples``), which these classes
have kept since they were added.

torchvision is imported in the functions that use it: it pulls torch._dynamo, seconds, which
translation runs (which import this module with the plugin) never need.
"""
import json
import logging
import os
from typing import List, Sequence, Tuple

logger = logging.getLogger(__name__)

# What ROOT must hold, for the error when it does not.
EXPECTED = {
    "flowers102": "ROOT/flowers-102/jpg/image_00001.jpg ... image_08189.jpg, ROOT/flowers-102/imagelabels.mat "
                  "and ROOT/flowers-102/setid.mat (the official files: torchvision checks their md5; "
                  "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)",
    "stanford-cars": "ROOT/stanford_cars/cars_train/*.jpg, ROOT/stanford_cars/cars_test/*.jpg, "
                     "ROOT/stanford_cars/devkit/cars_train_annos.mat, ROOT/stanford_cars/devkit/cars_meta.mat and "
                     "ROOT/stanford_cars/cars_test_annos_withlabels.mat (the original URL is gone: torchvision "
                     "cannot download them; mirrors exist, e.g. on Kaggle)",
    "inat2018": "ROOT/2018/SUPERCATEGORY/ID/*.jpg (train_val2018.tar.gz, extracted and its train_val2018/ "
                "renamed 2018/), ROOT/train2018.json and ROOT/val2018.json (https://github.com/visipedia/inat_comp)",
    "inat2019": "ROOT/2019/SUPERCATEGORY/ID/*.jpg (train_val2019.tar.gz, extracted and its train_val2019/ "
                "renamed 2019/), ROOT/train2019.json and ROOT/val2019.json (https://github.com/visipedia/inat_comp)",
}


class Split:
    """Items of one or more torchvision datasets as one split: ``(dataset, index)`` pairs and their labels."""

    def __init__(self, items: Sequence[Tuple[object, int]], targets: List[int]):
        self.items, self.targets = list(items), list(targets)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        dataset, i = self.items[index]
        return dataset[i]


def open_transfer_split(name: str, root: str, train: bool, loader) -> Split:
    """The training split (``train``) or the evaluation split of transfer set ``name`` under ``root``."""
    if name == "flowers102":
        parts = [_open(name, root, loader, split=s) for s in (("train", "val") if train else ("test",))]
        return Split([(d, i) for d in parts for i in range(len(d))], [t for d in parts for t in d._labels])
    if name == "stanford-cars":
        cars = _open(name, root, loader, split="train" if train else "test")
        return Split([(cars, i) for i in range(len(cars))], [t for _, t in cars._samples])
    return _inaturalist(name, root, train, loader)


def _open(name: str, root: str, loader, **split):
    import torchvision

    cls = {"flowers102": torchvision.datasets.Flowers102, "stanford-cars": torchvision.datasets.StanfordCars}[name]
    try:
        return cls(root, loader=loader, **split)
    except RuntimeError as e:  # "Dataset not found or corrupted"
        if name != "flowers102":
            raise missing(name, root, e) from e
    logger.info(f"{name} not found under {root} (or not the official files): asking torchvision to download it")
    try:
        cls(root, download=True, **split)
        return cls(root, loader=loader, **split)
    except Exception as e:  # no network, a proxy, a full disk: all end here
        raise missing(name, root, e, tried_download=True) from e


def missing(name: str, root: str, cause: Exception, tried_download: bool = False) -> FileNotFoundError:
    reason = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    how = f"torchvision could not download it ({reason})" if tried_download else reason
    return FileNotFoundError(f"{name} is not under {root}: {how}; expected {EXPECTED[name].replace('ROOT', root)}")


def _inaturalist(name: str, root: str, train: bool, loader) -> Split:
    """torchvision's tree of train and val images, restricted to those of the split's json file."""
    year = name[-4:]
    listing = os.path.join(root, f"{'train' if train else 'val'}{year}.json")
    if not os.path.isdir(os.path.join(root, year)) or not os.path.isfile(listing):
        raise missing(name, root, FileNotFoundError(f"no {os.path.join(root, year)}/ or no {listing}"))
    import torchvision

    inat = torchvision.datasets.INaturalist(root, version=year, target_type="full", loader=loader)
    with open(listing) as f:
        # "train_val2018/Plantae/7477/3b60c9486db1d2ee875f11a669fbde4a.jpg": below the tree's own top folder
        wanted = {image["file_name"].split("/", 1)[1] for image in json.load(f)["images"]}
    items, targets, found = [], [], set()
    for i, (category, file_name) in enumerate(inat.index):
        path = f"{inat.all_categories[category]}/{file_name}"
        if path in wanted:
            items.append((inat, i))
            targets.append(category)
            found.add(path)
    if len(found) < len(wanted):
        absent = sorted(wanted - found)
        raise FileNotFoundError(
            f"{len(absent)} of the {len(wanted)} images that {listing} lists are not under {inat.root}, e.g. "
            f"{os.path.join(inat.root, absent[0])}: expected {EXPECTED[name].replace('ROOT', root)}"
        )
    return Split(items, targets)
