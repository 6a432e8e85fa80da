"""Data and training runs shared by several test files.

Each fixture here is session-scoped: the training runs take a minute or so each, and run
once per pytest session however many files use them.
"""
import logging
import os
import random
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from training_runs import (  # noqa: E402
    SAVE_EVERY,
    TRAIN_HOOKS,
    UPDATES,
    fairseq_train,
    finish,
    hooked_train,
    start,
    train_args,
)

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


def preprocess(raw, dest, *extra):
    """fairseq-preprocess's own main, in this process (as the console script calls it), with a
    joined dictionary: no new process to import torch and fairseq, so the fixtures built on it
    stay cheap enough for the fast tests. It leaves the logging it found as it was."""
    from fairseq import options

    loggers = [logging.getLogger(), logging.getLogger("fairseq_cli.preprocess")]
    before = [(lg, list(lg.handlers), lg.level) for lg in loggers]
    from fairseq_cli import preprocess as fairseq_preprocess  # its import may call logging.basicConfig

    args = options.get_preprocessing_parser().parse_args(list(map(str, [
        "--source-lang", "src", "--target-lang", "tgt", "--trainpref", f"{raw}/train",
        "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test", "--destdir", dest,
        "--joined-dictionary", "--workers", "1", *extra])))
    try:
        fairseq_preprocess.main(args)  # adds a FileHandler (DEST/preprocess.log) to its logger
    finally:
        for lg, handlers, level in before:
            for handler in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(handler)
                handler.close()
            lg.setLevel(level)
    return dest


@pytest.fixture(scope="session")
def tiny_data_bin(tmp_path_factory):
    """400 training pairs; valid (21) and test (13) sizes are not multiples of 8 on purpose."""
    root = tmp_path_factory.mktemp("tiny")
    write_reversal_task(root / "raw", {"train": 400, "valid": 21, "test": 13})
    return preprocess(root / "raw", root / "bin")


@pytest.fixture(scope="session")
def long_data_bin(tiny_data_bin, tmp_path_factory):
    """tiny_data_bin's dictionary; 3 of 403 training and 2 of 13 test sentences have 20 words (21 tokens > 16)."""
    root = tmp_path_factory.mktemp("long")
    raw = root / "raw"
    write_reversal_task(raw, {"train": 400, "valid": 21, "test": 11}, seed=5)
    write_reversal_task(root / "long", {"train": 3, "test": 2}, seed=6, min_len=20, max_len=20)
    for split in ("train", "test"):
        for side in ("src", "tgt"):
            with open(raw / f"{split}.{side}", "a") as f:
                f.write(open(root / "long" / f"{split}.{side}").read())
    return preprocess(raw, root / "bin", "--srcdict", os.path.join(tiny_data_bin, "dict.src.txt"))


@pytest.fixture(scope="session")
def hooks():
    """The path of the test-only wrapper around fairseq-train (tests/scripts/train_hooks.py)."""
    return TRAIN_HOOKS


@pytest.fixture(scope="session")
def reference(tiny_data_bin, tmp_path_factory):
    """Two uninterrupted runs of UPDATES updates with the same seed, side by side."""
    root = tmp_path_factory.mktemp("reference")
    runs = []
    for i in range(2):
        save = root / f"run{i}"
        log = root / f"run{i}.log"
        args = train_args(tiny_data_bin, save, UPDATES, "--save-interval-updates", SAVE_EVERY)
        runs.append((save, log, start(fairseq_train(args), log)))
    logs = [finish(proc, log) for _, log, proc in runs]
    return SimpleNamespace(dirs=[r[0] for r in runs], logs=logs, last=str(runs[0][0] / "checkpoint_last.pt"))


@pytest.fixture(scope="session")
def bleu_run(long_data_bin, hooks, tmp_path_factory):
    """--eval-bleu training with shared embeddings; every validation batch's ids are recorded.

    It trains on long_data_bin, whose 3 too-long training sentences fairseq must filter.
    """
    root = tmp_path_factory.mktemp("bleu")
    counts = root / "bleu_ids.txt"
    args = train_args(long_data_bin, root / "ckpt", 10, "--share-all-embeddings",
                      "--eval-bleu", "--eval-bleu-args", '{"beam": 1}', "--eval-bleu-detok", "space",
                      "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
                      "--batch-size-valid", "8")  # 21 = 8 + 8 + 5: fairseq main would drop the 5
    log = root / "train.log"
    text = finish(start(hooked_train(hooks, args), log, env={"RESMLP_COUNT_BLEU": str(counts)}), log)
    return SimpleNamespace(save=root / "ckpt", log=text, counts=counts)
