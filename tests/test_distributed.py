"""Data-parallel ResMLP training on CPU through fairseq's own fairseq-train: two processes, gloo, loopback.

fairseq's default --ddp-backend (pytorch_ddp) hands torch's DistributedDataParallel
device_ids=[0], which torch refuses for CPU modules; --ddp-backend legacy_ddp (fairseq's
own all-reduce of the gradients) needs no device. No shim is involved.

fairseq shards *batches* across ranks (rank r takes batches r, r+2, ... of the epoch's
shuffled batch list) and sums gradients over ranks before dividing by the total sample
size. A single process with --update-freq 2 takes the same consecutive pairs of batches
per update and sums their gradients the same way, so with dropout off the two runs
compute the same updates.
"""
import os
import socket
import subprocess

import pytest
import torch

from helpers import BIN, USER_DIR

TINY = ["--arch", "resmlp_small", "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64", "--decoder-attention-heads", "2",
        "--max-source-positions", "16", "--max-target-positions", "16"]
TOLERANCE = 1e-6  # measured: 0.0 (gloo sums two ranks in the order update-freq accumulates them)


def args(data, save_dir, max_update, *extra):
    return [os.path.join(BIN, "fairseq-train"), str(data), "--user-dir", USER_DIR, *TINY, "--dropout", "0",
            "--optimizer", "adam", "--lr", "1e-3", "--criterion", "label_smoothed_cross_entropy",
            "--label-smoothing", "0.1", "--max-tokens", "400", "--max-update", str(max_update), "--cpu",
            "--seed", "3", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--save-interval-updates", "3", "--log-format", "simple", "--log-interval", "1", "--num-workers", "0",
            *map(str, extra)]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd, log):
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})


def wait_all(procs, logs, timeout=300):
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:  # a rank waiting forever for a dead peer
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, f"{log}:\n{open(log).read()[-4000:]}"
    return [open(log).read() for log in logs]


def data_parallel(data, save_dir, max_update, logdir, tag, single=None, make_args=None):
    """Two ranks of fairseq-train (and, optionally, one more process alongside).

    ``make_args(save_dir, max_update, *extra)`` gives a rank's command (default: ``args``
    on DATA, the translation run)."""
    make_args = make_args or (lambda *a: args(data, *a))
    port = free_port()
    dist = ["--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo",
            "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--distributed-world-size", "2",
            "--distributed-no-spawn"]
    logs = [logdir / f"{tag}_rank{r}.log" for r in (0, 1)]
    procs = [launch(make_args(save_dir, max_update, *dist, "--distributed-rank", r), logs[r]) for r in (0, 1)]
    if single is not None:
        logs.append(logdir / f"{tag}_single.log")
        procs.append(launch(single, logs[-1]))
    return wait_all(procs, logs)


def model(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]  # our own test files


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
def test_two_cpu_ranks_match_one_process_with_update_freq_2_and_resume(tiny_data_bin, tmp_path):
    """3 updates on 2 ranks, then a restart of both ranks to 6 (rank 0 reads checkpoint_last.pt
    and broadcasts it); each checkpoint equals the single process's at the same update."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    logs = data_parallel(tiny_data_bin, ddp, 3, tmp_path, "first",
                         single=args(tiny_data_bin, single, 6, "--update-freq", "2"))
    for rank in (0, 1):
        assert f"distributed init (rank {rank}): tcp://127.0.0.1:" in logs[rank]
    assert "training on 2 devices" in logs[0]
    first = model(ddp / "checkpoint_last.pt")
    diff3 = max_abs_diff(first, model(single / "checkpoint_1_3.pt"))

    logs = data_parallel(tiny_data_bin, ddp, 6, tmp_path, "resumed")
    assert f"Loaded checkpoint {ddp / 'checkpoint_last.pt'} (epoch 1 @ 3 updates)" in logs[0], logs[0][-3000:]
    assert "num_updates: 6 >= max_update: 6" in logs[0]
    diff6 = max_abs_diff(model(ddp / "checkpoint_last.pt"), model(single / "checkpoint_last.pt"))
    print(f"max |2 ranks - 1 process, update-freq 2|: {diff3:.3g} after 3 updates, {diff6:.3g} after 6")
    assert diff3 <= TOLERANCE and diff6 <= TOLERANCE
    assert max_abs_diff(first, model(ddp / "checkpoint_last.pt")) > 1e-4  # it did train on
