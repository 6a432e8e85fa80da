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

or translate through fairseq's hub interface (``from_pretrained`` below, README "From Python")::

    en_de = from_pretrained("exported/en_de", bpe="sentencepiece", sentencepiece_model="spm.model")
    en_de.translate("A man is riding a bike.")

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

from . import checkpoint_file
from .models.resmlp_translation import ResMLPModel, ResMLPTranslationConfig

FORMAT = "resmlp_mt.translation/1"
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ResMLPTranslationConfig) if f.name != "_name")


def export(checkpoint: str, prefix: str, data: Optional[str] = None) -> dict:
    """Write PREFIX.safetensors, PREFIX.json and PREFIX.dict.{src,tgt}.txt from a trusted checkpoint.

    The files appear together or not at all (written under temporary names, then renamed), all
    with the mode of an ordinary new file (safetensors alone would make its file 0600), and the
    JSON names the checkpoint by its file name only: it is meant to be shared."""
    from fairseq import tasks
    from fairseq.models import ARCH_MODEL_REGISTRY

    state = checkpoint_file.load_fairseq(checkpoint, "a fairseq checkpoint of a ResMLP translation model")
    cfg = state.get("cfg")
    if cfg is None or cfg.get("model") is None:
        raise ValueError(f"{checkpoint} has no fairseq config (cfg.model): is it a fairseq checkpoint?")
    arch = cfg.model.get("_name")
    if ARCH_MODEL_REGISTRY.get(arch) is not ResMLPModel:
        raise ValueError(f"{checkpoint} holds a {arch!r} model, not a ResMLP translation model")
    if data is not None:
        cfg.task.data = data
    root = str(cfg.task.data).split(os.pathsep)[0]
    if not os.path.isdir(root):
        where = "" if os.path.isabs(root) else f" (a relative path, read from the current directory {os.getcwd()})"
        source = "--data" if data is not None else f"{checkpoint}'s config"
        raise FileNotFoundError(f"the data-bin {root}{where}, named by {source}, is not a directory: pass --data "
                                "DATA_BIN, the data-bin the model was trained with (it holds dict.SRC.txt, "
                                "dict.TGT.txt)")
    try:
        task = tasks.setup_task(cfg.task)  # reads the dictionaries, infers the language pair
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the data-bin {root} lacks {e.filename or e}: pass --data DATA_BIN, the data-bin "
                                "the model was trained with (it holds dict.SRC.txt, dict.TGT.txt)") from None
    model = task.build_model(cfg.model)
    model.load_state_dict(state["model"], strict=True, model_cfg=cfg.model)  # names any mismatch

    out_dir = os.path.dirname(os.path.abspath(prefix))
    base = os.path.basename(prefix)
    langs = {"source": task.cfg.source_lang, "target": task.cfg.target_lang}
    dictionaries = {side: f"{base}.dict.{lang}.txt" for side, lang in langs.items()}
    config = {
        "format": FORMAT,
        "arch": arch,
        "model": {k: _plain(cfg.model[k]) for k in _CONFIG_FIELDS if k in cfg.model},
        "source_lang": langs["source"],
        "target_lang": langs["target"],
        "dictionaries": dictionaries,
        "exported_from": os.path.basename(checkpoint),
    }
    os.makedirs(out_dir, exist_ok=True)
    tmp = {}  # final path -> temporary path
    try:
        for side, lang in langs.items():
            final = os.path.join(out_dir, dictionaries[side])
            tmp[final] = _tmp_name(final)
            shutil.copyfile(os.path.join(root, f"dict.{lang}.txt"), tmp[final])
        tmp[prefix + ".safetensors"] = _tmp_name(prefix + ".safetensors")
        safetensors.torch.save_model(model, tmp[prefix + ".safetensors"], metadata={"format": "pt", "arch": arch})
        tmp[prefix + ".json"] = _tmp_name(prefix + ".json")
        with open(tmp[prefix + ".json"], "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        mode = _new_file_mode()
        for final, path in tmp.items():
            os.chmod(path, mode)
        for final, path in tmp.items():
            os.replace(path, final)
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    return config


def _tmp_name(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


def _new_file_mode() -> int:
    """0666 less the umask: the mode ``open(path, "w")`` gives a new file (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def read_config(prefix: str) -> dict:
    """PREFIX.json, checked: an export of this format with model settings this version knows."""
    with open(prefix + ".json") as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise ValueError(f"{prefix}.json is not a {FORMAT} export (format: {config.get('format')!r})")
    unknown = set(config["model"]) - set(_CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"{prefix}.json has model settings this version does not know: {sorted(unknown)}")
    return config


def load_model(prefix: str, device: str = "cpu") -> ResMLPModel:
    """Rebuild the model from PREFIX.json and its dictionaries, then read PREFIX.safetensors."""
    config = read_config(prefix)
    cfg = ResMLPTranslationConfig(**config["model"])
    directory = os.path.dirname(os.path.abspath(prefix))
    files = [os.path.join(directory, config["dictionaries"][side]) for side in ("source", "target")]
    src_dict = Dictionary.load(files[0])
    tgt_dict = src_dict if _same_bytes(*files) else Dictionary.load(files[1])
    model = ResMLPModel.build_model(cfg, SimpleNamespace(source_dictionary=src_dict, target_dictionary=tgt_dict))
    model.dictionary_files = tuple(files)  # named by the shape checks in load_state_dict
    safetensors.torch.load_model(model, prefix + ".safetensors", strict=True, device=device)
    return model.to(device).eval()


def from_pretrained(prefix: str, device: str = "cpu", **kwargs):
    """fairseq's hub interface (``translate``, ``sample``, ``generate``) over an export,
    nothing unpickled: ``from_pretrained("exported/en_de", bpe="sentencepiece",
    sentencepiece_model="spm.model").translate("...")``. ``kwargs`` are fairseq options
    (``bpe``, ``sentencepiece_model``, ``tokenizer``, ``beam``, ...), as for
    ``ResMLPModel.from_pretrained``, which takes the same export as
    ``from_pretrained("exported", checkpoint_file="en_de.safetensors", ...)``."""
    from .hub import from_export

    return from_export(prefix, device=device, **kwargs)


def _plain(value):
    """A config value as JSON has it (ChoiceEnum members become their strings)."""
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def _same_bytes(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="resmlp-export-safe",
        description="Export a trusted ResMLP translation checkpoint to safetensors + JSON + dictionaries, "
        "loadable with resmlp_mt.safe_load.load_model without unpickling anything.",
    )
    parser.add_argument("checkpoint", help="fairseq checkpoint (a pickle: export only checkpoints you trust)")
    parser.add_argument("prefix", help="output prefix: writes PREFIX.safetensors, PREFIX.json, PREFIX.dict.*.txt")
    parser.add_argument("--data", help="data-bin with the model's dict.*.txt (default: the one it was trained on)")
    args = parser.parse_args(argv)
    try:
        config = export(args.checkpoint, args.prefix, data=args.data)
    except OSError as e:  # FileNotFoundError with our message, or a directory that cannot be written
        print(f"error: {e if e.strerror is None else f'cannot write {e.filename}: {e.strerror}'}", file=sys.stderr)
        return 2
    except checkpoint_file.NotACheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:  # another model, weights that do not fit
        print(f"error: cannot export {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    written = [args.prefix + ".safetensors", args.prefix + ".json"] + [
        os.path.join(os.path.dirname(os.path.abspath(args.prefix)), name) for name in config["dictionaries"].values()
    ]
    print("\n".join(dict.fromkeys(written)), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
