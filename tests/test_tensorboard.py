"""fairseq-train --tensorboard-logdir writes events that TensorBoard's own reader reads back,
and resmlp-plot-curves draws them."""
import os
import re
import subprocess

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from helpers import BIN, run_cli
from resmlp_mt.cli import plot_curves
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


# What resmlp-score prints (and train_eval.sh keeps as bleu.txt): examples, then the score.
BLEU_TXT = """REF  Zwei Hunde spielen .
HYP  Zwei Hunde spielen im Schnee .

sentences scored: 21 of 21
BLEU = 35.32 66.7/41.2/27.3/18.8 (BP = 1.000 ratio = 1.012 hyp_len = 254 ref_len = 251)
signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0
"""


def write_run(run, start, valid_loss, bleu_txt=None):
    """A run as fairseq logs it, with chosen event times: train_inner from ``start`` on, then
    valid loss at updates 100, 200, ... every 90 s from 45 s after ``start``."""
    with SummaryWriter(str(run / "tensorboard" / "train_inner")) as w:
        for i, step in enumerate((50, 100, 150)):
            w.add_scalar("loss", 7.0 - i, step, walltime=start + 30 * i)
    with SummaryWriter(str(run / "tensorboard" / "valid")) as w:
        for i, loss in enumerate(valid_loss):
            w.add_scalar("loss", loss, 100 * (i + 1), walltime=start + 45 + 90 * i)
    if bleu_txt:
        (run / "bleu.txt").write_text(bleu_txt)
    return run


def png_size(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
        return image.size


def test_series_are_the_logged_scalars_at_their_event_times(tmp_path):
    run = write_run(tmp_path / "synthetic", 1.7e9, [5.5, 4.25, 3.75], BLEU_TXT)
    series = plot_curves.read_series(str(run))
    assert series.steps == [100, 200, 300] and series.values == [5.5, 4.25, 3.75]
    assert series.minutes == pytest.approx([0.75, 2.25, 3.75])  # from the first train_inner event
    assert series.bleu == 35.32 and series.label == "synthetic"
    assert plot_curves.read_series(str(run), subset="train_inner").values == [7.0, 6.0, 5.0]


def test_an_earlier_runs_logs_moved_aside_are_not_read(tmp_path):
    run = write_run(tmp_path / "resmlp_small", 1.7e9, [5.5, 4.25, 3.75])
    (run / "tensorboard").rename(run / "tensorboard.20261124-101500")  # as train_eval.sh does
    write_run(run, 1.8e9, [6.0, 5.0])
    series = plot_curves.read_series(str(run))
    assert series.values == [6.0, 5.0] and series.minutes == pytest.approx([0.75, 2.25])


@pytest.mark.slow
def test_plot_curves_command(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "resmlp_small", 1.7e9, [5.5, 4.25, 3.75], BLEU_TXT)
    write_run(runs / "transformer", 1.8e9, [6.0, 5.0])  # no bleu.txt: no BLEU in the legend
    (runs / "data").mkdir()  # what "$WORK"/*/ also matches: no logs, skipped
    out = tmp_path / "comparison.png"
    tool = os.path.join(BIN, "resmlp-plot-curves")
    proc = subprocess.run([tool, *sorted(map(str, runs.iterdir())), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{runs / 'data'}: no TensorBoard event files, skipped" in proc.stderr
    assert "valid loss of 2 run(s)" in proc.stdout
    assert png_size(out) == (1210, 484)



def test_plot_curves_names_what_is_missing(tmp_path, capsys):
    run = write_run(tmp_path / "resmlp_small", 1.7e9, [5.5])
    out = str(tmp_path / "x.png")
    assert plot_curves.main([str(run), "--metric", "bleu", "--output", out]) == 2
    assert "no scalar 'bleu' (--metric); it has loss" in capsys.readouterr().err
    assert plot_curves.main([str(run), "--subset", "test", "--output", out]) == 2
    assert "no TensorBoard logs for the subset 'test' (--subset); it has train_inner, valid" in capsys.readouterr().err
    assert plot_curves.main([str(tmp_path / "nothing"), "--output", out]) == 2
    assert "nothing: no such directory" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_several_runs_in_one_directory_are_refused(tmp_path):
    write_run(tmp_path / "runs" / "a", 1.7e9, [5.0])
    write_run(tmp_path / "runs" / "b", 1.7e9, [5.0])
    with pytest.raises(plot_curves.CurveError, match="holds the 'valid' logs of several runs"):
        plot_curves.read_series(str(tmp_path / "runs"))


@pytest.mark.slow
def test_plot_of_a_real_run_and_a_synthetic_one(translation_run, tmp_path):
    real, _ = translation_run
    synthetic = write_run(tmp_path / "synthetic", 1.7e9, [5.5, 4.25, 3.75], BLEU_TXT)
    series = plot_curves.read_series(str(real))

    # the same scalars, read independently: every subset's events, the first of them is minute 0
    logged = {name: EventAccumulator(str(real / "tensorboard" / name), size_guidance={SCALARS: 0})
              for name in ("train_inner", "train", "valid")}
    for acc in logged.values():
        acc.Reload()
    start = min(e.wall_time for acc in logged.values() for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag))
    valid = logged["valid"].Scalars("loss")
    assert series.steps == [3, 6] and series.values == [e.value for e in valid]
    assert series.minutes == [(e.wall_time - start) / 60 for e in valid]
    assert 0 < series.minutes[0] < series.minutes[1]  # validation comes after the first updates
    assert series.bleu is None  # fairseq-train alone writes no bleu.txt

    out = tmp_path / "comparison.png"
    fig = plot_curves.plot([series, plot_curves.read_series(str(synthetic))], str(out))
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [real.name, "synthetic (BLEU 35.32)"]
    assert [list(line.get_xdata()) for line in fig.axes[1].get_lines()] == [[3, 6], [100, 200, 300]]
    assert png_size(out) == (1210, 484)
