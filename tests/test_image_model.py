"""The ResMLP image model: the paper's parameter counts, timm's, and input checks."""
import pytest
import timm
import torch

import resmlp_mt  # noqa: F401
from resmlp_mt.models.resmlp_image import ARCHS, InputSizeError, ResMLPImageModel, build_resmlp_image

PAPER = {  # 1000 classes at 224x224
    ("resmlp_s12", "resmlp_12_224"): 15_350_872,
    ("resmlp_s24", "resmlp_24_224"): 30_020_680,
    ("resmlp_s36", "resmlp_36_224"): 44_690_488,
    ("resmlp_b24", "resmlp_big_24_224"): 129_138_280,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("ours,theirs", PAPER)
def test_parameter_counts_match_the_paper_and_timm(ours, theirs):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = build_resmlp_image(ours)
        reference = timm.create_model(theirs, pretrained=False)
    assert count(model) == PAPER[ours, theirs] == count(reference)


def test_layer_scale_init_and_layout():
    for arch, init in (("resmlp_s12", 0.1), ("resmlp_s24", 1e-5), ("resmlp_s36", 1e-6), ("resmlp_b24", 1e-6)):
        assert ARCHS[arch]["layerscale_init"] == init
    model = build_resmlp_image("resmlp_tiny_28", num_classes=10, in_chans=1)
    assert model.grid_size == 7 and model.blocks[0].token_mixing.mode == "full"
    assert torch.all(model.blocks[-1].ls2.gamma == 0.1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_wrong_resolution_names_both_sizes():
    model = build_resmlp_image("resmlp_tiny_32", num_classes=10)
    with pytest.raises(InputSizeError, match="takes 3x32x32 images .* got 3x28x28"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(InputSizeError, match="got 1x32x32"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown arch 'resmlp_s13'"):
        build_resmlp_image("resmlp_s13")


def test_checkpoint_with_another_class_count_names_both():
    trained = ResMLPImageModel(num_classes=2, img_size=16, patch_size=4, embed_dim=8, depth=1)
    model = ResMLPImageModel(num_classes=3, img_size=16, patch_size=4, embed_dim=8, depth=1)
    with pytest.raises(ValueError, match="checkpoint classifies 2 classes but the data have 3"):
        model.load_state_dict(trained.state_dict())
    other_grid = ResMLPImageModel(num_classes=3, img_size=32, patch_size=4, embed_dim=8, depth=1)
    with pytest.raises(ValueError, match="mixes 16 patches, this model 64"):
        other_grid.load_state_dict(model.state_dict())
