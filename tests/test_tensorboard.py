"""fairseq-train --tensorboard-logdir writes events that TensorBoard's own reader reads back."""
import os
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from helpers import USER_DIR, run_cli
from test_cli_translation import train_args

# "valid on 'valid' subset | loss 6.302 | nll_loss 6.311 | ppl 79.41 | bleu 0.16 | ... | num_updates 3"
VALID = re.compile(r"valid on 'valid' subset \| loss ([\d.]+) \| nll_loss [\d.]+ \| ppl [\d.]+ \| bleu ([\d.]+) "
                   r".*\| num_updates (\d+)")


def scalars(directory):
    """{tag: [(step, value), ...]} of one TensorBoard log directory, read by TensorBoard."""
    acc = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def translation_run(tiny_data_bin, tmp_path_factory):
    """6 updates, validated (with BLEU) after updates 3 and 6; returns (run directory, log)."""
    run = tmp_path_factory.mktemp("translation-run")
    proc = run_cli("fairseq-train", *train_args(tiny_data_bin, run / "checkpoints", 6, "--no-save",
                                                "--validate-interval-updates", "3", "--tensorboard-logdir",
                                                run / "tensorboard", "--eval-bleu", "--eval-bleu-args",
                                                '{"beam": 1}'))
    return run, proc.stdout + proc.stderr


@pytest.mark.slow
def test_translation_run_logs_train_and_valid_scalars(translation_run):
    run, log = translation_run
    assert "tensorboard not found" not in log
    assert "Please install tensorboardX" not in log  # fairseq.tasks.text_to_speech's import-time note
    assert sorted(os.listdir(run / "tensorboard")) == ["train", "train_inner", "valid"]

    train_inner = scalars(run / "tensorboard" / "train_inner")
    assert [step for step, _ in train_inner["loss"]] == [1, 2, 3, 4, 5, 6]  # --log-interval 1
    assert [step for step, _ in scalars(run / "tensorboard" / "train")["loss"]] == [6]

    valid = scalars(run / "tensorboard" / "valid")
    printed = [(int(u), float(loss), float(bleu)) for loss, bleu, u in VALID.findall(log)]
    assert [u for u, _, _ in printed] == [3, 6], log[-3000:]
    assert [step for step, _ in valid["loss"]] == [3, 6] and [step for step, _ in valid["bleu"]] == [3, 6]
    for (_, loss, bleu), (_, tb_loss), (_, tb_bleu) in zip(printed, valid["loss"], valid["bleu"]):
        assert tb_loss == pytest.approx(loss, abs=1e-5) and tb_bleu == pytest.approx(bleu, abs=1e-5)
