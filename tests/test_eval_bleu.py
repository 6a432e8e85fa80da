"""--eval-bleu validates every sentence: the validation batches of a training run with
--eval-bleu (recorded by tests/scripts/train_hooks.py) cover each of the 21 validation
sentences once per validation, the last, smaller batch included.
"""
import re

import pytest


@pytest.mark.slow
def test_eval_bleu_translates_every_validation_sentence(bleu_run):
    validations = len(re.findall(r"\| valid on 'valid' subset \|.* bleu [\d.]+", bleu_run.log))
    assert validations >= 2, bleu_run.log[-3000:]
    batches = [list(map(int, line.split())) for line in bleu_run.counts.read_text().splitlines()]
    assert sorted(i for batch in batches for i in batch) == sorted(list(range(21)) * validations)
    assert sorted(map(len, batches)) == sorted([5, 8, 8] * validations)
    assert re.search(r"best_bleu [\d.]+", bleu_run.log)
    assert (bleu_run.save / "checkpoint_best.pt").exists()
