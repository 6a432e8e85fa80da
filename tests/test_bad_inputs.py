"""Bad inputs to ResMLP translation through fairseq's own tools: sentences longer than the
token-mixing matrices, a larger --max-source-positions on resume, another dictionary, NaN
losses and gradients, an unknown arch. Each ends in a warning or an error that says what
is wrong, not in a crash deep inside fairseq.
"""
import logging
import os
import re
import shutil
import sys

import pytest
import torch
from fairseq import options
from fairseq import trainer as fairseq_trainer
from fairseq.data import Dictionary
from fairseq.nan_detector import NanDetector

from helpers import USER_DIR, build_translation_model, run_cli
from training_runs import UPDATES, last_error, load, train_args


@pytest.mark.slow
def test_training_skips_too_long_sentences_with_a_warning(bleu_run):
    log = bleu_run.log
    assert re.search(r"WARNING \| fairseq.tasks.fairseq_task \| 3 samples have invalid sizes and will be skipped, "
                     r"max_positions=\(16, 16\), first few sample ids=\[\d+, \d+, \d+\]", log), log[-3000:]


def fairseq_generate(argv, monkeypatch, capsys, caplog):
    """fairseq-generate's own entry point, in this process (as the console script calls it).

    Returns what it printed (hypotheses) and logged."""
    from fairseq_cli import generate

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(sys, "argv", ["fairseq-generate", *map(str, argv)])
    generate.cli_main()
    return capsys.readouterr().out, caplog.text


@pytest.mark.slow
def test_generate_refuses_or_skips_too_long_sentences(long_data_bin, reference, monkeypatch, capsys, caplog):
    common = [long_data_bin, "--user-dir", USER_DIR, "--path", reference.last, "--gen-subset", "test",
              "--beam", "2", "--batch-size", "8", "--cpu"]
    # fairseq's own message; numpy 2 prints the sizes as np.int32(21)
    size = r"(np\.int32\()?21\)?"
    with pytest.raises(Exception, match=rf"Size of sample #1[12] is invalid \(=\({size}, {size}\)\) since "
                       r"max_positions=\(16, 16\), skip this example with --skip-invalid-size-inputs-valid-test"):
        fairseq_generate(common, monkeypatch, capsys, caplog)

    printed, logged = fairseq_generate([*common, "--skip-invalid-size-inputs-valid-test"], monkeypatch, capsys, caplog)
    assert "2 samples have invalid sizes and will be skipped, max_positions=(16, 16)" in logged
    assert len([line for line in printed.splitlines() if line.startswith("H-")]) == 11
    assert "Translated 11 sentences" in logged


@pytest.mark.slow
def test_resuming_with_larger_max_source_positions_names_both(reference, tiny_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    save.mkdir()
    shutil.copy(reference.last, save / "checkpoint_last.pt")
    proc = run_cli("fairseq-train", *train_args(tiny_data_bin, save, UPDATES + 2, "--max-source-positions", 32),
                   check=False)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]  # one line, not fairseq's "ensure the architectures match"
    assert last == (f"error: cannot load {save / 'checkpoint_last.pt'}: the checkpoint's token-mixing matrices "
                    f"hold 16 source positions but --max-source-positions is 32: the matrix size is fixed at "
                    f"training time, so pass --max-source-positions 16"), proc.stderr[-3000:]


@pytest.mark.slow
def test_generate_with_another_dictionary_names_both_sizes(reference, tiny_data_bin, tmp_path, monkeypatch,
                                                           capsys, caplog):
    other = tmp_path / "other_bin"
    shutil.copytree(tiny_data_bin, other)
    for side in ("src", "tgt"):
        with open(other / f"dict.{side}.txt", "a") as f:
            f.write("".join(f"extra{i} 1\n" for i in range(8)))  # 8 more keeps fairseq's padding to 8
    trained = len(Dictionary.load(os.path.join(tiny_data_bin, "dict.src.txt")))
    now = len(Dictionary.load(str(other / "dict.src.txt")))
    assert now != trained
    with pytest.raises(Exception) as err:
        fairseq_generate([other, "--user-dir", USER_DIR, "--path", reference.last, "--gen-subset", "test",
                          "--beam", "2", "--cpu"], monkeypatch, capsys, caplog)
    message = str(err.value)
    assert "dictionary" in message and str(trained) in message and str(now) in message, message


@pytest.mark.slow
def test_nan_gradients_stop_training_with_floating_point_error(tiny_data_bin, tmp_path):
    """fp32 on CPU: fairseq saves crash.pt, logs where the NaN appeared, raises FloatingPointError."""
    save = tmp_path / "ckpt"
    args = train_args(tiny_data_bin, save, UPDATES, "--save-interval-updates", 1)
    args[args.index("adam")] = "sgd"
    args[args.index("1e-3")] = "1e30"  # update 1 blows the weights up to ~1e28: update 2's loss is NaN
    proc = run_cli("fairseq-train", *args, check=False)
    assert proc.returncode != 0
    assert last_error(proc.stderr) == "FloatingPointError: gradients are Nan/Inf", proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "StopIteration" not in log  # fairseq's NanDetector on torch 2, without the plugin
    assert re.search(r"WARNING \| fairseq.nan_detector \| NaN detected in output of encoder\.\S+, shape", log)
    assert "Detected nan/inf grad norm, dumping norms" in log
    assert (save / "crash.pt").exists()
    # the last checkpoint is the one before the NaN, finite, so a restart with a sane lr can use it
    state = load(save / "checkpoint_last.pt")
    assert state["optimizer_history"][-1]["num_updates"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_detector_reports_instead_of_crashing(caplog):
    """Unit view: torch 2 + fairseq's NanDetector (non-full backward hooks) on an encoder that
    returns a dict of lists raises StopIteration; the plugin's detector reports the NaN."""
    model = build_translation_model(encoder_layers=1, decoder_layers=1, encoder_embed_dim=16,
                                    encoder_ffn_embed_dim=32, decoder_attention_heads=2,
                                    max_source_positions=8, max_target_positions=8).train()
    with torch.no_grad():
        model.encoder.layers[0].token_mixing.weight.fill_(float("nan"))
    src, prev = torch.randint(4, 40, (2, 5)), torch.randint(4, 40, (2, 4))

    def step():
        model.zero_grad()
        model(src, torch.full((2,), 5), prev)[0].sum().backward()

    with pytest.raises(StopIteration):
        with NanDetector(model):
            step()
    with fairseq_trainer.NanDetector(model):
        step()
    assert "NaN detected in output of encoder.layers.0.token_mixing" in caplog.text


def test_unknown_arch_lists_the_resmlp_archs(tiny_data_bin, capsys):
    parser = options.get_training_parser()
    with pytest.raises(SystemExit):
        options.parse_args_and_arch(parser, [str(tiny_data_bin), "--user-dir", USER_DIR, "--arch", "resmlp_tiny"])
    err = capsys.readouterr().err
    assert "argument --arch/-a: invalid choice: 'resmlp_tiny'" in err
    for arch in ("resmlp_wmt_en_de", "resmlp_wmt_en_de_12", "resmlp_wmt_en_fr", "resmlp_small"):
        assert f"'{arch}'" in err
