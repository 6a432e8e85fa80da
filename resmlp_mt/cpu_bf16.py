"""``fairseq-train --bf16`` on the CPU: bf16 autocast with fp32 weights [shim ``cpu_bf16``].

fairseq main makes ``--bf16`` imply ``--tpu`` (torch_xla), so on a CPU it cannot run at
all. CPUs with AVX512-BF16 or AMX multiply bf16 matrices 4.4x faster than fp32 here
(README, "bf16 training"), so with the plugin loaded ``--bf16`` (or
``--memory-efficient-bf16``) on the CPU means mixed precision instead:

* the forward pass of the criterion (model and loss) runs under
  ``torch.autocast("cpu", torch.bfloat16)``: matrix products in bf16, reductions,
  softmax and the loss in fp32 (autocast's own op lists; fairseq's log-softmax casts to
  fp32 too); the backward pass follows the forward's dtypes;
* weights, gradients, optimizer state and checkpoints stay fp32, so a checkpoint is the
  same whether it was trained in bf16 or not, and a resumed run is exact;
* no loss scaling: bf16 has fp32's exponent range;
* scaled-dot-product attention (fairseq's ``MultiheadAttention``, our cross-attention)
  uses torch's math kernel, because the CPU's fused kernel is ~10x slower in bf16
  than in fp32 for the backward pass (measured here: 69 ms vs 7.8 ms per call).

Why autocast rather than bf16 weights with fp32 master copies (fairseq's
``FP16Optimizer``, which ``--bf16`` uses on a GPU): measured at the demo size here it
was no faster (1.20-1.35 s vs 1.02-1.08 s a step), and fairseq would save bf16 weights.

This applies to every model trained with the plugin loaded, fairseq's Transformer
included, so comparisons stay fair. On a CUDA GPU without torch_xla, ``--bf16`` keeps
fairseq's own GPU path (bf16 weights, fp32 master copies); the shim only drops the
``--tpu`` that fairseq main's ``--bf16`` implies, which would ask torch_xla for a device.
fp16 on the CPU is still refused (``usage_errors.check_precision_device``): this CPU has
no fast fp16 arithmetic.
"""
import contextlib
import functools
import logging

import torch
from fairseq.trainer import Trainer
from omegaconf import open_dict
from torch.nn.attention import SDPBackend, sdpa_kernel

logger = logging.getLogger(__name__)


def native() -> bool:
    """Does this CPU multiply bf16 in hardware (AVX512-BF16 or AMX)? Without it oneDNN
    emulates bf16, slower than fp32, and ``make demo`` stays in fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@contextlib.contextmanager
def autocast():
    """The region that runs in bf16: autocast, with the math kernel for attention."""
    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        yield


def autocast_forward(module: torch.nn.Module) -> torch.nn.Module:
    """Run ``module``'s forward passes (for a criterion: the model's and the loss) in
    :func:`autocast`; the backward pass follows their dtypes. Idempotent."""
    forward = module.forward
    if not getattr(forward, "resmlp_cpu_bf16", False):
        @functools.wraps(forward)
        def wrapper(*args, **kwargs):
            with autocast():
                return forward(*args, **kwargs)

        wrapper.resmlp_cpu_bf16 = True
        module.forward = wrapper
    return module


def _xla_installed() -> bool:
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


def wants_cpu_bf16(cfg) -> bool:
    """``--bf16`` for a run that fairseq would otherwise send to torch_xla: no CUDA device
    in use and no torch_xla installed."""
    common = cfg.common
    if not (common.bf16 or common.memory_efficient_bf16):
        return False
    if torch.cuda.is_available() and not common.cpu:
        return False
    return not _xla_installed()


def wants_gpu_bf16(cfg) -> bool:
    """``--bf16`` on a CUDA GPU without torch_xla: fairseq's own GPU path (bf16 weights, fp32
    master copies in ``FP16Optimizer``) works, but its ``--bf16`` implies ``--tpu``, and the
    trainer then asks torch_xla for a device. Only that implication is dropped."""
    common = cfg.common
    return (bool(common.bf16 or common.memory_efficient_bf16) and common.tpu and not common.cpu
            and torch.cuda.is_available() and not _xla_installed())


def _taking_over_bf16(init):
    @functools.wraps(init)
    def wrapper(self, cfg, task, model, criterion, *args, **kwargs):
        cpu_bf16 = wants_cpu_bf16(cfg)
        if cpu_bf16:
            with open_dict(cfg):  # fairseq would cast the model to bf16 and use torch_xla
                cfg.common.bf16 = cfg.common.memory_efficient_bf16 = cfg.common.tpu = False
            autocast_forward(criterion)
            logger.info("--bf16 on the CPU: bf16 autocast with fp32 weights, optimizer state and checkpoints "
                        f"(this CPU {'has' if native() else 'has NO'} native bf16 arithmetic)")
        elif wants_gpu_bf16(cfg):
            with open_dict(cfg):
                cfg.common.tpu = False
            logger.info("--bf16 on a GPU: fairseq's bf16 training, without the --tpu that fairseq main implies")
        init(self, cfg, task, model, criterion, *args, **kwargs)

    wrapper.resmlp_cpu_bf16 = True
    return wrapper


def apply() -> None:
    """Shim ``cpu_bf16``. Idempotent."""
    if not getattr(Trainer.__init__, "resmlp_cpu_bf16", False):
        Trainer.__init__ = _taking_over_bf16(Trainer.__init__)
