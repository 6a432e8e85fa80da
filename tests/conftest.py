import os
import random
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from helpers import run_cli  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]


def write_reversal_task(directory, sizes, seed=0, min_len=2, max_len=9):
    """Plain-text source/target files where the target is the source reversed."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for split, n in sizes.items():
        with open(os.path.join(directory, f"{split}.src"), "w") as fs, open(
            os.path.join(directory, f"{split}.tgt"), "w"
        ) as ft:
            for _ in range(n):
                s = [rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))]
                fs.write(" ".join(s) + "\n")
                ft.write(" ".join(reversed(s)) + "\n")


def preprocess(raw, dest):
    run_cli("fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
            "--trainpref", f"{raw}/train", "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test",
            "--destdir", dest, "--joined-dictionary", "--workers", "1")
    return dest


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """400 training pairs; valid (21) and test (13) sizes are not multiples of 8 on purpose."""
    root = tmp_path_factory.mktemp("tiny")
    write_reversal_task(root / "raw", {"train": 400, "valid": 21, "test": 13})
    return preprocess(root / "raw", root / "bin")
