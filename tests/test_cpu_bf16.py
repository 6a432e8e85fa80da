"""``fairseq-train --bf16`` on the CPU (shim ``cpu_bf16``): bf16 autocast with fp32 weights,
optimizer state and checkpoints; exact resume; the loss of fp32 training."""
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from helpers import run_cli
from resmlp_mt import cpu_bf16
from training_runs import load, max_abs_diff, train_args, train_losses

LOG_LINE = "--bf16 on the CPU: bf16 autocast with fp32 weights"


def test_autocast_forward_multiplies_in_bf16_and_keeps_fp32_weights_and_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    expected = x @ layer.weight.t() + layer.bias  # fp32, computed independently
    cpu_bf16.autocast_forward(layer)
    cpu_bf16.autocast_forward(layer)  # idempotent: one autocast region, not two
    y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    assert torch.allclose(y.float(), expected, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 bits of mantissa
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    assert torch.allclose(layer.weight.grad, x.sum(0).expand(32, 64), rtol=2e-2, atol=5e-2)
    assert not torch.is_autocast_enabled("cpu")  # the region ends with the forward


@pytest.mark.parametrize("flags, wanted", [
    ({"bf16": True}, True),
    ({"memory_efficient_bf16": True}, True),
    ({}, False),
    ({"fp16": True}, False),  # still refused by precision_check
])
def test_which_runs_the_shim_takes_over(flags, wanted):
    common = {"bf16": False, "memory_efficient_bf16": False, "fp16": False, "cpu": True, "tpu": False, **flags}
    assert cpu_bf16.wants_cpu_bf16(OmegaConf.create({"common": common})) is wanted


@pytest.mark.parametrize("cuda, xla, cpu_flag, wanted", [
    (True, False, False, True),    # the GPU run fairseq main would send to torch_xla
    (True, True, False, False),    # torch_xla installed: fairseq's own choice
    (True, False, True, False),    # --cpu: the autocast path instead
    (False, False, False, False),  # no GPU: the autocast path
])
def test_bf16_on_a_gpu_only_drops_the_implied_tpu(monkeypatch, cuda, xla, cpu_flag, wanted):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(cpu_bf16, "_xla_installed", lambda: xla)
    common = {"bf16": True, "memory_efficient_bf16": False, "fp16": False, "cpu": cpu_flag, "tpu": True}
    cfg = OmegaConf.create({"common": common})
    assert cpu_bf16.wants_gpu_bf16(cfg) is wanted
    assert not (wanted and cpu_bf16.wants_cpu_bf16(cfg))  # never both


def _final_loss(log, last=20):
    """The mean training loss of the last LAST updates (each logged: --log-interval 1)."""
    losses = train_losses(log)
    top = max(losses)
    return sum(float(losses[u][0]) for u in range(top - last + 1, top + 1)) / last


@pytest.mark.slow
def test_bf16_training_saves_fp32_checkpoints_and_resumes_exactly(tiny_data_bin, tmp_path):
    straight = run_cli("fairseq-train", *train_args(tiny_data_bin, tmp_path / "straight", 12, "--bf16"))
    assert LOG_LINE in straight.stdout + straight.stderr
    run_cli("fairseq-train", *train_args(tiny_data_bin, tmp_path / "resumed", 6, "--bf16"))
    run_cli("fairseq-train", *train_args(tiny_data_bin, tmp_path / "resumed", 12, "--bf16"))
    a, b = load(tmp_path / "straight" / "checkpoint_last.pt"), load(tmp_path / "resumed" / "checkpoint_last.pt")
    assert {t.dtype for t in a["model"].values()} == {torch.float32}
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == 12
    assert max_abs_diff(a["model"], b["model"]) == 0.0


@pytest.mark.slow
def test_bf16_ends_200_updates_at_the_loss_of_fp32(tiny_data_bin, tmp_path):
    """The tolerance: bf16 rounding may move the loss after 200 updates by no more than
    changing the seed does (the spread any quality claim here must already live with).
    Measured on this CPU: see the printed figures."""
    def final(name, seed, *flags):
        proc = run_cli("fairseq-train", *train_args(tiny_data_bin, tmp_path / name, 200, "--no-save", *flags),
                       "--seed", seed)
        log = proc.stdout + proc.stderr
        return float(train_losses(log)[1][0]), _final_loss(log)

    (first, fp32), (_, fp32_other_seed) = final("fp32", 3), final("fp32-seed4", 4)
    _, bf16 = final("bf16", 3, "--bf16")
    print(f"mean loss of updates 181-200: fp32 {fp32:.4f}, fp32 seed 4 {fp32_other_seed:.4f}, bf16 {bf16:.4f} "
          f"(first update: {first:.4f})")
    assert fp32 < 0.8 * first  # the runs learned something (6.2 -> 4.4 here)
    assert abs(bf16 - fp32) <= abs(fp32_other_seed - fp32), (fp32, fp32_other_seed, bf16)


@pytest.mark.slow
def test_the_transformer_gets_the_same_bf16_treatment(tiny_data_bin, tmp_path):
    args = train_args(tiny_data_bin, tmp_path / "tf", 4, "--bf16")
    transformer = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
                   "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
                   "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    args = args[:args.index("--arch")] + args[args.index("--optimizer"):] + transformer
    proc = run_cli("fairseq-train", *args)
    assert LOG_LINE in proc.stdout + proc.stderr
    assert re.search(r"num_updates=4\b", proc.stdout + proc.stderr)
    weights = load(tmp_path / "tf" / "checkpoint_last.pt")["model"]
    assert {t.dtype for t in weights.values()} == {torch.float32}
