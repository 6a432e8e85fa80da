"""The paper's class-MLP variant: its parameter count by hand, a brute-force reference, fairseq end to end."""
import argparse
import os
import re

import pytest
import torch
import torch.nn.functional as F
from fairseq.models import ARCH_CONFIG_REGISTRY

from helpers import USER_DIR, run_cli
from resmlp_mt import convert
from resmlp_mt.models.resmlp_image import ResMLPImageModel, build_resmlp_image
from resmlp_mt.modules import ClassMLP
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)


def count(model):
    return sum(p.numel() for p in model.parameters())


def randomize(module, seed=0):
    """Random values everywhere (Aff, LayerScale and biases start at constants, which would hide
    a swapped or unused tensor)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return module


def test_s12_class_mlp_has_the_papers_17_7m_parameters():
    d, n, patch, depth, classes, channels = 384, 196, 16, 12, 1000, 3
    hidden = 4 * d
    aff = 2 * d  # alpha, beta
    mlp = d * hidden + hidden + hidden * d + d
    block = aff + (n * n + n) + d + aff + mlp + d  # Aff, token mixing A and b, LayerScale; Aff, MLP, LayerScale
    s12 = (channels * patch * patch * d + d) + depth * block + aff + (d * classes + classes)
    assert s12 == 15_350_872  # the paper's and timm's ResMLP-S12
    layer = aff + (n + 1) + 1 + d + aff + mlp + d  # Aff, one weight per [cls, patches] and a bias, LayerScale; MLP
    stage = d + 2 * layer  # the class token and 2 layers
    with torch.device("meta"):
        model = build_resmlp_image("resmlp_s12_class_mlp")
        s24 = build_resmlp_image("resmlp_s24_class_mlp")
    assert count(model) == s12 + stage == 17_719_396
    assert round(count(model) / 1e6, 1) == 17.7
    assert count(s24) == 30_020_680 + stage
    # The designs the count rules out: a d x d channel linear per layer, or per-channel token weights.
    assert round((s12 + stage + 2 * (d * d + d)) / 1e6, 1) == 18.0
    assert round((s12 + stage + 2 * (n + 1) * (d - 1)) / 1e6, 1) == 17.9


def brute_force(stage: ClassMLP, patches: torch.Tensor) -> torch.Tensor:
    """The stage token by token and image by image, with plain arithmetic on its weights."""
    out = []
    for b in range(patches.size(1)):
        cls = stage.cls_token.clone()
        for layer in stage.layers:
            tokens = [cls] + [patches[t, b] for t in range(patches.size(0))]
            mixed = layer.token_bias.clone()
            for w, z in zip(layer.token_weight, tokens):
                mixed = mixed + w * (layer.norm1.alpha * z + layer.norm1.beta)
            cls = cls + layer.ls1.gamma * mixed
            h = layer.norm2.alpha * cls + layer.norm2.beta
            h = layer.mlp.fc2.weight @ F.gelu(layer.mlp.fc1.weight @ h + layer.mlp.fc1.bias) + layer.mlp.fc2.bias
            cls = cls + layer.ls2.gamma * h
        out.append(cls)
    return torch.stack(out)


def test_stage_matches_brute_force():
    stage = randomize(ClassMLP(6, num_patches=5, depth=2, hidden_dim=10, layerscale_init=0.3)).double()
    patches = torch.randn(5, 2, 6, dtype=torch.double)
    with torch.no_grad():
        torch.testing.assert_close(stage(patches), brute_force(stage, patches), rtol=1e-12, atol=1e-12)


def tiny(**overrides):
    config = dict(num_classes=3, img_size=12, in_chans=1, embed_dim=8, depth=2, **overrides)
    return build_resmlp_image("resmlp_tiny_28_class_mlp", **config)


def test_model_is_trunk_then_stage_then_norm_and_head():
    model = randomize(tiny()).double().eval()
    images = torch.randn(2, 1, 12, 12, dtype=torch.double)
    with torch.no_grad():
        x = model.patch_embed(images).flatten(2).permute(2, 0, 1)
        for block in model.blocks:
            x = block.plain_forward(x)
        expected = model.head(model.norm(brute_force(model.class_mlp, x)))
        torch.testing.assert_close(model(images), expected, rtol=1e-10, atol=1e-10)
        # Each image alone gives what it gives in the batch.
        torch.testing.assert_close(model(images[1:]), model(images)[1:], rtol=1e-10, atol=1e-10)


def test_stage_reads_every_patch_and_the_class_token():
    stage = randomize(ClassMLP(6, num_patches=5, depth=2, hidden_dim=10, layerscale_init=0.3))
    patches = torch.randn(5, 2, 6, requires_grad=True)
    stage(patches)[0].sum().backward()
    per_patch = patches.grad.abs().sum(-1)  # (patches, batch)
    assert torch.all(per_patch[:, 0] > 0) and torch.all(per_patch[:, 1] == 0)  # image 0 reads its own patches only
    assert stage.cls_token.grad.abs().sum() > 0


def test_every_patch_of_the_image_moves_the_logits():
    model = randomize(tiny()).eval()
    images = torch.randn(1, 1, 12, 12)
    with torch.no_grad():
        logits = model(images)
        for i in range(3):
            for j in range(3):
                changed = images.clone()
                changed[..., 4 * i: 4 * i + 4, 4 * j: 4 * j + 4] += 1.0
                assert (model(changed) - logits).abs().max() > 1e-4, (i, j)


def test_gradients_reach_every_parameter_at_initialisation():
    torch.manual_seed(0)
    model = tiny()  # the arch's own initialisation, as training starts
    loss = F.cross_entropy(model(torch.randn(4, 1, 12, 12)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not silent
    assert model.blocks[0].token_mixing.weight.grad.abs().sum() > 0 and model.patch_embed.weight.grad.abs().sum() > 0


def test_archs_registered_and_checkpoints_of_the_other_pooling_named():
    args, plain = argparse.Namespace(), argparse.Namespace()
    ARCH_CONFIG_REGISTRY["resmlp_tiny_28_class_mlp"](args)
    ARCH_CONFIG_REGISTRY["resmlp_tiny_28"](plain)
    assert (args.img_size, args.embed_dim, args.depth, args.class_mlp_layers) == (28, 64, 4, 2)
    assert {**vars(args), "class_mlp_layers": 0} == vars(plain)  # the same trunk
    mean = ResMLPImageModel(num_classes=3, in_chans=1, img_size=12, patch_size=4, embed_dim=8, depth=2)
    with pytest.raises(ValueError, match="checkpoint has no class-MLP stage .* this model 2 class-MLP layers"):
        tiny().load_state_dict(mean.state_dict())
    with pytest.raises(ValueError, match="checkpoint has 2 class-MLP layers, this model no class-MLP stage"):
        mean.load_state_dict(tiny().state_dict())


def test_convert_reads_the_stage_off_the_weights_and_refuses_timm():
    state = build_resmlp_image("resmlp_tiny_28_class_mlp", num_classes=10, in_chans=1).state_dict()
    config = convert.model_config(state)
    assert config["class_mlp_layers"] == 2 and convert.arch_name(config) == "resmlp_tiny_28_class_mlp"
    assert convert.arch_name({**config, "class_mlp_layers": 0}) == "resmlp_tiny_28"
    with pytest.raises(ValueError, match="class-MLP model .* timm's ResMLP has no class-MLP stage"):
        convert.checked_timm_state(state)


@pytest.mark.slow
def test_fairseq_train_and_validate_the_tiny_class_mlp_arch(image_folder_tree, tmp_path, capsys):  # noqa: F811
    out = run_cli(
        "fairseq-train", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
        "--arch", "resmlp_tiny_28_class_mlp", "--img-size", "16", "--embed-dim", "16", "--depth", "2",
        "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb", "--lr", "5e-3",
        "--max-update", "3", "--batch-size", "4", "--seed", "1", "--cpu", "--save-dir", tmp_path,
        "--log-format", "simple", "--log-interval", "1",
    )
    log = out.stdout + out.stderr
    assert re.findall(r"num_updates=(\d+)", log) == ["1", "2", "3"], log[-3000:]
    checkpoint = os.path.join(tmp_path, "checkpoint_last.pt")
    out = run_cli("fairseq-validate", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
                  "--path", checkpoint, "--valid-subset", "valid", "--batch-size", "8", "--cpu")
    log = out.stdout + out.stderr
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nsentences 13 \| accuracy [\d.]+", log), log[-3000:]

    assert convert.main([checkpoint, str(tmp_path / "timm.pth"), "--to", "timm"]) == 2
    assert "timm's ResMLP has no class-MLP stage" in capsys.readouterr().err
