"""Image data: ImageFolder and Fashion-MNIST sources, seeded augmentation, and bad input.

``write_image_folder`` and the ``image_folder_tree`` fixture serve the other image tests.
"""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import resmlp_mt  # noqa: F401
from resmlp_mt.image import data
from resmlp_mt.image.data import ImageDataError
from resmlp_mt.tasks.image_classification import ImageClassificationConfig, ImageClassificationTask

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def write_image_folder(root, splits=None, classes=("cat", "dog"), size=20):
    """ROOT/SPLIT/CLASS/i.png; class c is brighter than class c-1, so it can be learned.
    Default: train 10 + 10, val 7 + 6 (13: not a multiple of 8)."""
    rng = np.random.default_rng(0)
    for split, counts in (splits or {"train": (10, 10), "val": (7, 6)}).items():
        for c, (name, n) in enumerate(zip(classes, counts)):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                pixels = rng.random((size, size, 3)) * 100 + 120 * c
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, split, name, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="session")
def image_folder_tree(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"))


def task_for(root, **overrides):
    cfg = ImageClassificationConfig(data=str(root), img_size=16, seed=1, **overrides)
    return ImageClassificationTask.setup_task(cfg)


def test_image_folder_split_classes_and_batches(image_folder_tree):
    task = task_for(image_folder_tree)
    assert (task.classes, task.num_classes, task.in_chans) == (["cat", "dog"], 2, 3)
    task.load_dataset("valid")  # no DATA/valid: ImageNet's DATA/val
    dataset = task.dataset("valid")
    assert len(dataset) == 13
    batch = dataset.collater([dataset[i] for i in range(5)])
    assert batch["net_input"]["images"].shape == (5, 3, 16, 16)
    assert batch["target"].tolist() == [0] * 5 and batch["nsentences"] == batch["ntokens"] == 5


def test_augmentation_is_seeded_per_example_and_epoch(image_folder_tree):
    task = task_for(image_folder_tree)  # DeiT's defaults: RandAugment, random erasing, random crops
    task.load_dataset("train")
    dataset = task.dataset("train")
    first = dataset[3]["image"]
    torch.rand(5), np.random.rand(5)  # whatever ran in between
    assert torch.equal(dataset[3]["image"], first)
    dataset.set_epoch(2)
    assert not torch.equal(dataset[3]["image"], first)
    assert not dataset.can_reuse_epoch_itr_across_epochs  # a new order every epoch


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_files():
    task = ImageClassificationTask.setup_task(
        ImageClassificationConfig(data=FASHION_MNIST, dataset="fashion-mnist", img_size=28, seed=1, no_augment=True))
    assert (task.num_classes, task.in_chans) == (10, 1)
    task.load_dataset("test")
    test = task.dataset("test")
    assert len(test) == 10000
    sample = test[0]
    assert sample["image"].shape == (1, 28, 28) and sample["target"] == 9  # the first test image is an ankle boot
    assert abs(float(sample["image"].mean())) < 1.5  # normalised


# Bad input: each names what is wrong.

def test_missing_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image data directory {tmp_path / 'nope'} does not exist"):
        task_for(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=f"fashion-mnist data root {tmp_path / 'nope'} does not exist"):
        data.named_dataset("fashion-mnist", str(tmp_path / "nope"), train=True)


def test_named_dataset_without_files_or_network(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=f"mnist is not under {tmp_path} and torchvision could not download"):
        data.named_dataset("mnist", str(tmp_path), train=False)


def test_missing_split(image_folder_tree):
    task = task_for(image_folder_tree)
    with pytest.raises(FileNotFoundError, match=os.path.join(image_folder_tree, "test")):
        task.load_dataset("test")


def test_corrupt_and_unreadable_images_name_the_file(tmp_path):
    root = write_image_folder(tmp_path, {"train": (2, 2)})
    corrupt = tmp_path / "train" / "cat" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    truncated = tmp_path / "train" / "dog" / "truncated.png"
    truncated.write_bytes((tmp_path / "train" / "dog" / "0.png").read_bytes()[:60])
    unreadable = tmp_path / "train" / "dog" / "gone.png"
    unreadable.symlink_to(tmp_path / "does-not-exist.png")  # listed, but cannot be opened (root reads any mode)
    task = task_for(root)
    task.load_dataset("train")
    dataset = task.dataset("train")
    paths = [path for path, _ in dataset.source.samples]
    for bad in (corrupt, truncated, unreadable):
        with pytest.raises(ImageDataError, match=f"cannot read image {bad}"):
            dataset[paths.index(str(bad))]


def test_non_image_files_are_skipped_with_a_warning_naming_them(tmp_path, caplog):
    root = write_image_folder(tmp_path, {"train": (2, 2)})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / "labels.csv").write_text("0,1")
    task = task_for(root)
    with caplog.at_level(logging.WARNING):
        task.load_dataset("train")
    assert len(task.dataset("train")) == 4
    message = caplog.text
    assert "skipped 2 file(s) without an image extension" in message
    assert str(tmp_path / "train" / "cat" / "notes.txt") in message and "labels.csv" in message


def test_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path, {"train": (2, 2)})
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "readme.txt").write_text("no images yet")
    task = task_for(root)
    with pytest.raises(ImageDataError, match=f"class folder\\(s\\) without images: {tmp_path / 'train' / 'emu'}"):
        task.load_dataset("train")


def test_splits_with_different_classes(tmp_path):
    root = write_image_folder(tmp_path, {"train": (2, 2)})
    write_image_folder(tmp_path, {"val": (1, 1, 1)}, classes=("cat", "dog", "emu"))
    task = task_for(root)
    with pytest.raises(ImageDataError, match="has 3 classes .* but the task has 2"):
        task.load_dataset("valid")


@pytest.mark.parametrize("target", ["train", "train/cat", "train/dog"])
def test_directory_link_loop_names_the_link(tmp_path, target):
    """A link back to the split, to its own class folder, or (over two links) to each other's."""
    root = write_image_folder(tmp_path, {"train": (6, 6)})
    link = tmp_path / "train" / "cat" / "more"
    link.symlink_to(tmp_path / target, target_is_directory=True)
    if target == "train/dog":
        (tmp_path / "train" / "dog" / "back").symlink_to(tmp_path / "train" / "cat", target_is_directory=True)
    task = task_for(root)
    with pytest.raises(ImageDataError, match="directory link loop: .* leads back to") as error:
        task.load_dataset("train")
    message = str(error.value)
    assert str(link) in message or str(tmp_path / "train" / "dog" / "back") in message


def test_a_link_to_a_directory_outside_is_followed_once_and_counts_are_logged(tmp_path, caplog):
    root = write_image_folder(tmp_path / "data", {"train": (3, 4)})
    extra = write_image_folder(tmp_path / "extra", {"more": (2,)})
    (tmp_path / "data" / "train" / "cat" / "more").symlink_to(os.path.join(extra, "more", "cat"))
    task = task_for(root)
    with caplog.at_level(logging.INFO):
        task.load_dataset("train")
    assert len(task.dataset("train")) == 9
    assert f"train ({tmp_path / 'data' / 'train'}): 9 images, 2 classes: cat 5, dog 4" in caplog.text


def test_counts_of_many_classes_give_the_range():
    classes = [f"c{i:02d}" for i in range(30)]
    targets = [i for i in range(30) for _ in range(3)] + [7] * 5
    assert data.describe_counts(targets, classes) == "95 images, 30 classes: from 3 (c00) to 8 (c07) per class"
