"""Translating from Python: fairseq's hub interface for ResMLP models.

``ResMLPModel.from_pretrained`` (fairseq's ``BaseFairseqModel.from_pretrained``) returns
fairseq's ``GeneratorHubInterface``, from a fairseq checkpoint (a pickle) or from a
tensors-only export of ``resmlp-export-safe`` (nothing unpickled)::

    from resmlp_mt.models.resmlp_translation import ResMLPModel
    en_de = ResMLPModel.from_pretrained("checkpoints", checkpoint_file="checkpoint_best.pt",
                                        data_name_or_path="/abs/path/data-bin",
                                        bpe="sentencepiece", sentencepiece_model="spm.model")
    en_de.translate("A man is riding a bike.")         # a string
    en_de.translate(["One sentence.", "Two."], beam=4)  # a list

    en_de = ResMLPModel.from_pretrained("exported", checkpoint_file="en_de.safetensors",
                                        bpe="sentencepiece", sentencepiece_model="spm.model")
    # or: resmlp_mt.safe_load.from_pretrained("exported/en_de", bpe=..., sentencepiece_model=...)

Keyword arguments are fairseq's command-line options, spelled with underscores (``beam``,
``bpe``, ``sentencepiece_model``, ``tokenizer``, ``print_alignment``, ...): at loading they
override the checkpoint's settings, at ``translate``/``generate`` they apply to that call.
An export carries its dictionaries, so ``data_name_or_path`` is not needed for it.

``inference_precision="bf16"`` or ``"int8"`` (default ``"fp32"``) makes the models compute in
that precision (``resmlp_mt.precision``, the same conversion as fairseq-generate's
``--inference-precision``); ``hub.models[0].resmlp_inference_precision`` says which.

The one change to fairseq's interface: ``generate(..., print_alignment="hard")`` (or
``"soft"``, or ``replace_unk``) also switches the decoders' alignment output on for that
call. fairseq switches it once, when the interface is built, from the loading options;
the Transformer does not need that (it always computes its alignment), ResMLP's decoder
computes it only when asked (``ResMLPDecoder.forward``).
"""
import os
from types import SimpleNamespace

import torch
from fairseq import hub_utils

from . import precision, replace_unk

_EXPORT_SUFFIXES = (".safetensors", ".json")


class ResMLPHubInterface(hub_utils.GeneratorHubInterface):
    """fairseq's ``GeneratorHubInterface``; alignments asked for in one call are computed in it."""

    def generate(self, tokenized_sentences, *args, **kwargs):
        generation = SimpleNamespace(**{k: kwargs.get(k, getattr(self.cfg.generation, k, None))
                                        for k in ("print_alignment", "replace_unk")})
        decoders = [m.decoder for m in self.models if hasattr(getattr(m, "decoder", None), "need_attn")]
        before = [d.need_attn for d in decoders]
        for d in decoders:
            d.need_attn = replace_unk.wanted(generation)
        try:
            return super().generate(tokenized_sentences, *args, **kwargs)
        finally:
            for d, need in zip(decoders, before):
                d.need_attn = need


def is_export(model_name_or_path: str, checkpoint_file: str) -> bool:
    """Whether ``checkpoint_file`` names a ``resmlp-export-safe`` export (PREFIX.safetensors,
    PREFIX.json or PREFIX itself) rather than a fairseq checkpoint."""
    if checkpoint_file.endswith(_EXPORT_SUFFIXES):
        return True
    return os.path.isfile(os.path.join(model_name_or_path, checkpoint_file) + ".json")


def export_prefix(model_name_or_path: str, checkpoint_file: str) -> str:
    path = os.path.join(model_name_or_path, checkpoint_file)
    for suffix in _EXPORT_SUFFIXES:
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


def from_pretrained(model_name_or_path: str, checkpoint_file: str = "model.pt", data_name_or_path: str = ".",
                    archive_map=None, **kwargs) -> ResMLPHubInterface:
    """``ResMLPModel.from_pretrained``: fairseq's loading for a checkpoint, ``from_export``
    for an export (the file's name ends in .safetensors or .json, or PREFIX.json exists)."""
    if is_export(model_name_or_path, checkpoint_file):
        return from_export(export_prefix(model_name_or_path, checkpoint_file), **kwargs)
    inference_precision = precision.check(kwargs.pop("inference_precision", None))
    x = hub_utils.from_pretrained(model_name_or_path, checkpoint_file, data_name_or_path,
                                  archive_map=archive_map, **kwargs)
    return with_precision(ResMLPHubInterface(x["args"], x["task"], x["models"]), inference_precision)


def with_precision(hub: ResMLPHubInterface, inference_precision: str) -> ResMLPHubInterface:
    """The hub with its models converted to ``inference_precision`` (``resmlp_mt.precision``)."""
    for model in hub.models:
        precision.convert_(model, inference_precision)
    return hub


def from_export(prefix: str, device: str = "cpu", **kwargs) -> ResMLPHubInterface:
    """The hub interface over ``resmlp_mt.safe_load.load_model(prefix)``: JSON, text and
    safetensors are read, nothing is unpickled. ``kwargs`` are fairseq options as for
    ``from_pretrained`` (``bpe``, ``sentencepiece_model``, ``beam``, ...) on fairseq's defaults."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.dataclass.utils import overwrite_args_by_name
    from fairseq.tasks.translation import TranslationConfig, TranslationTask
    from omegaconf import OmegaConf

    from .safe_load import load_model, read_config

    inference_precision = precision.check(kwargs.pop("inference_precision", None), torch.device(device))
    config = read_config(prefix)
    model = load_model(prefix, device=device)
    cfg = OmegaConf.structured(FairseqConfig(task=TranslationConfig(
        data=os.path.dirname(os.path.abspath(prefix)),
        source_lang=config["source_lang"],
        target_lang=config["target_lang"],
    )))
    overwrite_args_by_name(cfg, kwargs)
    task = TranslationTask(cfg.task, model.encoder.dictionary, model.decoder.dictionary)
    hub = ResMLPHubInterface(cfg, task, [model]).to(device)
    return with_precision(hub, inference_precision)
