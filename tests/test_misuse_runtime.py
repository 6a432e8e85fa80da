"""Misuse that gave a wrong number or a raw traceback, found by using the tools as a new user.

Each case now works or ends with one ``error:`` line that names the file, flag or limit:
left-padded targets (``--left-pad-target``), two runs sharing one ``--save-dir``, an
over-long line in ``fairseq-interactive``, ``--fp16``/``--bf16`` with ``--cpu``, an image
checkpoint given to the translation commands, and resuming with another dictionary.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

from helpers import BIN, USER_DIR, build_translation_model, run_cli
from resmlp_mt import fairseq_compat
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)

# A 1+1-layer, d=32 model whose token mixing holds 16 positions (the tiny data's longest
# sentence has 10 tokens with EOS).
TINY = ["--arch", "resmlp_small", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
        "--max-source-positions", "16", "--max-target-positions", "16"]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_args(data, save_dir, max_update, *extra):
    return [str(data), "--user-dir", USER_DIR, *TINY, "--optimizer", "adam", "--lr", "1e-2",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--max-tokens", "400", "--max-update", str(max_update), "--cpu", "--seed", "3",
            "--save-dir", str(save_dir), "--log-format", "simple", "--no-epoch-checkpoints",
            "--num-workers", "0", *map(str, extra)]


def last_line(text):
    """The last non-empty line: what a user reads first."""
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tiny_data_bin, tmp_path_factory):
    """A tiny model trained until its loss depends on what the decoder sees (about 15 s)."""
    save = tmp_path_factory.mktemp("trained")
    run_cli("fairseq-train", *train_args(tiny_data_bin, save, 150))
    return save / "checkpoint_last.pt"


# ---------------------------------------------------------------------------------------
# --left-pad-target: causal token mixing needs each sentence to start in column 0


def test_left_padded_decoder_inputs_give_the_outputs_of_unpadded_ones():
    """Each sentence alone (no padding) is the reference; in a batch, left-padded and
    right-padded decoder inputs must give its outputs in their own columns."""
    torch.manual_seed(0)
    model = build_translation_model(encoder_layers=1, decoder_layers=1, encoder_embed_dim=16,
                                    encoder_ffn_embed_dim=32, decoder_attention_heads=2, max_source_positions=12,
                                    max_target_positions=12, token_mixing_init="mean")
    pad, eos = model.decoder.dictionary.pad(), model.decoder.dictionary.eos()
    lengths = [7, 3, 5]
    g = torch.Generator().manual_seed(1)
    prefixes = [torch.cat([torch.tensor([eos]), torch.randint(4, 40, (n - 1,), generator=g)]) for n in lengths]
    src = torch.randint(4, 40, (3, 6), generator=g)
    width = max(lengths)
    right = torch.full((3, width), pad)
    left = torch.full((3, width), pad)
    for i, p in enumerate(prefixes):
        right[i, : len(p)] = p
        left[i, width - len(p):] = p
    with torch.no_grad():
        alone = [model(src[i:i + 1], torch.tensor([6]), p[None])[0][0] for i, p in enumerate(prefixes)]
        out_right = model(src, torch.full((3,), 6), right)[0]
        out_left = model(src, torch.full((3,), 6), left)[0]
        mixed = torch.stack([right[0], left[1], right[2]])  # a left-padded row among right-padded ones
        out_mixed = model(src, torch.full((3,), 6), mixed)[0]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out_right[i, :n], alone[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_left[i, width - n:], alone[i], rtol=1e-5, atol=1e-5)
        columns = slice(width - n, None) if i == 1 else slice(None, n)
        torch.testing.assert_close(out_mixed[i, columns], alone[i], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_validation_loss_is_the_same_with_left_padded_targets(trained, tiny_data_bin):
    """fairseq-validate --left-pad-target on batches of 8 against --batch-size 1, where no
    sentence is padded: the loss of the same 21 sentences."""

    def loss(*extra):
        out = run_cli("fairseq-validate", tiny_data_bin, "--user-dir", USER_DIR, "--task", "translation",
                      "--path", trained, "--criterion", "label_smoothed_cross_entropy", "--label-smoothing",
                      "0.1", "--cpu", *extra)
        (m,) = re.findall(r"valid on 'valid' subset \| loss ([\d.]+) \| nll_loss ([\d.]+)", out.stdout + out.stderr)
        return m

    assert loss("--left-pad-target", "--batch-size", "8") == loss("--batch-size", "1")


# ---------------------------------------------------------------------------------------
# One run per --save-dir; temporary files of their own


def test_checkpoint_writes_leave_other_writers_temporary_files_alone(tmp_path):
    """fairseq saved NAME through NAME.tmp and the plugin copied through DST.tmp: a second
    writer of the same name truncated the first one's file and renamed it away."""
    theirs = b"another writer's checkpoint, half-way"
    for name in ("checkpoint_1_5.pt.tmp", "checkpoint_last.pt.tmp"):
        (tmp_path / name).write_bytes(theirs)
    saved, last = tmp_path / "checkpoint_1_5.pt", tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save({"model": {"w": torch.ones(2)}}, str(saved))
    checkpoint_utils.PathManager.copy(str(saved), str(last), overwrite=True)
    assert torch.equal(torch.load(last, weights_only=False)["model"]["w"], torch.ones(2))
    for name in ("checkpoint_1_5.pt.tmp", "checkpoint_last.pt.tmp"):
        assert (tmp_path / name).read_bytes() == theirs
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1_5.pt", "checkpoint_1_5.pt.tmp", "checkpoint_last.pt",
                                            "checkpoint_last.pt.tmp"]


@pytest.mark.slow
def test_a_second_run_on_a_save_dir_is_refused_and_a_killed_run_is_not_in_the_way(tiny_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    lock = save / fairseq_compat.LOCK_NAME
    host = socket.gethostname()
    env = {**os.environ, **ENV}
    first = subprocess.Popen([os.path.join(BIN, "fairseq-train"), *train_args(tiny_data_bin, save, 10 ** 6)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (lock.exists() and lock.read_text() == f"PID {first.pid} on {host}\n"):
            assert first.poll() is None and time.time() < deadline, "the first run did not take the lock"
            time.sleep(0.1)
        second = run_cli("fairseq-train", *train_args(tiny_data_bin, save, 5), check=False)
        assert first.poll() is None  # still training: the second run was refused while it ran
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up, as a pre-empted job
        first.wait()
    assert second.returncode != 0
    assert last_line(second.stderr) == (
        f"error: --save-dir {save} is in use by another training run (PID {first.pid} on {host}; it holds {lock}): "
        f"two runs in one directory overwrite each other's checkpoints. Wait for that run to end, or give this "
        f"one another --save-dir"), second.stderr[-3000:]

    # The killed run's lock file is still there, with its PID: a restart proceeds.
    assert lock.read_text() == f"PID {first.pid} on {host}\n"
    restart = subprocess.Popen([os.path.join(BIN, "fairseq-train"), *train_args(tiny_data_bin, save, 5)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, _ = restart.communicate(timeout=600)
    assert restart.returncode == 0, log[-3000:]
    assert "done training" in log
    assert lock.read_text() == f"PID {restart.pid} on {host}\n"
    assert not list(save.glob("*.tmp"))


# ---------------------------------------------------------------------------------------
# fairseq-interactive: an over-long line is reported, the others are translated


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--skip-invalid-size-inputs-valid-test"], ["--buffer-size", "2"]])
def test_interactive_reports_a_too_long_line_and_translates_the_next_ones(trained, tiny_data_bin, tmp_path, extra):
    lines = ["w1 w2 w3", " ".join(["w5"] * 20), "w7 w8", "w9 w10 w11"]  # line 2: 21 tokens with EOS > 16
    proc = subprocess.run([os.path.join(BIN, "fairseq-interactive"), str(tiny_data_bin), "--user-dir", USER_DIR,
                           "--path", str(trained), "--beam", "2", "--cpu", *extra],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, env={**os.environ, **ENV},
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.findall(r"^S-(\d+)\t", proc.stdout, re.M) == ["0", "2", "3"]
    assert re.findall(r"^H-(\d+)\t", proc.stdout, re.M) == ["0", "2", "3"]
    assert ("input line 2 (S-1) has 21 tokens with EOS, more than the model's limit of 16 (--max-source-positions): "
            "it is not translated; going on with the next lines") in out


@pytest.mark.slow
def test_interactive_translates_a_long_line_with_relative_token_mixing(tiny_data_bin, tmp_path):
    """Relative token mixing has no length limit of its own: the line the absolute model
    above must refuse (21 tokens, more than any training sentence) is translated."""
    save = tmp_path / "relative"
    run_cli("fairseq-train", *train_args(tiny_data_bin, save, 60, "--token-mixing", "relative", "--mixing-window", "2",
                                         "--max-source-positions", "1024", "--max-target-positions", "1024"))
    lines = ["w1 w2 w3", " ".join(["w5"] * 20), "w7 w8"]
    proc = subprocess.run([os.path.join(BIN, "fairseq-interactive"), str(tiny_data_bin), "--user-dir", USER_DIR,
                           "--path", str(save / "checkpoint_last.pt"), "--beam", "2", "--cpu"],
                          input="\n".join(lines) + "\n", capture_output=True, text=True, env={**os.environ, **ENV},
                          timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.findall(r"^H-(\d+)\t", proc.stdout, re.M) == ["0", "1", "2"]
    assert "is not translated" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------
# One error: line instead of a traceback


@pytest.mark.slow
@pytest.mark.parametrize("flag, message, env", [
    ("--fp16", "error: --fp16 needs a CUDA GPU and this run has none (--cpu): drop --fp16 to train in fp32 on "
               "the CPU", None),
    # with the cpu_bf16 shim, --bf16 trains under autocast (test_cpu_bf16.py); without, stock fairseq needs torch_xla
    ("--bf16", "error: --bf16 is not supported on the CPU by fairseq's trainer yet (--cpu): drop --bf16 to train "
               "in fp32 on the CPU", {"RESMLP_NO_SHIM": "cpu_bf16"}),
], ids=["fp16", "bf16-without-cpu_bf16"])
def test_half_precision_on_the_cpu_is_refused_in_one_line(tiny_data_bin, tmp_path, flag, message, env):
    proc = run_cli("fairseq-train", *train_args(tiny_data_bin, tmp_path / "ckpt", 2, flag), check=False, env=env)
    assert proc.returncode != 0
    assert last_line(proc.stderr) == message, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def image_checkpoint(image_folder_tree, tmp_path_factory):  # noqa: F811
    save = tmp_path_factory.mktemp("image")
    run_cli("fairseq-train", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
            "--arch", "resmlp_tiny_28", "--img-size", "16", "--embed-dim", "16", "--depth", "1",
            "--criterion", "image_cross_entropy", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "1",
            "--batch-size", "4", "--cpu", "--save-dir", save, "--num-workers", "0")
    return save / "checkpoint_last.pt"


@pytest.mark.slow
@pytest.mark.parametrize("tool", ["fairseq-generate", "fairseq-interactive", "fairseq-validate", "fairseq-train"])
def test_an_image_checkpoint_in_a_translation_command_says_which_command_to_use(image_checkpoint, tiny_data_bin,
                                                                                tmp_path, tool):
    args = {
        "fairseq-generate": [tiny_data_bin, "--user-dir", USER_DIR, "--path", image_checkpoint, "--cpu"],
        "fairseq-interactive": [tiny_data_bin, "--user-dir", USER_DIR, "--path", image_checkpoint, "--cpu"],
        "fairseq-validate": [tiny_data_bin, "--user-dir", USER_DIR, "--task", "translation", "--path",
                             image_checkpoint, "--max-tokens", "400", "--cpu"],
        "fairseq-train": train_args(tiny_data_bin, tmp_path / "ckpt", 2, "--restore-file", image_checkpoint),
    }[tool]
    proc = subprocess.run([os.path.join(BIN, tool), *map(str, args)], input="", capture_output=True, text=True,
                          env={**os.environ, **ENV}, timeout=600)
    assert proc.returncode != 0
    assert last_line(proc.stderr) == (
        f"error: {image_checkpoint} was trained with --task image_classification (--arch resmlp_tiny_28), not "
        f"translation: evaluate it with fairseq-validate IMAGE_DATA --task image_classification --path "
        f"{image_checkpoint}; translation needs a translation checkpoint"), proc.stderr[-3000:]


@pytest.mark.slow
def test_resuming_with_another_dictionary_ends_with_its_size(trained, tiny_data_bin, tmp_path):
    """The cause was printed, then fairseq's "please ensure that the architectures match"
    below it: the line a user reads first named no cause."""
    other = tmp_path / "other_bin"
    shutil.copytree(tiny_data_bin, other)
    for side in ("src", "tgt"):
        with open(other / f"dict.{side}.txt", "a") as f:
            f.write("".join(f"extra{i} 1\n" for i in range(8)))
    trained_size = len(Dictionary.load(os.path.join(tiny_data_bin, "dict.src.txt")))
    now = len(Dictionary.load(str(other / "dict.src.txt")))
    save = tmp_path / "ckpt"
    save.mkdir()
    shutil.copy(trained, save / "checkpoint_last.pt")
    proc = run_cli("fairseq-train", *train_args(other, save, 200), check=False)
    assert proc.returncode != 0
    assert last_line(proc.stderr) == (
        f"error: cannot load {save / 'checkpoint_last.pt'}: the checkpoint's source dictionary has {trained_size} "
        f"entries but {other / 'dict.src.txt'} has {now}: use the data-bin (or the dict.*.txt files) the model was "
        f"trained with"), proc.stderr[-3000:]
