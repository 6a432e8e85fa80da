"""The benches: each runs in --tiny mode and prints its table; the paths they rely on are exact.

No timing is asserted: the numbers depend on the machine and its load.
"""
import json
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
    "mt_train.py": ("== MT training", "ratio resmlp bf16/fp32 training tokens/s [tiny]"),
    "mt_generate.py": ("== MT generation", "ratio resmlp/transformer beam-4 sentences/s [tiny]"),
    "gpu.py": ("== GPU bench", "ratio resmlp/transformer fairseq-train wps [tiny, fp32]"),
    "vision.py": ("== Vision", "ratio ours/timm images/s [s12 infer b4]"),
    "decode_step.py": ("== Decoding step", "relative step at t=60 vs t=4"),
}
# mt_generate.py also in each inference precision, where this CPU runs bf16 and int8
LOWER = [p for p in ("bf16", "int8") if precision.unavailable(p, torch.device("cpu")) is None]
EXTRA = {"mt_generate.py": ["--precisions", ",".join(["fp32", *LOWER])],
         "mt_train.py": ["--torch-dropout", "--fused-loss"]}  # and torch's dropout masks, the fused loss


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """All the benches in --tiny mode, started together to keep the wall-clock time down."""
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
    if script == "mt_train.py":
        assert "ratio resmlp cheaper/torch dropout masks, training tokens/s [tiny, fp32]" in stdout, stdout
        for m in ("resmlp", "transformer"):
            assert f"ratio {m} fused/fairseq's label-smoothed loss, training tokens/s [tiny, fp32]" in stdout, stdout
    if script == "mt_generate.py":
        for p in LOWER:
            assert f"ratio resmlp {p}/fp32 beam-4 sentences/s [tiny]" in stdout, stdout
            assert f"ratio transformer {p}/fp32 beam-4 sentences/s [tiny]" in stdout, stdout


@pytest.mark.slow
def test_tiny_generation_times_alignments_off_against_the_code_before_them(tiny_runs):
    code, stdout, stderr, _ = tiny_runs["mt_generate.py"]
    assert code == 0, stderr[-3000:]
    assert "== MT generation with and without --print-alignment" in stdout
    assert "ratio resmlp beam-4 sentences/s, alignments off / baseline without alignment code [tiny]" in stdout
    assert ("need_attn False and no cross-attention call asks for weights: yes; alignments on: every hypothesis "
            "has an alignment: yes; the variants of each model find the same hypotheses: yes") in stdout


@pytest.mark.slow
def test_tiny_gpu_bench_runs_every_cpu_path(tiny_runs):
    """fairseq-preprocess, fairseq-train (timed runs and parity runs), generation, vision."""
    code, stdout, stderr, json_file = tiny_runs["gpu.py"]
    assert code == 0, stderr[-3000:]
    for line in ("fairseq-train words/s (wps), fp32", "loss at update 10: fp32 vs fp32", "beam-4 sentences/s, fp32",
                 "ResMLP-S12 inference images/s, fp32", "ResMLP-S12 training step (AdamW) images/s, fp32"):
        assert line in stdout, stdout
    # two fp32 runs of the same seed on the CPU: the same loss
    assert stdout.count("relative difference 0.000% (a determinism check on the CPU") == 2, stdout
    raw = json.loads(json_file.read_text())["raw"]
    assert [r["num_updates"] for r in raw["training"]["resmlp fp32"]["records"]] == [5, 10, 15, 20]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_bench_without_a_gpu_says_so():
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "gpu.py")], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode != 0
    assert "no CUDA GPU is visible" in proc.stderr and "--tiny" in proc.stderr


def test_decoder_before_alignments_computes_what_the_decoder_computes():
    """The baseline of the alignment bench (mt_generate.decoder_before_alignments) is the
    decoder without its alignment branch: the same outputs, full pass and step by step."""
    from mt_generate import decoder_before_alignments

    from mtlib import build

    _, _, model = build("resmlp", "tiny", None)
    model.eval()
    baseline = decoder_before_alignments(model)
    assert baseline.decoder.forward.__func__ is not type(model.decoder).forward
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 200, (3, 7), generator=g)
    src[1, :2] = model.encoder.padding_idx  # left-padded, as fairseq batches sources
    lengths = torch.tensor([7, 5, 7])
    prev = torch.randint(4, 200, (3, 5), generator=g)
    with torch.no_grad():
        enc = model.encoder(src, lengths)
        full, extra = model.decoder(prev, enc)
        base_full, base_extra = baseline.decoder(prev, baseline.encoder(src, lengths))
        assert extra["attn"] == [None] and base_extra["attn"] == [None]
        torch.testing.assert_close(base_full, full, rtol=0, atol=0)
        states = {}, {}
        for t in range(prev.size(1)):
            a = model.decoder(prev[:, : t + 1], enc, incremental_state=states[0])[0]
            b = baseline.decoder(prev[:, : t + 1], enc, incremental_state=states[1])[0]
            torch.testing.assert_close(b, a, rtol=0, atol=0)
            torch.testing.assert_close(a[:, -1], full[:, t], rtol=1e-5, atol=1e-5)


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


@pytest.mark.slow
def test_memory_children_run_a_cores_worth_at_a_time_and_a_kill_is_named(tmp_path):
    """Eight WMT-size children at once were killed for memory, with an empty message."""
    from benchlib import in_fresh_processes

    child = tmp_path / "child.py"
    child.write_text("import json, os, signal, sys, time\n"
                     "if sys.argv[1] == 'kill':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                     "start = time.time(); time.sleep(0.3)\n"
                     "print(json.dumps({'start': start, 'end': time.time()}))\n")
    spans = in_fresh_processes(str(child), [["ok"]] * 3, threads=os.cpu_count())  # a core's worth: one at a time
    assert all(a["end"] <= b["start"] for a, b in zip(spans, spans[1:])), spans
    with pytest.raises(RuntimeError, match=r"killed by signal 9 \(out of memory\?\)"):
        in_fresh_processes(str(child), [["kill"]], threads=1)
