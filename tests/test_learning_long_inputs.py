"""Relative token mixing: trained on short sentences, it translates inputs 10x longer."""
import random
import re

import pytest

from conftest import WORDS, preprocess
from helpers import USER_DIR, run_cli


def cipher(word: str) -> str:
    """A fixed word-for-word substitution: the target is the source, each word replaced."""
    return WORDS[(WORDS.index(word) * 7 + 3) % len(WORDS)]


def write_cipher_task(directory, splits, seed=1):
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, (n, shortest, longest) in splits.items():
        sources = [[rng.choice(WORDS) for _ in range(rng.randint(shortest, longest))] for _ in range(n)]
        (directory / f"{split}.src").write_text("".join(" ".join(s) + "\n" for s in sources))
        (directory / f"{split}.tgt").write_text("".join(" ".join(map(cipher, s)) + "\n" for s in sources))


@pytest.mark.slow
def test_relative_model_trained_on_short_sentences_translates_inputs_ten_times_longer(tmp_path):
    """Training sentences have 3 to 12 words, test inputs 60 to 120: an absolute matrix sized
    for the training data could not even read them. The relative model translates every one,
    its output lengths follow the inputs', and it gets many more words right than a guess
    (1 in 40). It does not translate them as well as short ones: with 40 words, a word's
    neighbours no longer tell its position apart in a long sentence, and cross-attention
    has nothing else to go by."""
    write_cipher_task(tmp_path / "raw", {"train": (10000, 3, 12), "valid": (100, 3, 12), "test": (40, 60, 120)})
    data = preprocess(tmp_path / "raw", tmp_path / "bin")
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run_cli("fairseq-train", data, "--user-dir", USER_DIR, "--arch", "resmlp_small", "--token-mixing", "relative",
            "--mixing-window", "4", "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
            "--encoder-ffn-embed-dim", "256", "--decoder-attention-heads", "4", "--dropout", "0",
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "3e-3", "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", "100", "--max-tokens", "2000", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-update", "600", "--cpu", "--seed", "1", "--num-workers", "0",
            "--save-dir", tmp_path / "ckpt", "--no-epoch-checkpoints", "--log-format", "simple", env=threads)
    gen = run_cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", tmp_path / "ckpt/checkpoint_last.pt",
                  "--beam", "4", "--batch-size", "16", "--max-len-a", "1.2", "--max-len-b", "10", "--scoring",
                  "sacrebleu", "--gen-subset", "test", "--cpu", env=threads)
    sources = {int(i): s.split() for i, s in re.findall(r"^S-(\d+)\t(.*)$", gen.stdout, re.M)}
    hypotheses = {int(i): h.split() for i, h in re.findall(r"^H-(\d+)\t\S+\t(.*)$", gen.stdout, re.M)}
    assert sorted(hypotheses) == list(range(40)) and min(len(s) for s in sources.values()) >= 60
    # not cut short at a training length, nor running away: lengths follow the sources
    ratio = sum(map(len, hypotheses.values())) / sum(map(len, sources.values()))
    unigram = float(re.search(r"BLEU = [\d.]+ ([\d.]+)/", gen.stdout).group(1))
    print(f"10x longer inputs: length ratio {ratio:.2f}, unigram precision {unigram:.1f}% (chance 2.5%)")
    assert 0.7 <= ratio <= 1.3 and max(map(len, hypotheses.values())) > 2 * 12
    assert unigram >= 10.0
