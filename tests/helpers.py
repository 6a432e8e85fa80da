"""Shared helpers for the tests: tiny dictionaries and models built without the CLI."""
import argparse
import os
import subprocess
import sys
from types import SimpleNamespace

import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY

import resmlp_mt  # noqa: F401  (registers the archs)
from resmlp_mt.models.resmlp_translation import ResMLPModel, ResMLPTranslationConfig

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(REPO, "resmlp_mt")


def dictionary(size: int) -> Dictionary:
    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def arch_config(arch: str, **overrides) -> ResMLPTranslationConfig:
    """The config fairseq derives for ``--arch ARCH`` plus command-line ``overrides``."""
    args = argparse.Namespace(**overrides)
    ARCH_CONFIG_REGISTRY[arch](args)
    return ResMLPTranslationConfig.from_namespace(args)


def build_translation_model(arch="resmlp_small", vocab=40, **overrides) -> ResMLPModel:
    d = dictionary(vocab)
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    model = ResMLPModel.build_model(arch_config(arch, **overrides), task)
    return model.eval()


def run_cli(tool: str, *args, cwd=None, check=True, timeout=900, env=None):
    """Run a fairseq console tool of this environment; return the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        [os.path.join(BIN, tool), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def random_tokens(batch, length, vocab, pad=1, nspecial=4, generator=None):
    return torch.randint(nspecial, vocab, (batch, length), generator=generator)
