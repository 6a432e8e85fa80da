"""Checkpoint writes are atomic: the unit view of the kills in test_kill_and_resume.py.

A copy to checkpoint_last.pt interrupted half-way leaves the previous file whole, fairseq's
own save path goes through fsync and rename, and applying the plugin's shims twice changes
nothing the second time.
"""
import atexit
import os
import shutil
import sys

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq import trainer as fairseq_trainer
from fairseq.file_io import PathManager as StockPathManager
from fairseq.tasks import FairseqTask

from resmlp_mt import fairseq_compat
from training_runs import load


def test_checkpoint_copies_are_atomic_under_a_simulated_kill(tmp_path, monkeypatch):
    """The unit view of kill 2 in test_kill_and_resume.py: a copy interrupted half-way (a
    BaseException, as a signal would) leaves the old checkpoint_last.pt; fairseq's own copy
    leaves half a file."""
    old, new = b"old checkpoint " * 1000, b"new checkpoint " * 2000
    src, dst = tmp_path / "checkpoint_1_6.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(new)

    class Killed(BaseException):
        pass

    def copy_half_then_die(a, b, *args, **kwargs):
        with open(a, "rb") as fa, open(b, "wb") as fb:
            fb.write(fa.read()[: len(new) // 2])
        raise Killed

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_die)
    dst.write_bytes(old)
    with pytest.raises(Killed):
        StockPathManager.copy(str(src), str(dst), overwrite=True)
    stock_truncates = dst.read_bytes() == new[: len(new) // 2]  # fairseq main: a truncated checkpoint_last.pt

    dst.write_bytes(old)
    assert checkpoint_utils.PathManager is fairseq_compat._AtomicPathManager
    with pytest.raises(Killed):
        checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == old  # the plugin: the previous one, whole

    monkeypatch.undo()
    assert checkpoint_utils.PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == new and not list(tmp_path.glob("*.tmp"))
    if not stock_truncates:
        pytest.skip("stock control: the installed fairseq's PathManager.copy leaves the old file whole")


def test_fairseq_checkpoint_writes_go_through_fsync_and_replace(tmp_path, monkeypatch):
    """fairseq's own save path (torch_persistent_save, then the copies) with the plugin."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    first, last = str(tmp_path / "checkpoint_1_3.pt"), str(tmp_path / "checkpoint_last.pt")
    checkpoint_utils.torch_persistent_save({"model": {"w": torch.ones(3)}}, first)
    checkpoint_utils.PathManager.copy(first, last, overwrite=True)
    assert torch.equal(load(last)["model"]["w"], torch.ones(3))
    assert len(synced) >= 3  # the saved file, the copy, and their directory
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_1_3.pt", "checkpoint_last.pt"]


def test_apply_is_idempotent():
    def state():
        return (checkpoint_utils.PathManager, fairseq_trainer.NanDetector, checkpoint_utils.torch,
                FairseqTask.get_batch_iterator, atexit._ncallbacks(), checkpoint_utils.torch_persistent_save,
                checkpoint_utils.load_model_ensemble_and_task, fairseq_trainer.Trainer.__init__,
                fairseq_trainer.Trainer.load_checkpoint, sys.excepthook)

    before = state()
    fairseq_compat.apply()
    fairseq_compat.apply()
    assert state() == before
