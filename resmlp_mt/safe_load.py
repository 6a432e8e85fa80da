"""Tensors-only inference for ResMLP translation models: no pickle on the load path.

A fairseq checkpoint is a Python pickle (config, optimizer state, meters): loading one
can run code that is in it, and ``torch.load(..., weights_only=True)`` is no general
way out (it refuses ``--eval-bleu`` checkpoints, whose saved meters hold numpy arrays,
and where it succeeds it still runs an unpickler over the file). To hand a model to
someone, or to serve it, export it once from a checkpoint you trust:

    resmlp-export-safe checkpoints/checkpoint_best.pt exported/en_de [--data data-bin/wmt14_en_de]
    # or: python -m resmlp_mt.safe_load ...

which writes, next to each other,

    exported/en_de.safetensors        the weights (a JSON header and raw tensor bytes)
    exported/en_de.json               arch, model config and language pair
    exported/en_de.dict.SRC.txt       fairseq's plain-text dictionaries, copied from
    exported/en_de.dict.TGT.txt       the data-bin the model was trained with

and load it with JSON, text and safetensors only::

    from resmlp_mt.safe_load import load_model
    model = load_model("exported/en_de")       # eval mode; model.encoder.dictionary, ...

Shared embeddings (``--share-all-embeddings``) are stored once and tied again on load.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
from types import SimpleNamespace
from typing import Optional, Sequence

import safetensors.torch
from fairseq.data import Dictionary

from .models.resmlp_translation import ResMLPModel, ResMLPTranslationConfig

FORMAT = "resmlp_mt.translation/1"
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ResMLPTranslationConfig) if f.name != "_name")


def export(checkpoint: str, prefix: str, data: Optional[str] = None) -> dict:
    """Write PREFIX.safetensors, PREFIX.json and PREFIX.dict.{src,tgt}.txt from a trusted checkpoint."""
    from fairseq import checkpoint_utils, tasks
    from fairseq.models import ARCH_MODEL_REGISTRY

    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)  # a pickle: trusted input only
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise ValueError(f"{checkpoint} has no fairseq config (cfg.model): is it a fairseq checkpoint?")
    arch = cfg.model.get("_name")
    if ARCH_MODEL_REGISTRY.get(arch) is not ResMLPModel:
        raise ValueError(f"{checkpoint} holds a {arch!r} model, not a ResMLP translation model")
    if data is not None:
        cfg.task.data = data
    root = str(cfg.task.data).split(os.pathsep)[0]
    task = tasks.setup_task(cfg.task)  # reads the dictionaries, infers the language pair
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)  # names any mismatch

    out_dir = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(out_dir, exist_ok=True)
    langs = {"source": task.cfg.source_lang, "target": task.cfg.target_lang}
    dictionaries = {}
    for side, lang in langs.items():
        name = f"{os.path.basename(prefix)}.dict.{lang}.txt"
        shutil.copyfile(os.path.join(root, f"dict.{lang}.txt"), os.path.join(out_dir, name))
        dictionaries[side] = name
    config = {
        "format": FORMAT,
        "arch": arch,
        "model": {k: _plain(cfg.model[k]) for k in _CONFIG_FIELDS if k in cfg.model},
        "source_lang": langs["source"],
        "target_lang": langs["target"],
        "dictionaries": dictionaries,
        "exported_from": os.path.abspath(checkpoint),
    }
    safetensors.torch.save_model(model, prefix + ".safetensors", metadata={"format": "pt", "arch": arch})
    with open(prefix + ".json", "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    return config


def load_model(prefix: str, device: str = "cpu") -> ResMLPModel:
    """Rebuild the model from PREFIX.json and its dictionaries, then read PREFIX.safetensors."""
    with open(prefix + ".json") as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise ValueError(f"{prefix}.json is not a {FORMAT} export (format: {config.get('format')!r})")
    unknown = set(config["model"]) - set(_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{prefix}.json has model settings this version does not know: {sorted(unknown)}")
    cfg = ResMLPTranslationConfig(**config["model"])
    directory = os.path.dirname(os.path.abspath(prefix))
    files = [os.path.join(directory, config["dictionaries"][side]) for side in ("source", "target")]
    src_dict = Dictionary.load(files[0])
    tgt_dict = src_dict if _same_bytes(*files) else Dictionary.load(files[1])
    model = ResMLPModel.build_model(cfg, SimpleNamespace(source_dictionary=src_dict, target_dictionary=tgt_dict))
    model.dictionary_files = tuple(files)  # named by the shape checks in load_state_dict
    safetensors.torch.load_model(model, prefix + ".safetensors", strict=True, device=device)
    return model.to(device).eval()


def _plain(value):
    """A config value as JSON has it (ChoiceEnum members become their strings)."""
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _same_bytes(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="resmlp-export-safe",
        description="Export a trusted ResMLP translation checkpoint to safetensors + JSON + dictionaries, "
        "loadable with resmlp_mt.safe_load.load_model without unpickling anything.",
    )
    parser.add_argument("checkpoint", help="fairseq checkpoint (a pickle: export only checkpoints you trust)")
    parser.add_argument("prefix", help="output prefix: writes PREFIX.safetensors, PREFIX.json, PREFIX.dict.*.txt")
    parser.add_argument("--data", help="data-bin with the model's dict.*.txt (default: the one it was trained on)")
    args = parser.parse_args(argv)
    config = export(args.checkpoint, args.prefix, data=args.data)
    written = [args.prefix + ".safetensors", args.prefix + ".json"] + [
        os.path.join(os.path.dirname(os.path.abspath(args.prefix)), name) for name in config["dictionaries"].values()
    ]
    print("\n".join(dict.fromkeys(written)), file=sys.stdout)


if __name__ == "__main__":
    main()
