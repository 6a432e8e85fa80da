"""A small ResMLP learns Fashion-MNIST: at least 85% test top-1 after 2.5 epochs (1,172 updates)."""
import os
import re

import pytest

from helpers import USER_DIR, run_cli

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason=f"no Fashion-MNIST in {FASHION_MNIST}: "
                    "apt-get install dataset-fashion-mnist (make fashion-mnist)")
def test_fashion_mnist_85_percent_in_two_and_a_half_epochs(tmp_path):
    # The demo's recipe, its cosine schedule over 2.5 epochs (about 3 minutes on one core),
    # stopped by update count so that a slower machine takes longer instead of failing.
    # Measured test top-1: 86.1% after 938 updates (2 epochs), 86.9% after 1,172, 87.5% after 1,407 (3).
    out = run_cli(
        "fairseq-train", FASHION_MNIST, "--user-dir", USER_DIR, "--task", "image_classification",
        "--dataset", "fashion-mnist", "--arch", "resmlp_tiny_28", "--no-augment",
        "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb", "--lr", "1.5e-2", "--weight-decay", "0.05",
        "--lr-scheduler", "cosine", "--warmup-updates", "50", "--max-update", "1172",
        "--batch-size", "128", "--num-workers", "1", "--disable-validation",
        "--seed", "1", "--cpu", "--no-epoch-checkpoints", "--save-dir", tmp_path,
        "--log-format", "simple", "--log-interval", "100",
    )
    seconds = float(re.search(r"done training in ([\d.]+) seconds", out.stdout + out.stderr).group(1))
    test = run_cli("fairseq-validate", FASHION_MNIST, "--user-dir", USER_DIR, "--task", "image_classification",
                   "--path", tmp_path / "checkpoint_last.pt", "--valid-subset", "test", "--batch-size", "500", "--cpu")
    log = test.stdout + test.stderr
    m = re.search(r"valid on 'test' subset \| loss [\d.]+ \| nsentences 10000 \| accuracy ([\d.]+)", log)
    assert m, log[-3000:]
    accuracy = float(m.group(1))
    print(f"Fashion-MNIST test top-1 {accuracy:.2f}% after {seconds:.0f} s of training")
    assert accuracy >= 85.0
