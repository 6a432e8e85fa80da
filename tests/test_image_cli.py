"""Image classification end to end through fairseq-train and fairseq-validate (--user-dir)."""
import os
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from helpers import USER_DIR, run_cli
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow  # fairseq-train and fairseq-validate: ~30 s

TINY = ["--arch", "resmlp_tiny_28", "--img-size", "16", "--embed-dim", "16", "--depth", "2"]
# One line per update: loss, update number and gradient norm.
UPDATE = re.compile(r"train_inner \| epoch \d+:\s+\d+ / \d+ loss=([\d.]+), .*num_updates=(\d+), .*gnorm=([\d.]+)")


def train(data, save_dir, *extra):
    """Two epochs with the paper's ingredients: RandAugment, random erasing, Mixup + CutMix,
    label smoothing, LAMB with weight decay, cosine schedule with warm-up."""
    return run_cli(
        "fairseq-train", data, "--user-dir", USER_DIR, "--task", "image_classification", *TINY,
        "--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25",
        "--criterion", "image_cross_entropy", "--mixup", "0.8", "--cutmix", "1.0", "--label-smoothing", "0.1",
        "--optimizer", "timm_lamb", "--lr", "5e-3", "--weight-decay", "0.2",
        "--lr-scheduler", "cosine", "--warmup-updates", "2", "--max-update", "100", "--max-epoch", "2",
        "--batch-size", "4", "--seed", "7", "--cpu", "--save-dir", save_dir,
        "--log-format", "simple", "--log-interval", "1", *extra,
    )


@pytest.fixture(scope="module")
def trained(image_folder_tree, tmp_path_factory):  # noqa: F811
    save_dir = str(tmp_path_factory.mktemp("ckpt"))
    out = train(image_folder_tree, save_dir, "--tensorboard-logdir", os.path.join(save_dir, "tensorboard"))
    return save_dir, out.stdout + out.stderr


def test_train_saves_and_validates_every_image(trained, image_folder_tree):  # noqa: F811
    save_dir, log = trained
    assert os.path.exists(os.path.join(save_dir, "checkpoint_last.pt"))
    assert len(UPDATE.findall(log)) == 10  # 20 images in batches of 4, two epochs
    valid = re.findall(r"valid on 'valid' subset \| loss [\d.]+ \| nsentences (\d+) \| accuracy [\d.]+ \| top5", log)
    assert valid == ["13", "13"], log[-3000:]  # 13 % 8 != 0: the last, short batch is validated too

    out = run_cli("fairseq-validate", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
                  "--path", os.path.join(save_dir, "checkpoint_last.pt"), "--valid-subset", "valid",
                  "--batch-size", "8", "--cpu")
    m = re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nsentences (\d+) \| accuracy ([\d.]+) \| top5 ([\d.]+)",
                  out.stdout + out.stderr)
    assert m, (out.stdout + out.stderr)[-3000:]
    assert int(m.group(1)) == 13 and 0 <= float(m.group(2)) <= 100 and float(m.group(3)) == 100


def test_tensorboard_logs_loss_and_top1(trained):
    save_dir, log = trained
    acc = EventAccumulator(os.path.join(save_dir, "tensorboard", "valid"), size_guidance={SCALARS: 0})
    acc.Reload()
    logged = {tag: [(e.step, round(e.value, 3)) for e in acc.Scalars(tag)] for tag in ("loss", "accuracy", "top5")}
    printed = re.findall(r"valid on 'valid' subset \| loss ([\d.]+) \| nsentences 13 \| accuracy ([\d.]+) "
                         r"\| top5 ([\d.]+) .*\| num_updates (\d+)", log)
    assert len(printed) == 2, log[-3000:]
    for i, tag in enumerate(("loss", "accuracy", "top5")):
        assert logged[tag] == [(int(p[3]), float(p[i])) for p in printed]
    assert [e.step for e in acc.Scalars("loss")] == [5, 10]  # the end of each epoch
    train_inner = EventAccumulator(os.path.join(save_dir, "tensorboard", "train_inner"), size_guidance={SCALARS: 0})
    train_inner.Reload()
    assert [e.step for e in train_inner.Scalars("loss")] == list(range(1, 11))  # --log-interval 1


def test_same_seed_same_loss_curve_with_any_number_of_workers(trained, image_folder_tree, tmp_path):  # noqa: F811
    _, log = trained
    again = train(image_folder_tree, str(tmp_path), "--num-workers", "2", "--no-save")
    first, second = UPDATE.findall(log), UPDATE.findall(again.stdout + again.stderr)
    assert len(first) == 10 and first == second
