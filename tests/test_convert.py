"""resmlp-convert: timm's and the official (DeiT) ResMLP weights give timm's logits here."""
import random
import re

import pytest
import timm
import torch
from fairseq import checkpoint_utils

from helpers import USER_DIR, build_translation_model, run_cli
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


def tiny_image_checkpoint(path, **extra_weights):
    """A fairseq checkpoint of resmlp_tiny_28 (1 channel, 10 classes) with random weights."""
    torch.manual_seed(0)
    model = ResMLPImageModel(num_classes=10, in_chans=1, img_size=28, patch_size=4, embed_dim=64, depth=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint({**model.state_dict(), **extra_weights}, path), model.eval()


def save_checkpoint(state_dict, path, arch=None):
    """The parts of a trainer's checkpoint that fairseq's loader reads."""
    checkpoint_utils.torch_persistent_save({
        "args": None, "cfg": {"model": {"_name": arch}} if arch else None, "model": state_dict,
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {},
                               "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }, str(path))
    return str(path)


def test_to_timm_loads_into_timms_model_before_it_is_written(tmp_path, capsys):
    """A size timm has no name for (resmlp_tiny_28): the success line says how timm builds it, and it does."""
    path, ours = tiny_image_checkpoint(tmp_path / "tiny.pt")
    assert convert.main([path, str(tmp_path / "tiny.pth"), "--to", "timm"]) == 0
    out = capsys.readouterr().out
    assert "MlpMixer(img_size=28, num_classes=10, in_chans=1, patch_size=4, num_blocks=4, embed_dim=64" in out
    model = timm.models.mlp_mixer.MlpMixer(img_size=28, num_classes=10, in_chans=1, patch_size=4, num_blocks=4,
                                           embed_dim=64, mlp_ratio=4.0, block_layer=timm.models.mlp_mixer.ResBlock,
                                           norm_layer=timm.models.mlp_mixer.Affine).eval()
    model.load_state_dict(torch.load(tmp_path / "tiny.pth", weights_only=True), strict=True)
    assert max_diff(model, ours, torch.randn(2, 1, 28, 28)) < TOLERANCE

    # A weight timm's model has no place for: refused, nothing written.
    path, _ = tiny_image_checkpoint(tmp_path / "extra.pt", **{"blocks.0.extra": torch.zeros(3)})
    assert convert.main([path, str(tmp_path / "extra.pth"), "--to", "timm"]) == 2
    err = capsys.readouterr().err
    assert "timm's model does not load the converted weights" in err and "blocks.0.extra" in err
    assert not (tmp_path / "extra.pth").exists()


@pytest.mark.parametrize("arch", [None, "resmlp_small"])
def test_to_timm_refuses_a_translation_checkpoint(tmp_path, capsys, arch):
    model = build_translation_model(encoder_layers=2, decoder_layers=1, encoder_embed_dim=16,
                                    encoder_ffn_embed_dim=32, decoder_attention_heads=2,
                                    max_source_positions=20, max_target_positions=20)
    path = save_checkpoint(model.state_dict(), tmp_path / "translation.pt", arch=arch)
    assert convert.main([path, str(tmp_path / "out.pth"), "--to", "timm"]) == 2
    err = capsys.readouterr().err
    assert f"{path} is " in err and "(translation)" in err and "converts image ResMLP checkpoints only" in err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("to", ["fairseq", "timm"])
def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys, to):
    (tmp_path / "notes.pt").write_text("hello world\n")
    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(5000))
    for name, shown in (("notes.pt", "starts with the text 'hello world'"), ("random.pt", "(5000 bytes)")):
        assert convert.main([str(tmp_path / name), str(tmp_path / "out"), "--to", to]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name} is not ") and shown in err, err
        assert "torch.save zip archive" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
