"""ImageNet evaluation sets: ReaL top-1 (``--real-labels``) and ImageNet-V2's class-index
folders (``--class-folders numeric``), on generated trees."""
import json
import logging
import os
import re

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils, metrics
from PIL import Image
from timm.data import RealLabelsImagenet

import resmlp_mt  # noqa: F401
from helpers import USER_DIR, run_cli
from resmlp_mt.criterions.image_cross_entropy import ImageCrossEntropyConfig, ImageCrossEntropyCriterion
from resmlp_mt.image.data import ImageDataError
from resmlp_mt.tasks.image_classification import ImageClassificationConfig, ImageClassificationTask

CLASSES = ("n01440764", "n01443537", "n01484850")
# Image k (ILSVRC2012_val_0000000k.JPEG) -> its class folder, and its ReaL set (two are empty).
FOLDER = {1: 0, 2: 2, 3: 1, 4: 0, 5: 1, 6: 2, 7: 0, 8: 1, 9: 2}
REAL = [[0], [2, 1], [], [0, 2], [1], [], [1], [1, 0], [2]]


def write_imagenet_val(root):
    """ROOT/{train,val}/WNID/...: the val images named as ImageNet's, in class folders (as the usual
    valprep script leaves them), so the folder order is not the file-number order; real.json beside."""
    rng = np.random.default_rng(0)
    for k, c in FOLDER.items():
        for split, name in (("val", f"ILSVRC2012_val_{k:08d}.JPEG"), ("train", f"train_{k}.JPEG")):
            os.makedirs(os.path.join(root, split, CLASSES[c]), exist_ok=True)
            pixels = rng.random((16, 16, 3)) * 100 + 70 * c
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, split, CLASSES[c], name))
    with open(os.path.join(root, "real.json"), "w") as f:
        json.dump(REAL, f)
    return str(root)


def task_for(root, **overrides):
    cfg = ImageClassificationConfig(data=str(root), img_size=16, seed=1, **overrides)
    return ImageClassificationTask.setup_task(cfg)


class Predicting(torch.nn.Module):
    """A model whose top-1 for the image of dataset index i is ``predictions[i]``: ``ids`` is set per batch."""

    def __init__(self, predictions, num_classes=3):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float()
        self.ids = None

    def forward(self, images):
        return self.logits[self.ids]


def file_number(path):
    return int(re.search(r"ILSVRC2012_val_(\d{8})", path).group(1))


def test_real_accuracy_as_timm_scores_it(tmp_path):
    root = write_imagenet_val(tmp_path)
    task = task_for(root, real_labels=os.path.join(root, "real.json"))
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    paths = [p for p, _ in dataset.source.samples]
    assert dataset.real_labels == [REAL[file_number(p) - 1] for p in paths]

    predictions = [(file_number(p) * 2) % 3 for p in paths]  # right for some, wrong for others
    model = Predicting(predictions).eval()
    criterion = ImageCrossEntropyCriterion(ImageCrossEntropyConfig(), task)
    logs = []
    for ids in ([0, 1, 2, 3], [4, 5, 6], [7, 8]):  # batches in fairseq's order: by example id
        model.ids = torch.tensor(ids)
        _, _, log = criterion(model, dataset.collater([dataset[i] for i in ids]))
        logs.append(log)
    with metrics.aggregate() as agg:
        criterion.reduce_metrics(logs)
        real_accuracy = agg.get_smoothed_values()["real_accuracy"]

    # By hand: images with an empty set do not count.
    scored = [(p, REAL[file_number(path) - 1]) for p, path in zip(predictions, paths) if REAL[file_number(path) - 1]]
    assert len(scored) == 7
    by_hand = 100 * sum(p in labels for p, labels in scored) / len(scored)
    # timm's evaluator: every listed file, in the dataset's order, one batch.
    timm_real = RealLabelsImagenet(paths, os.path.join(root, "real.json"), topk=(1,))
    timm_real.add_result(model.logits[torch.arange(len(paths))])
    assert round(by_hand, 2) == pytest.approx(real_accuracy) == pytest.approx(round(timm_real.get_accuracy(1), 2))
    assert 0 < by_hand < 100


def test_real_labels_errors(tmp_path):
    root = write_imagenet_val(tmp_path)
    with open(os.path.join(root, "short.json"), "w") as f:
        json.dump(REAL[:5], f)
    task = task_for(root, real_labels=os.path.join(root, "short.json"))
    with pytest.raises(ValueError, match="short.json has no labels for .*ILSVRC2012_val_0000000[6-9].JPEG"):
        task.load_dataset("valid")
    with open(os.path.join(root, "wide.json"), "w") as f:
        json.dump(REAL[:8] + [[7]], f)
    with pytest.raises(ValueError, match="the labels \\[7\\] of .*ILSVRC2012_val_00000009.JPEG are not classes"):
        task_for(root, real_labels=os.path.join(root, "wide.json")).load_dataset("valid")
    with pytest.raises(FileNotFoundError, match="--real-labels .*nope.json does not exist"):
        task_for(root, real_labels=os.path.join(root, "nope.json")).load_dataset("valid")
    task_for(root, real_labels=os.path.join(root, "short.json")).load_dataset("train")  # training ignores it


def test_timm_copy_of_the_real_labels(tmp_path):
    from resmlp_mt.image.real_labels import read_real_json

    table = read_real_json("timm")
    assert len(table) == 50000 and table["ILSVRC2012_val_00000001.JPEG"] == []
    assert sum(1 for labels in table.values() if not labels) == 3163


# ImageNet-V2: class folders 0 ... 999 are the class indices.

def write_numeric_tree(root, classes=12):
    for c in range(classes):
        os.makedirs(os.path.join(root, "val", str(c)), exist_ok=True)
        for k in range(2):
            Image.new("RGB", (16, 16), (10 * c, 0, 0)).save(os.path.join(root, "val", str(c), f"{k}.png"))
    return str(root)


def test_numeric_class_folders(tmp_path, caplog):
    root = write_numeric_tree(tmp_path)
    with caplog.at_level(logging.WARNING):
        by_names = task_for(root)
    assert by_names.classes[:4] == ["0", "1", "10", "11"]  # torchvision's order
    assert "pass --class-folders numeric" in caplog.text
    task = task_for(root, class_folders="numeric")
    assert task.classes == [str(c) for c in range(12)]
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    for path, target in dataset.source.samples:
        assert target == int(os.path.basename(os.path.dirname(path)))
    index = [p for p, _ in dataset.source.samples].index(os.path.join(root, "val", "11", "1.png"))
    assert dataset.source[index][0].getpixel((0, 0))[0] == 110 and dataset[index]["target"] == 11


def test_numeric_class_folders_must_be_0_to_n(tmp_path):
    root = write_numeric_tree(tmp_path, classes=3)
    os.rename(os.path.join(root, "val", "1"), os.path.join(root, "val", "5"))
    with pytest.raises(ImageDataError, match="are not 0 ... 2 \\(missing: 1"):
        task_for(root, class_folders="numeric")
    os.rename(os.path.join(root, "val", "5"), os.path.join(root, "val", "cat"))
    with pytest.raises(ImageDataError, match="class folders that are no integers: cat"):
        task_for(root, class_folders="numeric")


@pytest.mark.slow
def test_fairseq_validate_reports_real_accuracy_of_a_trained_model(tmp_path):
    root = write_imagenet_val(tmp_path / "data")
    save_dir = tmp_path / "ckpt"
    common = ["--user-dir", USER_DIR, "--task", "image_classification", "--cpu"]
    run_cli("fairseq-train", root, *common, "--arch", "resmlp_tiny_32", "--img-size", "16", "--embed-dim", "16",
            "--depth", "2", "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb", "--lr", "5e-2",
            "--max-update", "4", "--batch-size", "3", "--save-dir", save_dir, "--no-epoch-checkpoints",
            "--no-augment", "--disable-validation", "--log-format", "simple")
    checkpoint = save_dir / "checkpoint_last.pt"
    real_json = os.path.join(root, "real.json")
    out = run_cli("fairseq-validate", root, *common, "--path", checkpoint, "--valid-subset", "valid",
                  "--batch-size", "4", "--real-labels", real_json)
    log = out.stdout + out.stderr
    m = re.search(r"valid on 'valid' subset \| .*nsentences 9 \| accuracy ([\d.]+) .*\| real_accuracy ([\d.]+)", log)
    assert m, log[-3000:]

    # The same model in this process, scored independently by timm's evaluator.
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    batch = dataset.collater([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        logits = models[0].eval()(batch["net_input"]["images"])
    timm_real = RealLabelsImagenet([p for p, _ in dataset.source.samples], real_json, topk=(1,))
    timm_real.add_result(logits)
    assert float(m.group(2)) == pytest.approx(round(timm_real.get_accuracy(1), 2))
    top1 = 100 * float((logits.argmax(1) == batch["target"]).float().mean())
    assert float(m.group(1)) == pytest.approx(round(top1, 2))
