"""resmlp-convert: timm's and the official (DeiT) ResMLP weights give timm's logits here."""
import re

import pytest
import timm
import torch
from fairseq import checkpoint_utils

from helpers import USER_DIR, run_cli
from resmlp_mt import convert
from resmlp_mt.models.resmlp_image import ResMLPImageModel
from test_image_data import image_folder_tree, write_image_folder  # noqa: F401  (a fixture)

TOLERANCE = 1e-4


def random_timm(name="resmlp_12_224", **kwargs):
    """A timm ResMLP with random weights everywhere (timm starts Aff, LayerScale and the head
    at constants, which would hide a transposed or misplaced tensor)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if name.startswith("head") else 0.05) + (p if p.ndim <= 3 else 0))
    return model


def official_names(timm_state):
    """timm's keys -> the DeiT release's, written independently of timm's own filter."""
    renames = [("stem.proj.", "patch_embed.proj."), (".linear_tokens.", ".attn."), (".mlp_channels.", ".mlp."),
               (".ls1", ".gamma_1"), (".ls2", ".gamma_2")]
    out = {}
    for key, value in timm_state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.flatten() if key.endswith((".alpha", ".beta")) else value  # (1, 1, d) -> (d,)
    return out


def converted_model(path):
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    model = ResMLPImageModel(**convert.model_config(state["model"]))
    model.load_state_dict(state["model"])
    return model.eval(), state


def max_diff(ours, theirs, images):
    with torch.no_grad():
        return (ours(images) - theirs(images)).abs().max().item()


@pytest.mark.parametrize("img_size", [224, 64])
def test_timm_weights_give_timm_logits(tmp_path, img_size):
    reference = random_timm(img_size=img_size)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    assert convert.main([str(tmp_path / "timm.pth"), str(tmp_path / "ours.pt")]) == 0
    ours, state = converted_model(tmp_path / "ours.pt")
    images = torch.randn(2, 3, img_size, img_size)
    diff = max_diff(ours, reference, images)
    print(f"resmlp_12_224 at {img_size}: max |logit difference| = {diff:.2e}")
    assert diff < TOLERANCE
    assert state["cfg"]["model"]["_name"] == ("resmlp_s12" if img_size == 224 else "resmlp_image")
    assert state["cfg"]["task"]["img_size"] == img_size


def test_official_deit_checkpoint(tmp_path):
    reference = random_timm("resmlp_24_224", img_size=32, num_classes=7)
    torch.save({"model": official_names(reference.state_dict()), "epoch": 400}, tmp_path / "resmlp_24_dist.pth")
    assert convert.main([str(tmp_path / "resmlp_24_dist.pth"), str(tmp_path / "ours.pt")]) == 0
    ours, state = converted_model(tmp_path / "ours.pt")
    assert len(ours.blocks) == 24 and ours.num_classes == 7
    assert max_diff(ours, reference, torch.randn(3, 3, 32, 32)) < TOLERANCE


def test_export_to_timm_round_trip(tmp_path):
    reference = random_timm(img_size=32)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    convert.main([str(tmp_path / "timm.pth"), str(tmp_path / "ours.pt")])
    assert convert.main([str(tmp_path / "ours.pt"), str(tmp_path / "back.pth"), "--to", "timm"]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())
    reloaded = timm.create_model("resmlp_12_224", img_size=32, checkpoint_path=str(tmp_path / "back.pth")).eval()
    assert max_diff(reloaded, reference, torch.randn(2, 3, 32, 32)) == 0


def test_new_head_for_fine_tuning(tmp_path):
    reference = random_timm(img_size=32)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    convert.main([str(tmp_path / "timm.pth"), str(tmp_path / "ours.pt"), "--num-classes", "10"])
    ours, _ = converted_model(tmp_path / "ours.pt")
    assert ours.head.out_features == 10
    torch.testing.assert_close(ours.blocks[3].token_mixing.weight, reference.blocks[3].linear_tokens.weight)


def test_not_resmlp_weights(tmp_path, capsys):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    assert convert.main([str(tmp_path / "resnet.pth"), str(tmp_path / "out.pt")]) == 2
    assert "not a ResMLP state dict" in capsys.readouterr().err
    assert convert.main([str(tmp_path / "missing.pth"), str(tmp_path / "out.pt")]) == 2
    assert f"{tmp_path / 'missing.pth'} does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_converted_checkpoint_through_fairseq_validate(tmp_path, image_folder_tree):  # noqa: F811
    reference = random_timm(img_size=32, num_classes=2)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    convert.main([str(tmp_path / "timm.pth"), str(tmp_path / "ours.pt"), "--data", image_folder_tree])
    out = run_cli("fairseq-validate", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
                  "--path", tmp_path / "ours.pt", "--valid-subset", "valid", "--batch-size", "8", "--cpu")
    log = out.stdout + out.stderr
    assert re.search(r"valid on 'valid' subset \| loss [\d.]+ \| nsentences 13 \| accuracy [\d.]+", log), log[-3000:]

    # The same checkpoint on data with three classes: both counts named.
    three = write_image_folder(tmp_path / "three", {"val": (1, 1, 1)}, classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="checkpoint classifies 2 classes but the data have 3"):
        checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "ours.pt")], arg_overrides={"data": three})
