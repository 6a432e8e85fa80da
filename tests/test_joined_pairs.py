"""--task translation_joined: the training set gains joined pairs of consecutive lines."""
import os

import numpy as np
import pytest
from fairseq import options, tasks

import resmlp_mt  # noqa: F401  (registers the task)


def load_task(data_bin, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data_bin), "--task", "translation_joined", "--arch",
                                                "resmlp_small", "--source-lang", "src", "--target-lang", "tgt",
                                                *map(str, extra)])
    task = tasks.setup_task(args)
    for split in ("train", "valid"):
        task.load_dataset(split)
    return task


def raw_lines(data_bin, split, lang):
    with open(os.path.join(os.path.dirname(data_bin), "raw", f"{split}.{lang}")) as f:
        return f.read().splitlines()


def test_joined_pairs_are_consecutive_training_lines_joined_with_a_space(tiny_data_bin):
    task = load_task(tiny_data_bin, "--joined-pairs", "0.1", "--seed", "5")
    train, n = task.datasets["train"], len(raw_lines(tiny_data_bin, "train", "src"))
    assert len(train) == n + round(0.1 * (n - 1))
    assert len(task.datasets["valid"]) == len(raw_lines(tiny_data_bin, "valid", "src"))  # untouched
    # every joined pair the task may draw, encoded independently from the raw text
    src, tgt = (raw_lines(tiny_data_bin, "train", lang) for lang in ("src", "tgt"))
    candidates = {(tuple(task.src_dict.encode_line(f"{src[i]} {src[i + 1]}", add_if_not_exist=False).tolist()),
                   tuple(task.tgt_dict.encode_line(f"{tgt[i]} {tgt[i + 1]}", add_if_not_exist=False).tolist())): i
                  for i in range(n - 1)}
    seen = set()
    for k in range(n, len(train)):
        item = train[k]
        key = (tuple(item["source"].tolist()), tuple(item["target"].tolist()))
        assert key in candidates, f"joined item {k} is no pair of consecutive lines"
        seen.add(candidates[key])
        assert train.src_sizes[k] == len(item["source"]) and train.tgt_sizes[k] == len(item["target"])
    assert len(seen) == len(train) - n  # distinct pairs
    for k in range(n):  # the original pairs, in their places
        expected = task.src_dict.encode_line(raw_lines(tiny_data_bin, "train", "src")[k], add_if_not_exist=False)
        assert train[k]["source"].eq(expected.long()).all()


def test_the_seed_draws_the_pairs_and_zero_turns_it_off(tiny_data_bin):
    def joined(seed, fraction="0.1"):
        train = load_task(tiny_data_bin, "--joined-pairs", fraction, "--seed", seed).datasets["train"]
        return np.asarray(train.src_sizes)

    assert (joined(1) == joined(1)).all()
    assert not (joined(1) == joined(2)).all()
    assert len(joined(1, "0")) == len(raw_lines(tiny_data_bin, "train", "src"))
    with pytest.raises(ValueError, match="--joined-pairs 1.5"):
        joined(1, "1.5")


def test_joins_of_up_to_k_sentences(tiny_data_bin):
    task = load_task(tiny_data_bin, "--joined-pairs", "0.2", "--joined-max-sentences", "4", "--seed", "3")
    train = task.datasets["train"]
    src, tgt = (raw_lines(tiny_data_bin, "train", lang) for lang in ("src", "tgt"))
    n = len(src)
    counts = []
    for k in range(n, len(train)):
        item = train[k]
        found = None
        for i in range(n - 1):  # an independent search: which consecutive lines, how many
            for c in (2, 3, 4):
                expected = task.src_dict.encode_line(" ".join(src[i : i + c]), add_if_not_exist=False).long()
                if expected.shape == item["source"].shape and expected.eq(item["source"]).all():
                    target = task.tgt_dict.encode_line(" ".join(tgt[i : i + c]), add_if_not_exist=False).long()
                    assert target.eq(item["target"]).all()
                    found = c
                    break
            if found:
                break
        assert found, f"joined item {k} is no run of 2 to 4 consecutive lines"
        counts.append(found)
    assert set(counts) == {2, 3, 4}
    with pytest.raises(ValueError, match="--joined-max-sentences 1"):
        load_task(tiny_data_bin, "--joined-max-sentences", "1")
