"""Learning check: gradients reach every part of the model (not a speed test)."""
import re

import pytest

from conftest import preprocess, write_reversal_task
from helpers import USER_DIR, run_cli


@pytest.mark.slow
def test_small_arch_learns_to_reverse_sentences_in_400_updates(tmp_path):
    """Reversal needs positions (token mixing), cross-attention and the MLPs to work together.
    Stopped by update count (measured: BLEU 92.5 after 300 updates, 93.9 after 400, 94.0
    after 500, 93.2 after 600, 95.2 after 800, 96.1 after 1,000; the inverse-square-root
    schedule does not depend on --max-update, so these are points of one run), so that a
    slower machine takes longer instead of failing."""
    write_reversal_task(tmp_path / "raw", {"train": 10000, "valid": 100, "test": 203}, seed=1, min_len=3, max_len=12)
    data = preprocess(tmp_path / "raw", tmp_path / "bin")
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # make test runs two workers
    run_cli("fairseq-train", data, "--user-dir", USER_DIR, "--arch", "resmlp_small",
            "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
            "--encoder-ffn-embed-dim", "256", "--decoder-attention-heads", "4",
            "--max-source-positions", "16", "--max-target-positions", "16", "--dropout", "0",
            "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "3e-3",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--max-tokens", "2000",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--max-update", "400", "--cpu", "--seed", "1", "--save-dir", tmp_path / "ckpt",
            "--no-epoch-checkpoints", "--log-format", "simple", env=threads)
    gen = run_cli("fairseq-generate", data, "--user-dir", USER_DIR, "--path", tmp_path / "ckpt/checkpoint_last.pt",
                  "--beam", "4", "--batch-size", "64", "--scoring", "sacrebleu", "--gen-subset", "test", "--cpu",
                  env=threads)
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 203
    bleu = float(re.search(r"BLEU = ([\d.]+)", gen.stdout).group(1))
    print(f"reversal BLEU {bleu:.2f}")
    assert bleu >= 90, gen.stdout[-1500:]
