"""Reliability of the image task through fairseq's own fairseq-train: SIGKILLs and exact
resumption, and two CPU ranks (gloo, legacy_ddp) against one process.

The translation counterparts are in test_kill_and_resume.py and test_distributed.py; the
helpers reused here are in training_runs.py and test_distributed.py, the ``hooks`` fixture
in conftest.py.
"""
import random
import time

import pytest
from test_distributed import data_parallel, max_abs_diff, model

from helpers import USER_DIR, run_cli
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)
from training_runs import ENV, fairseq_train, hooked_train, load, loaded_checkpoint, num_updates, read, start, wait_for

pytestmark = pytest.mark.slow

TINY = ["--task", "image_classification", "--arch", "resmlp_tiny_28", "--img-size", "16", "--embed-dim", "16",
        "--depth", "2"]
UPDATES = 12  # 20 training images in batches of 4: two epoch boundaries


def image_args(data, save_dir, max_update, *extra, augment=True, schedule=("cosine",)):
    """The paper's ingredients when ``augment``: RandAugment, random erasing, Mixup/CutMix,
    stochastic depth; all of them draw random numbers that a resumed run must redraw alike."""
    recipe = (["--aa", "rand-m9-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0.8", "--cutmix", "1.0",
               "--drop-path", "0.1"] if augment else ["--no-augment"])
    return [str(data), "--user-dir", USER_DIR, *TINY, *recipe, "--criterion", "image_cross_entropy",
            "--label-smoothing", "0.1", "--optimizer", "timm_lamb", "--lr", "5e-3", "--weight-decay", "0.2",
            "--lr-scheduler", *schedule, "--warmup-updates", "2", "--max-update", str(max_update),
            "--batch-size", "4", "--seed", "5", "--cpu", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--log-format", "simple", "--log-interval", "1", "--num-workers", "0", *map(str, extra)]


def test_image_training_killed_at_random_resumes_exactly(image_folder_tree, hooks, tmp_path):  # noqa: F811
    """SIGKILL mid-copy to checkpoint_last.pt, then twice at random moments (every write
    slowed to >= 0.3 s), restart unchanged each time: the final parameters are those of
    an uninterrupted run, and every *.pt left behind loads."""
    reference = tmp_path / "reference"
    run_cli("fairseq-train", *image_args(image_folder_tree, reference, UPDATES))

    save = tmp_path / "ckpt"
    last = save / "checkpoint_last.pt"
    args = image_args(image_folder_tree, save, UPDATES, "--save-interval-updates", 1)
    marker = tmp_path / "stalled"
    rng = random.Random(7)
    resumed_from = []

    def attempt(i, env, kill_when):
        before = num_updates(last) if last.exists() else 0
        log = tmp_path / f"attempt{i}.log"
        proc = start(hooked_train(hooks, args), log, env=env)
        kill_when(proc, log)
        proc.kill()
        proc.wait()
        assert loaded_checkpoint(read(log)) == ((str(last), before) if before else None), read(log)[-3000:]
        for path in save.glob("*.pt"):
            load(path)  # nothing fairseq would load is half-written
        resumed_from.append(before)

    def at_marker(proc, log):
        wait_for(marker.exists, proc, log)
        marker.unlink()

    def at_random(proc, log):
        wait_for(lambda: "Start iterating over samples" in read(log), proc, log)
        time.sleep(rng.uniform(0.5, 4.0))  # writes take >= 0.6 s per update: the run lasts > 5 s

    attempt(0, {"RESMLP_STALL_MARKER": str(marker), "RESMLP_STALL": "copy:checkpoint_2_7.pt:checkpoint_last.pt"},
            at_marker)
    assert num_updates(last) == 6  # the previous checkpoint_last.pt, whole
    for i in (1, 2):
        attempt(i, {"RESMLP_SLOW_WRITES": "0.3"}, at_random)

    final = run_cli("fairseq-train", *args, env=ENV).stdout
    assert loaded_checkpoint(final)[0] == str(last)
    diff = max_abs_diff(load(last)["model"], load(reference / "checkpoint_last.pt")["model"])
    print(f"resumed from updates {resumed_from}; max |resumed - uninterrupted|: {diff:.3g}")
    assert num_updates(last) == UPDATES and diff <= 1e-6


def test_two_image_ranks_match_one_process_with_update_freq_2(image_folder_tree, tmp_path):  # noqa: F811
    """2 ranks for 2 updates, restarted to 5 (into epoch 2); each equals one process with
    --update-freq 2 on the same batches. No random augmentation: each rank mixes its own
    half-batch, the single process its two micro-batches, with different draws."""

    def command(save_dir, max_update, *extra):
        # cosine's period depends on --max-update, which the restart changes
        return fairseq_train(image_args(image_folder_tree, save_dir, max_update, *extra, augment=False,
                                        schedule=("inverse_sqrt",)))

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    logs = data_parallel(None, ddp, 2, tmp_path, "first", make_args=command,
                         single=command(single, 5, "--update-freq", "2", "--save-interval-updates", "1"))
    assert "training on 2 devices" in logs[0]
    diff2 = max_abs_diff(model(ddp / "checkpoint_last.pt"), model(single / "checkpoint_1_2.pt"))
    logs = data_parallel(None, ddp, 5, tmp_path, "resumed", make_args=command)
    assert f"Loaded checkpoint {ddp / 'checkpoint_last.pt'} (epoch 1 @ 2 updates)" in logs[0], logs[0][-3000:]
    diff5 = max_abs_diff(model(ddp / "checkpoint_last.pt"), model(single / "checkpoint_last.pt"))
    print(f"max |2 ranks - 1 process, update-freq 2|: {diff2:.3g} after 2 updates, {diff5:.3g} after 5")
    assert diff2 <= 1e-6 and diff5 <= 1e-6
