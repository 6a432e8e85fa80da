"""kNN evaluation of frozen features: the vote against a brute-force loop, and resmlp-knn end to end."""
import math
import os
import re

import numpy as np
import pytest
import torch

from helpers import REPO, run_cli
from resmlp_mt.convert import fairseq_checkpoint
from resmlp_mt.image.knn import class_votes, knn_classify, normalise, ranked_classes
from resmlp_mt.models.resmlp_image import build_resmlp_image
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)


def brute_force(train, train_labels, queries, num_classes, k, temperature):
    """An independent reading of DINO's rule: per query, sort every training feature by cosine similarity
    (float64, Python's sort), sum exp(sim / T) per class over the first k, rank classes by vote, then index."""
    train = np.asarray(train, np.float64)
    queries = np.asarray(queries, np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    all_votes, rankings = [], []
    for q in queries:
        sims = [float(q @ t) for t in train]
        nearest = sorted(range(len(train)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in nearest:
            votes[int(train_labels[j])] += math.exp(sims[j] / temperature)
        all_votes.append(votes)
        rankings.append(sorted(range(num_classes), key=lambda c: (-votes[c], c)))
    return np.array(all_votes), np.array(rankings)


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.07), (20, 1.0), (50, 0.5), (500, 0.07)])
def test_votes_match_brute_force_on_random_features(k, temperature):
    """40 training features in 4 classes of 10 (k = 20 and 50 are larger than a class; 500 than the bank)."""
    g = torch.Generator().manual_seed(k)
    train, queries = torch.randn(40, 8, generator=g), torch.randn(25, 8, generator=g)
    labels = torch.arange(40) % 4
    votes = class_votes(normalise(train), labels, normalise(queries), 4, [k], temperature)[k]
    expected_votes, expected_ranking = brute_force(train, labels, queries, 4, k, temperature)
    np.testing.assert_allclose(votes.numpy(), expected_votes, rtol=1e-4)
    assert ranked_classes(votes).tolist() == expected_ranking.tolist()


def test_equal_votes_go_to_the_lower_class():
    """One-hot features: similarities are exactly 1 or 0, so votes tie exactly. Each direction has 4 training
    copies and k = 4, so the neighbours are those copies whatever the order of equal similarities."""
    rng = np.random.default_rng(0)
    directions, copies, classes = 6, 4, 3
    train = np.repeat(np.eye(directions), copies, axis=0)
    labels = rng.integers(0, classes, len(train))
    labels[:4] = [2, 1, 2, 1]  # direction 0: a 2-2 tie between classes 1 and 2
    queries = np.eye(directions)
    votes = class_votes(normalise(torch.tensor(train)), torch.tensor(labels), normalise(torch.tensor(queries)),
                        classes, [copies], 0.07)[copies]
    _, expected = brute_force(train, labels, queries, classes, copies, 0.07)
    assert ranked_classes(votes).tolist() == expected.tolist()
    assert ranked_classes(votes)[0, 0] == 1 and votes[0, 1] == votes[0, 2]


def test_accuracies_several_k_and_blocks_of_queries():
    g = torch.Generator().manual_seed(0)
    train, queries = torch.randn(60, 5, generator=g), torch.randn(33, 5, generator=g)
    labels, query_labels = torch.arange(60) % 6, torch.arange(33) % 6
    whole = knn_classify(train, labels, queries, query_labels, 6, [3, 20])
    blocks = knn_classify(train, labels, queries, query_labels, 6, [3, 20], max_similarities=7 * 60)  # 7 a time
    assert whole == blocks
    _, ranking = brute_force(train, labels, queries, 6, 20, 0.07)
    top1 = 100 * np.mean(ranking[:, 0] == query_labels.numpy())
    top5 = 100 * np.mean([y in r[:5] for y, r in zip(query_labels.numpy(), ranking)])
    assert whole[1].k == 20 and whole[1].top1 == pytest.approx(top1) and whole[1].top5 == pytest.approx(top5)
    assert (whole[1].num_test, whole[1].num_train) == (33, 60)
    two = knn_classify(train, labels % 2, queries, query_labels % 2, 2)[0]
    assert math.isnan(two.top5)  # no top-5 with fewer than 5 classes


def test_separated_clusters_are_all_right():
    """Each class a tight cluster around its own direction: every query's 20 neighbours are of its class."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 16, generator=g) * 10
    labels, query_labels = torch.arange(100) % 5, torch.arange(50) % 5
    train = centres[labels] + 0.1 * torch.randn(100, 16, generator=g)
    queries = centres[query_labels] + 0.1 * torch.randn(50, 16, generator=g)
    result = knn_classify(train, labels, queries, query_labels, 5)[0]
    assert result.top1 == 100.0 and result.top5 == 100.0


def test_registered_as_a_console_script():
    with open(os.path.join(REPO, "setup.py")) as f:
        assert '"resmlp-knn=resmlp_mt.cli.knn:main"' in f.read()


LINE = re.compile(r"kNN \(k=(\d+), T=0.07\) top-1 ([\d.]+)% on 13 test images, 20 train images \((.*)\)")


def knn_cli(*args):
    out = run_cli("python", "-m", "resmlp_mt.cli.knn", *args, "--cpu", "--batch-size", "8",
                  env={"PYTHONPATH": REPO})
    return LINE.findall(out.stdout), out


@pytest.mark.slow
def test_cli_random_init_checkpoint_and_raw_pixels(image_folder_tree, tmp_path):  # noqa: F811
    """The generated tree (2 classes, 20 train, 13 val images): its classes differ in brightness, which the
    normalised pixels separate completely. A checkpoint holding the random initialisation (with a head of
    another class count, which kNN does not use) gives the --random-init figures."""
    random_init, out = knn_cli(image_folder_tree, "--random-init", "--arch", "resmlp_tiny_28", "--img-size", "16",
                               "--k", "5", "20")
    assert [(k, what) for k, _, what in random_init] == [
        ("5", "resmlp_tiny_28 at random initialisation, seed 1"), ("20", "resmlp_tiny_28 at random initialisation, "
                                                                        "seed 1")], out.stdout + out.stderr[-2000:]
    torch.manual_seed(1)
    model = build_resmlp_image("resmlp_tiny_28", num_classes=5, img_size=16, in_chans=3)
    torch.save(fairseq_checkpoint(model.state_dict(), image_folder_tree), tmp_path / "init.pt")
    from_checkpoint, _ = knn_cli(image_folder_tree, "--path", tmp_path / "init.pt", "--k", "5", "20")
    assert [top1 for _, top1, _ in from_checkpoint] == [top1 for _, top1, _ in random_init]
    assert from_checkpoint[0][2] == "init.pt"

    pixels, out = knn_cli(image_folder_tree, "--raw-pixels", "--img-size", "16")
    assert pixels == [("20", "100.00", "raw pixels 16x16")], out.stdout + out.stderr[-2000:]


@pytest.mark.slow
def test_cli_refuses_a_missing_arch_and_names_a_bad_checkpoint(image_folder_tree, tmp_path):  # noqa: F811
    out = run_cli("python", "-m", "resmlp_mt.cli.knn", image_folder_tree, "--random-init", check=False,
                  env={"PYTHONPATH": REPO})
    assert out.returncode == 2 and "--random-init needs --arch" in out.stderr
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    out = run_cli("python", "-m", "resmlp_mt.cli.knn", image_folder_tree, "--path", tmp_path / "notes.txt",
                  check=False, env={"PYTHONPATH": REPO})
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}/notes.txt")
