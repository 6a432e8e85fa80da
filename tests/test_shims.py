"""The fairseq shims the plugin applies at import: logged, each one switchable off
(``RESMLP_NO_SHIM``), skipped where fairseq has the fix; and ``--optimizer lamb`` stays
fairseq's. What each shim fixes is tested with its subject (test_kill_and_resume.py,
test_atomic_checkpoint_writes.py, test_clean_exit_mid_epoch.py, test_bad_inputs.py, ...)."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils, options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.distributed import utils as distributed_utils
from fairseq.optim import OPTIMIZER_REGISTRY, build_optimizer
from fairseq.optim.fused_lamb import FairseqLAMB

from helpers import USER_DIR
from resmlp_mt import fairseq_compat
from resmlp_mt.optim.lamb import TimmLamb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Which shims changed fairseq in a fresh process, judged against fairseq's own objects
# taken before the plugin is imported. fairseq_cli.interactive is imported first, as
# fairseq-interactive does before it loads --user-dir (and it logs INFO to stdout).
PROBE = r"""
import json, sys
import fairseq_cli.interactive as interactive
import torch
from fairseq import checkpoint_utils, options, trainer, utils
from fairseq.data import data_utils
from fairseq.dataclass import utils as dataclass_utils
from fairseq.distributed import utils as distributed_utils
from fairseq.models import BaseFairseqModel
from fairseq.tasks import FairseqTask


def objects():
    return {"batch_by_size": data_utils.batch_by_size, "PathManager": checkpoint_utils.PathManager,
            "save": checkpoint_utils.torch_persistent_save, "NanDetector": trainer.NanDetector,
            "get_batch_iterator": FairseqTask.get_batch_iterator,
            "excepthook": sys.excepthook, "load_checkpoint": trainer.Trainer.load_checkpoint,
            "ensemble": checkpoint_utils.load_model_ensemble_and_task, "make_batches": interactive.make_batches,
            "ckpt_torch": checkpoint_utils.torch, "dist_torch": distributed_utils.torch,
            "trainer_init": trainer.Trainer.__init__, "replace_unk": utils.replace_unk,
            "load_align_dict": utils.load_align_dict, "build_generator": FairseqTask.build_generator,
            "add_generation_args": options.add_generation_args,
            "to_omegaconf": dataclass_utils.convert_namespace_to_omegaconf,
            "interactive_to_omegaconf": interactive.convert_namespace_to_omegaconf,
            "prepare_for_inference_": BaseFairseqModel.prepare_for_inference_}


def wraps(function, marker):
    while function is not None:
        if getattr(function, marker, False):
            return True
        function = getattr(function, "__wrapped__", None)
    return False


stock = objects()
import resmlp_mt
now = objects()
changed = lambda *names: any(now[n] is not stock[n] and now[n] != stock[n] for n in names)
print(json.dumps({"plugin": resmlp_mt.__file__, "originals": not changed(*stock), "shims": {
    "weights_only": changed("dist_torch") or getattr(now["ckpt_torch"], "pickles", False),
    "corrupt_checkpoint": getattr(now["ckpt_torch"], "names_corrupt", False),
    "last_batch": changed("batch_by_size"),
    "atomic_save": changed("PathManager", "save"),
    "nan_detector": changed("NanDetector"),
    "epoch_batches": changed("get_batch_iterator"),
    "prefetch_exit": resmlp_mt.fairseq_compat._stop_prefetch_threads.resmlp_registered,  # atexit's
    "save_dir_lock": wraps(now["trainer_init"], "resmlp_locks_save_dir"),
    "one_line_errors": changed("excepthook"),
    "precision_check": wraps(now["trainer_init"], "resmlp_checks_precision"),
    "checkpoint_errors": changed("load_checkpoint", "ensemble"),
    "interactive_lines": changed("make_batches"),
    "replace_unk": changed("replace_unk", "load_align_dict", "build_generator"),
    "cpu_bf16": wraps(now["trainer_init"], "resmlp_cpu_bf16"),
    "inference_precision": changed("add_generation_args", "to_omegaconf", "interactive_to_omegaconf",
                                   "prepare_for_inference_"),
}}))
"""


def probe(tmp_path, switch=None):
    """(which shims changed fairseq, whether every fairseq object is its own, stdout) in a fresh process."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != fairseq_compat.SWITCH}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    if switch:
        env[fairseq_compat.SWITCH] = switch
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["plugin"].startswith(REPO)  # this checkout's plugin, not another install's
    return result["shims"], result["originals"], proc.stdout + proc.stderr


@pytest.mark.slow  # probe: a fresh Python process that imports torch and fairseq (~10 s)
def test_every_shim_is_applied_and_logged_once(tmp_path):
    shims, originals, output = probe(tmp_path)
    assert set(shims) == set(fairseq_compat.SHIMS)
    assert all(shims.values()) and not originals, shims
    lines = [line for line in output.splitlines() if "fairseq shims active:" in line]
    assert len(lines) == 1 and lines[0].endswith("fairseq shims active: " + ", ".join(fairseq_compat.SHIMS))
    assert "INFO" in lines[0] and "resmlp_mt" in lines[0]


@pytest.mark.slow  # probe: a fresh Python process that imports torch and fairseq (~10 s)
@pytest.mark.parametrize("off", ["last_batch", "precision_check", "weights_only,interactive_lines"])
def test_a_shim_switched_off_leaves_fairseq_as_it_is(tmp_path, off):
    """precision_check shares Trainer.__init__ with save_dir_lock; weights_only shares
    checkpoint_utils.torch with corrupt_checkpoint."""
    shims, _, output = probe(tmp_path, off)
    names = off.split(",")
    assert {name for name, on in shims.items() if not on} == set(names), shims
    assert f"off (RESMLP_NO_SHIM): {', '.join(names)}" in output


@pytest.mark.slow  # probe: a fresh Python process that imports torch and fairseq (~10 s)
def test_all_shims_switched_off_leave_every_fairseq_original(tmp_path):
    shims, originals, output = probe(tmp_path, "all")
    assert not any(shims.values()) and originals, shims
    assert "fairseq shims active: none; off (RESMLP_NO_SHIM): " + ", ".join(fairseq_compat.SHIMS) in output


def test_an_unknown_shim_name_is_warned_about(monkeypatch, caplog):
    monkeypatch.setenv(fairseq_compat.SWITCH, "last_batch, no_such_shim")
    with caplog.at_level(logging.WARNING, "resmlp_mt"):
        assert fairseq_compat.switched_off() == {"last_batch"}
    assert "no shim named no_such_shim; the names are: all, weights_only," in caplog.text


def fixed_load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """As fairseq 3d262bb and later load: the caller passes weights_only=False itself."""
    with open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=False)


def fixed_broadcast_object_slow(obj, src_rank, group, dist_device):
    return torch.load(obj, map_location="cpu", weights_only=False)


def test_weights_only_is_skipped_where_fairseq_has_the_fix(monkeypatch, caplog):
    assert fairseq_compat._pickle_loaders() == [checkpoint_utils, distributed_utils]  # this fairseq: not yet
    monkeypatch.setattr(checkpoint_utils, "load_checkpoint_to_cpu", fixed_load_checkpoint_to_cpu)
    assert fairseq_compat._pickle_loaders() == [distributed_utils]
    monkeypatch.setattr(distributed_utils, "_broadcast_object_slow", fixed_broadcast_object_slow)
    assert fairseq_compat._pickle_loaders() == []
    monkeypatch.delenv(fairseq_compat.SWITCH, raising=False)
    with caplog.at_level(logging.INFO, "resmlp_mt"):
        report = fairseq_compat.apply()
    assert report["upstream"] == ["weights_only"] and "weights_only" not in report["active"]
    assert "; skipped, the installed fairseq has the fix: weights_only" in caplog.text


def test_the_plugin_leaves_fairseqs_lamb_and_adds_timm_lamb():
    assert OPTIMIZER_REGISTRY["lamb"] is FairseqLAMB and OPTIMIZER_REGISTRY["timm_lamb"] is TimmLamb
    params = [torch.nn.Parameter(torch.ones(2, 2))]
    for name, expected in (("lamb", FairseqLAMB), ("timm_lamb", TimmLamb)):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            "data", "--user-dir", USER_DIR, "--arch", "resmlp_small", "--optimizer", name, "--lr", "0.01"])
        cfg = convert_namespace_to_omegaconf(args)
        try:
            optimizer = build_optimizer(cfg.optimizer, params)
        except ImportError as e:  # fairseq's LAMB is apex's FusedLAMB: it says so when apex is missing
            assert name == "lamb" and "Please install apex to use LAMB optimizer" in str(e)
        else:
            assert type(optimizer) is expected


def test_epoch_batches_serves_plugin_runs_only():
    class Task:  # neither the plugin's task nor a task that built the plugin's model
        pass

    task = Task()
    assert not fairseq_compat.is_plugin_run(task)
    fairseq_compat.mark_plugin_task(task)
    assert fairseq_compat.is_plugin_run(task)
