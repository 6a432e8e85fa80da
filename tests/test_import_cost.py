"""The plugin imports neither timm nor torchvision (nor torchao): every fairseq process with
``--user-dir resmlp_mt`` imports it, and timm alone costs about 4 s of CPU (torchvision,
torch._dynamo) that a translation run never needs. The image code imports them where it
uses them; the few things copied from timm instead are compared with timm's here."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from resmlp_mt.image import data
from resmlp_mt.modules.dropout import Dropout
from resmlp_mt.modules.mlp import Mlp
from resmlp_mt.modules.stochastic_depth import DropPath

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("timm", "torchvision", "torchao")

# Imports the plugin, then builds a translation model and trains one step of it with
# dropout and stochastic depth: all without timm.
TRANSLATION_RUN = f"""
import sys
sys.path.insert(0, {os.path.join(REPO, "tests")!r})
import fairseq, resmlp_mt
assert resmlp_mt.__file__.startswith({REPO!r}), resmlp_mt.__file__
heavy = lambda: sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
print("after import:", heavy())
import torch
from helpers import build_translation_model
model = build_translation_model(arch="resmlp_small", dropout=0.1, drop_path=0.1).train()
tokens = torch.randint(4, 40, (2, 7))
out, _ = model(tokens, torch.tensor([7, 7]), tokens)
out.sum().backward()
print("after a model:", heavy())
"""


@pytest.mark.slow
def test_importing_the_plugin_and_training_a_translation_model_import_no_timm():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", TRANSLATION_RUN], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["after import: []", "after a model: []"], proc.stdout


def test_imagenet_statistics_are_timms():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    assert data.IMAGENET_DEFAULT_MEAN == IMAGENET_DEFAULT_MEAN
    assert data.IMAGENET_DEFAULT_STD == IMAGENET_DEFAULT_STD


def assert_same_outputs(ours, theirs, x, seed):
    """Equal outputs in eval and in training mode, each drawing from the same random state."""
    for training in (False, True):
        ours.train(training)
        theirs.train(training)
        torch.manual_seed(seed)
        expected = theirs(x)
        torch.manual_seed(seed)
        assert torch.equal(ours(x), expected)


class TimeFirst(nn.Module):
    """A time-first module applied to batch-first activations."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x.transpose(0, 1)).transpose(0, 1)


@pytest.mark.parametrize("drop", [0.0, 0.3, (0.3, 0.0)])
def test_mlp_is_timms(drop):
    """The same state dict, the same initial weights under one seed, the same outputs with dropout
    (timm's layers with our dropout modules, whose cheaper CPU masks are not torch's draws:
    ``tests/test_dropout.py`` checks them)."""
    from timm.layers import Mlp as TimmMlp

    torch.manual_seed(0)
    ours = Mlp(8, 32, drop=drop)
    torch.manual_seed(0)
    theirs = TimmMlp(8, 32, act_layer=nn.GELU, drop=drop)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    theirs.drop1, theirs.drop2 = Dropout(theirs.drop1.p), Dropout(theirs.drop2.p)
    assert_same_outputs(ours, theirs, torch.randn(5, 3, 8), seed=1)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.75])
def test_drop_path_is_timms_on_the_batch_dimension(p):
    """timm's DropPath on batch-first activations is ours on the same activations time-first."""
    from timm.layers import DropPath as TimmDropPath

    ours, theirs = DropPath(p), TimmDropPath(p)
    time_first = TimeFirst(ours)
    assert_same_outputs(time_first, theirs, torch.randn(16, 3, 4), seed=2)  # (batch, tokens, channels) for timm


def test_drop_path_drops_whole_examples_of_a_block():
    """In a training block, each example's branches are all kept or all dropped, at every token."""
    from resmlp_mt.modules import ResMLPBlock

    torch.manual_seed(0)
    block = ResMLPBlock(8, 6, drop_path=0.5, layerscale_init=1.0).train()
    x = torch.randn(6, 32, 8)  # (tokens, batch, channels)
    out = block(x)
    with torch.no_grad():
        dropped = (out - x).abs().amax(dim=(0, 2)) == 0  # per example: nothing added at any token
    assert 4 < dropped.sum() < 28  # about half of 32 examples, each whole
    kept = ~dropped
    assert ((out - x)[:, kept].abs() > 0).float().mean() > 0.99
