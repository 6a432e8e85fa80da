"""Inference precision: beam search in fp32, bf16 or int8 on the CPU.

One option, for ``fairseq-generate``, ``fairseq-interactive`` and the hub interface, for
every fairseq model run with the plugin loaded (the plugin's and fairseq's own
``transformer`` alike, so that comparisons are fair):

    fairseq-generate DATA --user-dir resmlp_mt --path CKPT --inference-precision bf16
    ResMLPModel.from_pretrained(..., inference_precision="int8")

* ``fp32`` (the default): the model as trained.
* ``bf16``: the model's parameters and buffers are cast to bfloat16 and the whole forward
  pass runs in it (AMX / AVX512-BF16 GEMMs), but for the logits (below). Scores stay
  fp32: fairseq's ``get_normalized_probs`` takes the log-softmax in fp32.
* ``int8``: ``bf16``, and then the weights of every ``nn.Linear`` but the output
  projection (MLPs, attention projections) are quantized to int8, symmetric, one scale per
  output channel, with torchao (``Int8WeightOnlyConfig``): int8 weights, bf16 activations
  and GEMMs (each call widens the int8 weight to bf16 and scales the product). Those
  layers hold a quarter of fp32's bytes. torchao's dynamic int8 activations
  (``Int8DynamicActivationInt8WeightConfig``, int8 GEMMs) measured 0.6x fp32's beam-search
  speed here in eager mode (the activations' quantization runs as many small operations
  per call, which torchao leaves to torch.compile to fuse), so they are not used. Token
  mixing (``resmlp_mt/modules``) and norms stay bf16; ResMLP blocks then call their MLP
  layers as modules instead of folding LayerScale into the weights (``folding.foldable``).

In both, the output projection stays a bf16 GEMM, and the words beam search can choose
among get fp32 logits (:func:`exact_top_logits`): a bf16 GEMM rounds its outputs to 8
significant bits, so a logit near 20 is off by up to 0.06, and beam search ranks
hypotheses by sums of such differences. On the demo model that rounding alone cost 0.38
BLEU on test2016 (with these fp32 logits: 0.03); int8 weights for the projection (the same speed as
bf16 here) would add their own error to every logit.

The shim ``inference_precision`` (``fairseq_compat``) adds the option to fairseq's
generation parsers, carries its value into ``cfg.generation.inference_precision`` (fairseq's
``convert_namespace_to_omegaconf`` keeps dataclass fields only) and applies it in
``prepare_for_inference_``, which fairseq-generate, fairseq-interactive and the hub
interface call for every model after loading it. fairseq's ``--bf16`` (which fairseq
makes imply ``--tpu``) had no effect on generation on the CPU; it now selects bf16.
"""
import functools
import logging
import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .usage_errors import UsageError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
EXACT_LOGITS = 16  # per position: beam search's candidates are the 2 x beam best words (beams up to 8)
DEFAULT = "fp32"
OPTION = "--inference-precision"
HELP = ("the precision of the model's arithmetic in generation (with the resmlp_mt plugin): fp32 (as trained), "
        "bf16 (bfloat16 weights and activations) or int8 (int8 weights of the linear layers, bf16 activations); "
        "scores are accumulated in fp32. bf16 and int8 need a CPU with AVX512-BF16 or AMX (or a GPU, for bf16)")


class PrecisionError(UsageError):
    """An inference precision that is not one of ``PRECISIONS``, or that this machine cannot run."""


def _cpu_has(feature: str) -> bool:
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def unavailable(precision: str, device: torch.device) -> Optional[str]:
    """Why ``precision`` cannot run on ``device`` here, or None."""
    if precision == "fp32":
        return None
    if precision == "int8":
        if device.type != "cpu":
            return f"int8 inference runs on the CPU only (the model is on {device.type}); use bf16 there"
        try:
            import torchao.quantization  # noqa: F401
        except ImportError as e:
            return f"int8 needs torchao (pip install torchao==0.18.0; {type(e).__name__}: {e})"
    if device.type == "cpu" and not (_cpu_has("avx512_bf16") or _cpu_has("amx_tile")):
        return (f"{precision} needs a CPU with AVX512-BF16 or AMX (bfloat16 GEMMs); this one has neither, and torch "
                f"would emulate bfloat16 more slowly than fp32")
    return None


def check(precision: Optional[str], device: Optional[torch.device] = None) -> str:
    """``precision`` (None: the default), or a ``PrecisionError`` that says what to do."""
    if precision is None:
        return DEFAULT
    if precision not in PRECISIONS:
        raise PrecisionError(f"inference precision {precision!r} is not one of {', '.join(PRECISIONS)} "
                             f"({OPTION}, or inference_precision= from Python)")
    reason = unavailable(precision, device or torch.device("cpu"))
    if reason is not None:
        raise PrecisionError(f"{OPTION} {precision}: {reason}; or use {OPTION} fp32")
    return precision


def precision_of(model: nn.Module) -> str:
    return getattr(model, "resmlp_inference_precision", DEFAULT)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def convert_(model: nn.Module, precision: Optional[str]) -> nn.Module:
    """Make ``model`` (an evaluation-mode fairseq model) compute in ``precision``, in place;
    returns it. Converting again to the same precision does nothing; to another one, raises
    (the weights would be those of the first conversion)."""
    precision = check(precision, _device_of(model))
    done = precision_of(model)
    if done not in (precision, DEFAULT):
        raise PrecisionError(f"this model was already converted to {done}; load it again for {precision}")
    if done != precision:
        projection = _output_projection(model)
        if precision == "int8":
            _quantize_linears_(model, keep=projection)  # from the fp32 weights: one rounding, not two
        model._apply(_to_bf16)
        if projection is not None:
            projection.register_forward_hook(exact_top_logits)
    model.resmlp_inference_precision = precision
    return model


def _output_projection(model: nn.Module) -> Optional[nn.Linear]:
    """The decoder's output projection (fairseq's ``decoder.output_projection``, ours too), when
    it is a plain bias-free linear layer; None otherwise (an adaptive softmax, no decoder)."""
    projection = getattr(getattr(model, "decoder", None), "output_projection", None)
    if type(projection) is nn.Linear and projection.bias is None:
        return projection
    return None


def exact_top_logits(projection: nn.Linear, inputs, logits: Tensor, k: int = EXACT_LOGITS) -> Tensor:
    """A forward hook of a low-precision output projection: its ``logits`` in fp32, with the
    ``k`` largest of each position recomputed from the same weights and features in fp32
    arithmetic (k x d multiply-adds per position against the vocabulary's V x d). The
    log-softmax's normaliser is dominated by those same words, so the scores beam search
    compares are fp32's to within the features' own rounding."""
    features, weight = inputs[0], projection.weight
    logits = logits.float()
    top = logits.topk(min(k, logits.size(-1)), dim=-1).indices
    rows = F.embedding(top, weight).float()  # (..., k, d)
    exact = torch.matmul(rows, features.float().unsqueeze(-1)).squeeze(-1)
    return logits.scatter_(-1, top, exact)


def _to_bf16(tensor: torch.Tensor) -> torch.Tensor:
    """Plain floating-point tensors (parameters, buffers) to bf16; quantized ones stay as they are."""
    if type(tensor) in (torch.Tensor, nn.Parameter) and tensor.is_floating_point():
        return tensor.to(torch.bfloat16)
    return tensor


def _quantize_linears_(model: nn.Module, keep: Optional[nn.Module] = None) -> None:
    """int8 weights for every plain ``nn.Linear`` of ``model`` but ``keep``."""
    from fairseq.modules import MultiheadAttention
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def is_linear(module, name=""):
        return type(module) is nn.Linear and type(module.weight.data) is torch.Tensor and module is not keep

    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=is_linear)
    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            # fairseq's own attention path, which calls the projections as modules: torch's
            # (F.multi_head_attention_forward, full passes) reads their weights as plain tensors
            module.skip_embed_dim_check = True


# The shim: the option, its value in the config, its application ---------------------------


def _adding_option(add_generation_args):
    @functools.wraps(add_generation_args)
    def wrapper(parser):
        group = add_generation_args(parser)
        group.add_argument(OPTION, choices=PRECISIONS, default=None, metavar="{" + ",".join(PRECISIONS) + "}",
                           help=HELP + f" (default: {DEFAULT}; --bf16 means bf16)")
        return group

    wrapper.resmlp_adds_precision = True
    return wrapper


def from_args(args) -> Optional[str]:
    """The precision a generation command line asks for: ``--inference-precision``, or bf16
    for fairseq's ``--bf16``; None when the parser has no such option (not a generation command)."""
    if not hasattr(args, "inference_precision"):
        return None
    chosen = args.inference_precision
    if getattr(args, "bf16", False):
        if chosen not in (None, "bf16"):
            raise PrecisionError(f"--bf16 and {OPTION} {chosen} contradict each other: give one of them")
        return "bf16"
    return chosen or DEFAULT


def _keeping_precision(convert_namespace_to_omegaconf):
    @functools.wraps(convert_namespace_to_omegaconf)
    def wrapper(args):
        cfg = convert_namespace_to_omegaconf(args)
        precision = from_args(args)
        if precision is not None and "generation" in cfg:
            from omegaconf import open_dict

            with open_dict(cfg.generation):
                cfg.generation.inference_precision = precision
        return cfg

    wrapper.resmlp_keeps_precision = True
    return wrapper


def _applying_precision(prepare_for_inference_):
    @functools.wraps(prepare_for_inference_)
    def wrapper(self, cfg, *args, **kwargs):
        prepare_for_inference_(self, cfg, *args, **kwargs)
        generation = getattr(cfg, "generation", None)
        precision = generation.get("inference_precision", None) if hasattr(generation, "get") else None
        if precision is not None:
            convert_(self, precision)
            if precision != DEFAULT:
                logger.info(f"{type(self).__name__}: inference precision {precision}")

    wrapper.resmlp_applies_precision = True
    return wrapper


CLI_MODULES = ("fairseq_cli.generate", "fairseq_cli.interactive")


def apply() -> None:
    """Shim ``inference_precision``. Idempotent."""
    from fairseq import options
    from fairseq.dataclass import utils as dataclass_utils
    from fairseq.models import BaseFairseqModel

    if not getattr(options.add_generation_args, "resmlp_adds_precision", False):
        options.add_generation_args = _adding_option(options.add_generation_args)
    modules = [dataclass_utils] + [sys.modules[name] for name in CLI_MODULES if name in sys.modules]
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) in CLI_MODULES:
        modules.append(main)  # python -m fairseq_cli.generate
    for module in modules:  # the CLIs imported the function by name before the plugin was loaded
        function = getattr(module, "convert_namespace_to_omegaconf", None)
        if function is not None and not getattr(function, "resmlp_keeps_precision", False):
            module.convert_namespace_to_omegaconf = _keeping_precision(function)
    if not getattr(BaseFairseqModel.prepare_for_inference_, "resmlp_applies_precision", False):
        BaseFairseqModel.prepare_for_inference_ = _applying_precision(BaseFairseqModel.prepare_for_inference_)
