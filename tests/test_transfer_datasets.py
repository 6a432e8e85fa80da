"""The transfer sets (Flowers-102, Stanford Cars, iNaturalist 2018/2019) from miniatures of
their real on-disk layouts, written here as torchvision's classes read them.

Each generated image is one flat colour that encodes its label (``shade``), so a sample
read back through the task shows that image and label still belong together.
"""
import json
import os
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

import resmlp_mt  # noqa: F401
from helpers import USER_DIR, run_cli
from resmlp_mt.image import data
from resmlp_mt.tasks.image_classification import ImageClassificationConfig, ImageClassificationTask


def shade(label: int) -> int:
    return 10 + 7 * (label % 34)


def write_jpg(path, label: int, size=(24, 18)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (shade(label),) * 3).save(path, quality=95)


def write_flowers102(root, per_split=(("trnid", 2), ("valid", 2), ("tstid", 3)), classes=4):
    """ROOT/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat (1-based labels), setid.mat (1-based ids)}."""
    base = os.path.join(root, "flowers-102")
    labels, ids, next_id = [], {}, 1
    for key, per_class in per_split:
        ids[key] = []
        for c in range(classes):
            for _ in range(per_class):
                labels.append(c + 1)
                ids[key].append(next_id)
                write_jpg(os.path.join(base, "jpg", f"image_{next_id:05d}.jpg"), c)
                next_id += 1
    scipy.io.savemat(os.path.join(base, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    scipy.io.savemat(os.path.join(base, "setid.mat"), {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return {split: [labels[i - 1] - 1 for i in v] for split, v in ids.items()}


@pytest.fixture
def md5_of_generated_files(monkeypatch):
    """torchvision checks Flowers-102's .mat files against the official md5: a miniature cannot pass."""
    monkeypatch.setattr("torchvision.datasets.flowers102.check_integrity", lambda path, md5=None: os.path.isfile(path))


def write_stanford_cars(root, train=(0, 0, 1, 2, 195, 195), test=(1, 2, 2, 195)):
    """ROOT/stanford_cars/{cars_train, cars_test}/NNNNN.jpg, devkit/{cars_train_annos, cars_meta}.mat and
    cars_test_annos_withlabels.mat: struct arrays with bbox_*, class (1-based) and fname, as the devkit's."""
    base = os.path.join(root, "stanford_cars")
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    for folder, mat, labels in (("cars_train", "devkit/cars_train_annos.mat", train),
                                ("cars_test", "cars_test_annos_withlabels.mat", test)):
        annotations = np.zeros((1, len(labels)), dtype=fields)
        for i, label in enumerate(labels):
            fname = f"{i + 1:05d}.jpg"
            write_jpg(os.path.join(base, folder, fname), label)
            annotations[0, i] = (np.uint8(1), np.uint8(1), np.uint8(20), np.uint8(15), np.uint8(label + 1), fname)
        os.makedirs(os.path.dirname(os.path.join(base, mat)), exist_ok=True)
        scipy.io.savemat(os.path.join(base, mat), {"annotations": annotations})
    names = np.array([f"Car Model {i} 2012" for i in range(196)], dtype=object)
    scipy.io.savemat(os.path.join(base, "devkit", "cars_meta.mat"), {"class_names": names.reshape(1, -1)})
    return {"train": list(train), "test": list(test)}


INAT_TREE = {"Birds": [0, 1], "Plants": [2, 3, 4]}  # super-category -> species ids (folder names)


def write_inaturalist(root, year: str):
    """ROOT/YEAR/SUPER/ID/*.jpg (the train_val tarball's tree) and ROOT/{train,val}YEAR.json, whose
    file_name starts with the tarball's top folder; one image of each species is in val."""
    listed = {"train": [], "val": []}
    for supercategory, species in INAT_TREE.items():
        for label in species:
            for k in range(3 if label != 3 else 4):
                name = f"{label:03d}{k}abcdef.jpg"
                write_jpg(os.path.join(root, year, supercategory, str(label), name), label)
                split = "val" if k == 0 else "train"
                listed[split].append((f"train_val{year}/{supercategory}/{label}/{name}", label))
    for split, images in listed.items():
        with open(os.path.join(root, f"{split}{year}.json"), "w") as f:
            json.dump({"images": [{"id": i, "file_name": n} for i, (n, _) in enumerate(images)],
                       "annotations": [{"image_id": i, "category_id": c} for i, (_, c) in enumerate(images)]}, f)
    return {split: sorted(c for _, c in images) for split, images in listed.items()}


def opened(root, dataset, split):
    task = ImageClassificationTask.setup_task(ImageClassificationConfig(data=str(root), dataset=dataset, seed=1))
    task.load_dataset(split)
    return task, task.dataset(split)


def check_pairs(dataset):
    """Every image is the shade its label was written with (JPEG: within 3)."""
    for i in range(len(dataset)):
        image, label = dataset.source[i]
        assert image.mode == "RGB" and abs(image.getpixel((5, 5))[0] - shade(label)) <= 3, (i, label)
        assert dataset.source.targets[i] == label


def test_flowers102_train_is_train_plus_val_and_evaluation_is_test(tmp_path, md5_of_generated_files):
    written = write_flowers102(tmp_path)
    task, train = opened(tmp_path, "flowers102", "train")
    assert (task.num_classes, task.in_chans, task.cfg.img_size) == (102, 3, 224)
    assert len(train) == 16 and sorted(train.source.targets) == sorted(written["trnid"] + written["valid"])
    check_pairs(train)
    for split in ("valid", "test"):
        _, evaluation = opened(tmp_path, "flowers102", split)
        assert len(evaluation) == 12 and evaluation.source.targets == written["tstid"]
        check_pairs(evaluation)
    sample = evaluation[5]
    assert sample["image"].shape == (3, 224, 224) and sample["target"] == written["tstid"][5]


def test_stanford_cars_splits(tmp_path):
    written = write_stanford_cars(tmp_path)
    task, train = opened(tmp_path, "stanford-cars", "train")
    assert task.num_classes == 196
    assert train.source.targets == written["train"]
    check_pairs(train)
    _, test = opened(tmp_path, "stanford-cars", "valid")
    assert test.source.targets == written["test"]
    check_pairs(test)
    assert test[3]["target"] == 195  # the last class: class 196 in the devkit's 1-based numbering


@pytest.mark.parametrize("dataset,classes", [("inat2018", 8142), ("inat2019", 1010)])
def test_inaturalist_splits_by_the_json_files_with_species_labels(tmp_path, dataset, classes):
    written = write_inaturalist(tmp_path, dataset[-4:])
    task, train = opened(tmp_path, dataset, "train")
    assert task.num_classes == classes
    assert len(train) == 11 and sorted(train.source.targets) == written["train"]
    check_pairs(train)  # label = the species folder's number (target_type "full"), not the super-category
    _, val = opened(tmp_path, dataset, "valid")
    assert sorted(val.source.targets) == written["val"] == [0, 1, 2, 3, 4]
    check_pairs(val)


def test_transfer_set_evaluation_crops_at_0_9(tmp_path):
    write_stanford_cars(tmp_path)
    task, _ = opened(tmp_path, "stanford-cars", "valid")
    resize = task.transform(task.cfg, train=False).transforms[0]
    assert resize.size == 248  # 224 / 0.9, ResMLP's evaluation crop; the images have no native size


# Missing files: each error names the root and what it should hold.

@pytest.mark.parametrize("dataset,expected", [
    ("stanford-cars", "stanford_cars/devkit/cars_train_annos.mat"),
    ("inat2018", "2018/SUPERCATEGORY/ID/\\*.jpg .*train2018.json"),
    ("inat2019", "val2019.json"),
])
def test_missing_files_name_the_root_and_the_layout(tmp_path, dataset, expected):
    with pytest.raises(FileNotFoundError, match=f"{dataset} is not under {tmp_path}: .*expected .*{expected}"):
        data.named_dataset(dataset, str(tmp_path), train=True)


def test_flowers102_without_files_or_network(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.flowers102.download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match=f"flowers102 is not under {tmp_path}: torchvision could not download "
                                                 f"it \\(OSError: network is unreachable\\); expected .*setid.mat"):
        data.named_dataset("flowers102", str(tmp_path), train=False)


def test_inaturalist_json_naming_absent_images(tmp_path):
    write_inaturalist(tmp_path, "2019")
    os.remove(tmp_path / "2019" / "Plants" / "3" / "0031abcdef.jpg")
    with pytest.raises(FileNotFoundError, match="1 of the 11 images that .*train2019.json lists are not under .*"
                                                "Plants/3/0031abcdef.jpg"):
        data.named_dataset("inat2019", str(tmp_path), train=True)


@pytest.mark.slow
def test_fairseq_train_and_validate_on_stanford_cars(tmp_path):
    write_stanford_cars(tmp_path / "data")
    common = ["--user-dir", USER_DIR, "--task", "image_classification", "--dataset", "stanford-cars", "--cpu"]
    run_cli("fairseq-train", tmp_path / "data", *common, "--arch", "resmlp_tiny_32", "--img-size", "16",
            "--embed-dim", "16", "--depth", "2", "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb",
            "--lr", "1e-3", "--max-update", "2", "--batch-size", "3", "--save-dir", tmp_path / "ckpt",
            "--no-epoch-checkpoints", "--log-format", "simple")
    out = run_cli("fairseq-validate", tmp_path / "data", *common, "--path", tmp_path / "ckpt" / "checkpoint_last.pt",
                  "--valid-subset", "test", "--batch-size", "8")
    log = out.stdout + out.stderr
    assert "test (stanford-cars test set in" in log and "4 images, 196 classes" in log, log[-3000:]
    assert re.search(r"valid on 'test' subset \| loss [\d.]+ \| nsentences 4 \| accuracy [\d.]+", log), log[-3000:]


@pytest.mark.slow
def test_fine_tuning_recipe_from_imagenet_weights_with_a_new_head(tmp_path):
    """examples/image/README.md: timm's ImageNet weights -> resmlp-convert --num-classes 196 ->
    fairseq-train --finetune-from-model on Stanford Cars."""
    import timm
    import torch

    from resmlp_mt import convert

    write_stanford_cars(tmp_path / "data")
    torch.save(timm.create_model("resmlp_12_224", img_size=32).state_dict(), tmp_path / "imagenet.pth")
    assert convert.main([str(tmp_path / "imagenet.pth"), str(tmp_path / "cars.pt"), "--num-classes", "196",
                         "--data", str(tmp_path / "data"), "--dataset", "stanford-cars"]) == 0
    out = run_cli("fairseq-train", tmp_path / "data", "--user-dir", USER_DIR, "--task", "image_classification",
                  "--dataset", "stanford-cars", "--arch", "resmlp_s12", "--img-size", "32", "--cpu",
                  "--finetune-from-model", tmp_path / "cars.pt", "--criterion", "image_cross_entropy",
                  "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.01", "--weight-decay", "1e-4",
                  "--reprob", "0", "--max-update", "1", "--batch-size", "6", "--no-save", "--log-format", "simple")
    log = out.stdout + out.stderr
    assert f"loading pretrained model from {tmp_path / 'cars.pt'}" in log, log[-3000:]
    assert re.search(r"Loaded checkpoint .*cars.pt \(epoch 1 @ 0 updates\)", log), log[-3000:]
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nsentences 4 \| accuracy", log), log[-3000:]
