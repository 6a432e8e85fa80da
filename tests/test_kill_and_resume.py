"""Kills and exact resumption of ResMLP translation training, and corrupt checkpoints.

Real fairseq-train processes are SIGKILLed at random moments and half-way through a
checkpoint write (through tests/scripts/train_hooks.py, which stalls or slows the writes so
that a kill can land inside one), restarted unchanged, and must end where an uninterrupted
run ends; run-to-run determinism is the baseline. A truncated or corrupt checkpoint stops
a restart with a message that names the file.
"""
import io
import os
import random
import signal
import time

import pytest
import torch
from fairseq import checkpoint_utils, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.tasks import FairseqTask

from helpers import USER_DIR, run_cli
from resmlp_mt import fairseq_compat
from training_runs import (
    UPDATES,
    hooked_train,
    last_error,
    load,
    loaded_checkpoint,
    max_abs_diff,
    num_updates,
    read,
    start,
    train_args,
    train_losses,
    wait_for,
)


@pytest.mark.slow
def test_same_seed_gives_the_same_loss_curve_and_parameters(reference):
    a, b = (train_losses(log) for log in reference.logs)
    assert sorted(a) == list(range(1, UPDATES + 1)), reference.logs[0][-3000:]
    assert a == b
    last = [load(os.path.join(d, "checkpoint_last.pt"))["model"] for d in reference.dirs]
    assert max_abs_diff(*last) == 0.0


@pytest.mark.slow
def test_kills_mid_write_and_at_random_then_resume_exactly(tiny_data_bin, reference, hooks, tmp_path):
    """One training command, SIGKILLed four times and restarted unchanged each time.

    A checkpoint every update. Kill 1 lands half-way through torch.save of
    checkpoint_1_4.pt (written to a temporary file, then renamed); kill 2 half-way
    through copying checkpoint_2_10.pt to checkpoint_last.pt (stock fairseq truncates
    checkpoint_last.pt there; the plugin copies to NAME.PID-RANDOM.tmp and renames);
    kills 3 and 4 at random moments while every write is slowed to >= 0.15 s, so that
    writes are most of the run. After each kill every *.pt must load and the restart
    must resume from checkpoint_last.pt; the run that completes must end where the
    uninterrupted one does, and every update, first run or redone, logs the losses of
    the uninterrupted run. Resuming in epoch 2 (from kill 2 on) is exact only with the
    plugin's epoch-one batches (fairseq_compat, shim 6).
    """
    save = tmp_path / "ckpt"
    last = save / "checkpoint_last.pt"
    args = train_args(tiny_data_bin, save, UPDATES, "--save-interval-updates", 1)
    rng = random.Random(20211)
    ref_losses = train_losses(reference.logs[0])
    logs, kills = [], []

    def attempt(i, env, kill_when):
        before = num_updates(last) if last.exists() else 0
        log = tmp_path / f"attempt{i}.log"
        proc = start(hooked_train(hooks, args), log, env=env)
        kill_when(proc, log)
        in_progress = sorted(p.name for p in save.glob("*.tmp"))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        text = read(log)
        logs.append(text)
        assert loaded_checkpoint(text) == ((str(last), before) if before else None), text[-3000:]
        for path in save.glob("*.pt"):
            load(path)  # nothing fairseq would load is half-written
        kills.append((before, num_updates(last), in_progress, "done training" in text))

    def at_marker(proc, log):
        wait_for(marker.exists, proc, log)
        marker.unlink()

    marker = tmp_path / "stalled"
    stall = {"RESMLP_STALL_MARKER": str(marker)}
    attempt(0, {**stall, "RESMLP_STALL": "save:checkpoint_1_4.pt"}, at_marker)
    (half,) = save.glob("checkpoint_1_4.pt.*.tmp")  # the plugin's temporary files have unique names
    assert half.stat().st_size > 0 and not (save / "checkpoint_1_4.pt").exists()
    assert num_updates(last) == 3

    attempt(1, {**stall, "RESMLP_STALL": "copy:checkpoint_2_10.pt:checkpoint_last.pt"}, at_marker)
    (half,) = save.glob("checkpoint_last.pt.*.tmp")  # the restart removed the one of kill 1
    assert 0 < half.stat().st_size < (save / "checkpoint_2_10.pt").stat().st_size  # the kill hit the copy
    assert num_updates(last) == 9  # the previous checkpoint_last.pt, whole

    def at_random(proc, log):
        wait_for(lambda: "Start iterating over samples" in read(log), proc, log)
        time.sleep(rng.uniform(0.0, 1.5))

    for i in (2, 3):
        attempt(i, {"RESMLP_SLOW_WRITES": "0.15"}, at_random)
    print("kills (resumed from, checkpoint_last after the kill, *.tmp at the kill, finished):", kills)

    final = run_cli("fairseq-train", *args).stdout
    logs.append(final)
    assert loaded_checkpoint(final) == (str(last), kills[-1][1])
    assert f"num_updates: {UPDATES} >= max_update: {UPDATES}" in final or kills[-1][3]
    assert not list(save.glob("*.tmp"))  # each restart removed the half-written files of the killed run
    diff = max_abs_diff(load(last)["model"], load(reference.last)["model"])
    print(f"max |resumed - uninterrupted| over all parameters: {diff:.3g}")
    assert diff <= 1e-6
    for text in logs:
        losses = train_losses(text)
        assert losses == {u: ref_losses[u] for u in losses}


def test_a_run_resumed_in_epoch_two_gets_the_batches_of_epoch_one(tiny_data_bin):
    """fairseq main builds a process's batches with --seed + the epoch it starts in (shim 6,
    epoch_batches); the plugin's fix serves runs of its models, not fairseq's Transformer."""

    def batches(epoch, model=("--arch", "resmlp_small"), get_batch_iterator=None):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            str(tiny_data_bin), "--user-dir", USER_DIR, *model, "--max-tokens", "400"])
        cfg = convert_namespace_to_omegaconf(args)
        task = tasks.setup_task(cfg.task)
        task.load_dataset("train")
        task.build_model(cfg.model)  # as fairseq-train does before it asks for batches
        get = get_batch_iterator or type(task).get_batch_iterator
        itr = get(task, dataset=task.dataset("train"), max_tokens=400, seed=3, epoch=epoch)
        return [b.tolist() for b in itr.frozen_batches], itr.epoch

    fresh, _ = batches(1)
    resumed, epoch = batches(2)
    assert epoch == 2 and resumed == fresh
    stock, _ = batches(2, get_batch_iterator=FairseqTask.get_batch_iterator.__wrapped__)
    transformer = ("--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                   "--encoder-embed-dim", "16", "--decoder-embed-dim", "16")
    assert batches(2, transformer) == (stock, 2)  # fairseq's model: fairseq's batches
    if stock == fresh:
        pytest.skip("stock control: fairseq's own batches of epoch 2 equal those of epoch 1 here")
    assert sorted(map(len, stock)) == sorted(map(len, fresh))


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "zeros"])
def test_unreadable_checkpoint_names_the_file(tmp_path, damage):
    good = tmp_path / "checkpoint_1_3.pt"
    torch.save({"model": {"w": torch.arange(1000.0)}, "optimizer_history": []}, good)
    data = good.read_bytes()
    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 9,
                     "zeros": bytes(len(data))}[damage])
    with pytest.raises(fairseq_compat.CorruptCheckpointError) as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(bad))
    message = str(err.value)
    assert f"cannot read checkpoint {bad} ({bad.stat().st_size} bytes): it is truncated or corrupt" in message
    assert f"--restore-file, newest first: {good}" in message
    # rank 0's broadcast (an in-memory buffer) keeps torch's own error: there is no file to name
    from fairseq.distributed import utils as distributed_utils
    with pytest.raises(Exception) as err:
        distributed_utils.torch.load(io.BytesIO(bad.read_bytes()))
    assert not isinstance(err.value, fairseq_compat.CorruptCheckpointError)


@pytest.mark.slow
def test_restart_on_a_truncated_checkpoint_last_stops_with_its_name(reference, tiny_data_bin, tmp_path):
    save = tmp_path / "ckpt"
    save.mkdir()
    data = open(reference.last, "rb").read()
    (save / "checkpoint_last.pt").write_bytes(data[: len(data) // 3])
    proc = run_cli("fairseq-train", *train_args(tiny_data_bin, save, UPDATES + 2), check=False)
    assert proc.returncode != 0
    assert last_error(proc.stderr).startswith(
        f"resmlp_mt.fairseq_compat.CorruptCheckpointError: cannot read checkpoint {save / 'checkpoint_last.pt'} "
        f"({len(data) // 3} bytes): it is truncated or corrupt "
        f"(RuntimeError: PytorchStreamReader failed reading zip archive"
    ), proc.stderr[-3000:]
    assert "Move it away to start from scratch" in proc.stderr

