"""Training runs of the tiny translation model through fairseq's own tools, for the tests.

The settings (``TINY``, ``UPDATES``, ``train_args``), the processes (``start``, ``finish``,
``wait_for``, fairseq-train directly or through the test-only wrapper ``TRAIN_HOOKS``) and
what the tests read back from them (checkpoints, logged losses, the last error). The
shared runs built from these (``reference``, ``bleu_run``, ...) are fixtures in conftest.py.
"""
import os
import re
import subprocess
import sys
import time

import torch

from helpers import BIN, USER_DIR

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts")
# fairseq-train / fairseq-generate with checkpoint writes that stall or slow down, and
# --eval-bleu batches recorded, on request (see the script's docstring)
TRAIN_HOOKS = os.path.join(SCRIPTS, "train_hooks.py")
PREFETCH_AT_EXIT = os.path.join(SCRIPTS, "prefetch_at_exit.py")

# As in test_cli_translation.py: a 2+2-layer, d=32 model whose token mixing holds 16 positions.
TINY = ["--arch", "resmlp_small", "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
        "--max-source-positions", "16", "--max-target-positions", "16"]
UPDATES = 16  # two epochs of the tiny training set (8 batches each)
SAVE_EVERY = 3
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_args(data, save_dir, max_update=UPDATES, *extra):
    """resmlp_small's dropout (0.2) stays on: resuming must restore the random state too.

    --num-workers 0: no data-loader worker process to be orphaned by a SIGKILL."""
    return [str(data), "--user-dir", USER_DIR, *TINY, "--optimizer", "adam", "--lr", "1e-3",
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--max-tokens", "400", "--max-update", str(max_update), "--cpu", "--seed", "3",
            "--save-dir", str(save_dir), "--log-format", "simple", "--log-interval", "1",
            "--no-epoch-checkpoints", "--num-workers", "0", *map(str, extra)]


def start(cmd, log, env=None):
    """Start a process with its output in LOG (a file, so a killed process leaves its log)."""
    out = open(log, "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **ENV, **(env or {})})
    out.close()
    return proc


def fairseq_train(args):
    return [os.path.join(BIN, "fairseq-train"), *map(str, args)]


def hooked_train(hooks, args):
    return [sys.executable, hooks, "train", *map(str, args)]


def wait_for(condition, proc, log, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"gave up waiting (exit {proc.poll()}):\n{read(log)[-4000:]}")
        time.sleep(0.05)


def read(path):
    with open(path) as f:
        return f.read()


def finish(proc, log, timeout=300):
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, read(log)[-4000:]
    return read(log)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own test checkpoints


def num_updates(path):
    return load(path)["optimizer_history"][-1]["num_updates"]


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def train_losses(log):
    """{update: (loss, nll_loss, gnorm)} from the train_inner lines, as logged."""
    lines = re.findall(r"train_inner \| .*?loss=([\d.]+), nll_loss=([\d.]+),"
                       r".*?num_updates=(\d+),.*?gnorm=([\d.]+)", log)
    return {int(u): (loss, nll, gnorm) for loss, nll, u, gnorm in lines}


def loaded_checkpoint(log):
    m = re.findall(r"Loaded checkpoint (\S+) \(epoch (\d+) @ (\d+) updates\)", log)
    return (m[-1][0], int(m[-1][2])) if m else None


def last_error(log):
    """The final 'Type: message' line of the last traceback in LOG."""
    tail = log[log.rfind("Traceback (most recent call last)"):]
    errors = [line for line in tail.splitlines() if re.match(r"^[\w.]+(Error|Exception|Iteration)\b", line)]
    return errors[-1] if errors else ""

