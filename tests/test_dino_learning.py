"""DINO learns without labels: a tiny ResMLP pretrained on Fashion-MNIST's images (400 updates,
a few minutes on one core, stopped by update count) has teacher features whose weighted kNN
top-1 on the 10,000 test images beats the same network at random initialisation by at least
3 points. The raw pixels' kNN is printed beside them for reference. The recipe is the
demo's (examples/image/dino_recipe.sh)."""
import os
import re
import subprocess

import pytest

from helpers import REPO, USER_DIR, run_cli

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
UPDATES = 400
KNN = ["--dataset", "fashion-mnist", "--max-train", "10000", "--num-workers", "1"]  # every test image, 1/6 of the bank


def recipe():
    script = f"source {REPO}/examples/image/dino_recipe.sh && printf '%s\\n' \"${{DINO_FLAGS[@]}}\""
    return subprocess.run(["bash", "-c", script], check=True, capture_output=True, text=True).stdout.split()


def knn_top1(*args) -> float:
    out = run_cli("resmlp-knn", FASHION_MNIST, *KNN, *args).stdout
    m = re.search(r"top-1 ([\d.]+)% top-5 [\d.]+% on 10000 test images, 10000 train images", out)
    assert m, out
    return float(m.group(1))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason=f"no Fashion-MNIST in {FASHION_MNIST}: "
                    "apt-get install dataset-fashion-mnist (make fashion-mnist)")
def test_dino_features_beat_random_initialisation_by_3_points(tmp_path):
    run_cli("fairseq-train", FASHION_MNIST, "--user-dir", USER_DIR, "--dataset", "fashion-mnist", *recipe(),
            "--max-update", str(UPDATES), "--num-workers", "1", "--disable-validation", "--seed", "1", "--cpu",
            "--save-dir", tmp_path, "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "100")
    dino = knn_top1("--path", tmp_path / "checkpoint_last.pt")
    random_init = knn_top1("--random-init", "--arch", "resmlp_tiny_28", "--seed", "1")
    pixels = knn_top1("--raw-pixels")
    print(f"Fashion-MNIST kNN top-1 (k 20): DINO teacher after {UPDATES} updates {dino:.2f}%, the same network at "
          f"random initialisation {random_init:.2f}%, raw pixels {pixels:.2f}%")
    assert dino >= random_init + 3.0
