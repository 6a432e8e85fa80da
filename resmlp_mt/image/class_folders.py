"""Which class index each class folder of an ImageFolder tree stands for.

torchvision sorts the folder names as strings: right for ImageNet's wnids (n01440764 ...),
wrong for trees whose folders are the class indices themselves, as ImageNet-V2's 0 ... 999:
"0", "1", "10", "100", ... would make folder "10" class 2. ``--class-folders numeric`` reads
each folder's name as its index; then the names must be exactly 0 ... N-1.

torchvision is imported in the functions that use it: it pulls torch._dynamo, seconds, which
translation runs (which import this module with the plugin) never need.
"""
import logging
import os
from typing import Dict, List, Tuple

logger = logging.getLogger(__name__)

ORDERS = ("names", "numeric")


class ClassFolderError(ValueError):
    """Class folders that cannot be read as the order asks."""


def class_folders(root: str, order: str = "names") -> Tuple[List[str], Dict[str, int]]:
    """The classes of ``root`` and their indices: by sorted names, or (``numeric``) the names' integers."""
    from torchvision.datasets.folder import find_classes

    classes, class_to_idx = find_classes(root)
    integers = all(c.isdigit() for c in classes)
    if order == "names":
        if integers and classes != sorted(classes, key=int):
            logger.warning(
                f"{root}: the class folders are integers, sorted as names (\"0\", \"1\", \"10\", ...): if they are "
                f"the class indices (ImageNet-V2), pass --class-folders numeric"
            )
        return classes, class_to_idx
    if not integers:
        named = [c for c in classes if not c.isdigit()][:5]
        raise ClassFolderError(f"--class-folders numeric, but {root} has class folders that are no integers: "
                               f"{', '.join(named)}")
    classes = sorted(classes, key=int)
    absent = sorted(set(range(len(classes))) - {int(c) for c in classes})
    if absent or len(set(map(int, classes))) != len(classes):
        raise ClassFolderError(
            f"--class-folders numeric: the {len(classes)} class folders of {root} are not 0 ... {len(classes) - 1} "
            f"(missing: {', '.join(map(str, absent[:10])) or 'none'}; names such as 01 and 1 count once)"
        )
    return classes, {c: int(c) for c in classes}


def image_folder_class(order: str):
    """torchvision's ImageFolder, its classes found in ``order``."""
    import torchvision

    if order == "names":
        return torchvision.datasets.ImageFolder

    class NumericImageFolder(torchvision.datasets.ImageFolder):
        def find_classes(self, directory):
            return class_folders(os.fspath(directory), "numeric")

    return NumericImageFolder
