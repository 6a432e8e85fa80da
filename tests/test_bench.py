"""The benches: each runs in --tiny mode and prints its table; the paths they rely on are exact.

No timing is asserted: the numbers depend on the machine and its load.
"""
import os
import subprocess
import sys

import pytest
import torch

from resmlp_mt import precision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
sys.path.insert(0, BENCH)
SCRIPTS = {
    "mt_train.py": ("== MT training", "ratio resmlp/transformer training tokens/s [tiny]"),
    "mt_generate.py": ("== MT generation", "ratio resmlp/transformer beam-4 sentences/s [tiny]"),
    "vision.py": ("== Vision", "ratio ours/timm images/s [s12 infer b4]"),
    "decode_step.py": ("== Decoding step", "relative step at t=60 vs t=4"),
}
# mt_generate.py also in each inference precision, where this CPU runs bf16 and int8
LOWER = [p for p in ("bf16", "int8") if precision.unavailable(p, torch.device("cpu")) is None]
EXTRA = {"mt_generate.py": ["--precisions", ",".join(["fp32", *LOWER])]}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """All three benches in --tiny mode, started together to keep the wall-clock time down."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {
        script: subprocess.Popen(
            [sys.executable, os.path.join(BENCH, script), "--tiny", "--threads", "1",
             "--out", str(out / f"{script}.json"), *EXTRA.get(script, [])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for script in SCRIPTS
    }
    results = {}
    for script, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[script] = (proc.returncode, stdout, stderr, out / f"{script}.json")
    return results


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_tiny_bench_prints_its_table(tiny_runs, script):
    code, stdout, stderr, json_file = tiny_runs[script]
    assert code == 0, stderr[-3000:]
    header, ratio = SCRIPTS[script]
    assert header in stdout and ratio in stdout, stdout
    assert "machine: " in stdout and "versions: python" in stdout and "torch" in stdout
    assert json_file.exists()
    if script == "mt_generate.py":
        for p in LOWER:
            assert f"ratio resmlp {p}/fp32 beam-4 sentences/s [tiny]" in stdout, stdout
            assert f"ratio transformer {p}/fp32 beam-4 sentences/s [tiny]" in stdout, stdout


def test_converted_timm_weights_give_timm_logits():
    from vision import max_logit_difference, pair

    ours, reference = pair("s12", num_classes=10, img_size=64)
    assert max_logit_difference(ours, reference, img_size=64) < 1e-4


@pytest.mark.slow
def test_generation_checkpoint_loads_through_fairseq(tmp_path):
    """mt_generate --data hands fairseq-generate checkpoints written by ``checkpoint``."""
    from fairseq import checkpoint_utils
    from mt_generate import checkpoint

    from mtlib import build

    for model_name in ("resmlp", "transformer"):
        cfg, task, model = build(model_name, "tiny", None)
        path = checkpoint(cfg, model, str(tmp_path / f"{model_name}.pt"))
        (loaded,), _ = checkpoint_utils.load_model_ensemble([path], task=task)
        assert type(loaded) is type(model)
        for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), name


@pytest.mark.slow
def test_profile_splits_the_time_by_kind():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "profile_mt.py"), "--tiny", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for title in ("training", "beam-4 generation"):
        section = proc.stdout.split(f"== resmlp [tiny] {title}: self CPU time by kind")[1].split("==")[0]
        shares = [float(line.rsplit(None, 1)[1].rstrip("%")) for line in section.strip().splitlines()]
        assert "GEMM, output projection (vocabulary-sized)" in section and "GEMM, the model's layers" in section
        assert 0 < sum(shares) <= 100.5
