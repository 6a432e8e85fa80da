"""resmlp-show-mixing: token-mixing pictures of vision and translation checkpoints."""
import numpy as np
import torch
from fairseq import checkpoint_utils
from PIL import Image

from helpers import build_translation_model
from resmlp_mt import visualize
from resmlp_mt.models.resmlp_image import build_resmlp_image


def save_checkpoint(model, path):
    """The parts of a trainer's checkpoint that fairseq's loader needs."""
    checkpoint_utils.torch_persistent_save({
        "args": None, "cfg": None, "model": model.state_dict(),
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "y", "lr_scheduler_state": {},
                               "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
    }, str(path))
    return str(path)


def test_rows_of_a_on_the_patch_grid():
    """Row i of the identity reads only patch i: each small image is one red pixel, at its own place."""
    side = 4
    mosaic = visualize.patch_mosaic(torch.eye(side * side), grid=8)
    assert mosaic.shape == (side * (side + 1) - 1,) * 2
    for y in range(side):
        for x in range(side):
            tile = mosaic[y * (side + 1):y * (side + 1) + side, x * (side + 1):x * (side + 1) + side]
            assert tile[y, x] == 1 and np.count_nonzero(tile) == 1
    central = visualize.patch_mosaic(torch.eye(36), grid=2)  # the 2x2 central patches of a 6x6 grid
    assert central.shape == (2 * 7 - 1,) * 2 and central[2, 2] == 1  # patch (2, 2) reads itself


def test_pictures_of_vision_and_translation_checkpoints(tmp_path):
    vision = save_checkpoint(build_resmlp_image("resmlp_tiny_28", 10, in_chans=1), tmp_path / "vision.pt")
    assert visualize.main([vision, str(tmp_path / "vision"), "--layers", "0", "3"]) == 0
    translation = save_checkpoint(build_translation_model(encoder_layers=3, decoder_layers=2, encoder_embed_dim=16,
                                                          encoder_ffn_embed_dim=32, decoder_attention_heads=2,
                                                          max_source_positions=20, max_target_positions=20),
                                  tmp_path / "translation.pt")
    written = visualize.show(translation, str(tmp_path / "translation"), positions=12)
    names = sorted(p.split("/")[-1] for p in written)
    assert names == ["decoder_0.png", "decoder_1.png", "encoder_0.png", "encoder_1.png", "encoder_2.png"]
    for path in [*written, str(tmp_path / "vision" / "blocks_0.png"), str(tmp_path / "vision" / "blocks_3.png")]:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_not_a_resmlp_checkpoint(tmp_path, capsys):
    path = save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "linear.pt")
    assert visualize.main([path, str(tmp_path / "out")]) == 2
    assert "has no token-mixing weights" in capsys.readouterr().err


def test_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello world\n")
    assert visualize.main([str(tmp_path / "notes.txt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'notes.txt'} is not a fairseq checkpoint of a ResMLP") and \
        "starts with the text 'hello world'" in err and len(err.splitlines()) == 1, err
    torch.save({"w": torch.zeros(2)}, tmp_path / "tensors.pt")  # a torch file, but no trainer's checkpoint
    assert visualize.main([str(tmp_path / "tensors.pt"), str(tmp_path / "out")]) == 2
    assert "is a torch file but not a fairseq checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_dino_checkpoint_beside_a_supervised_one(tmp_path):
    """A DINO checkpoint shows its teacher's trunk; --beside puts the same layer of another model next to it."""
    from test_dino import tiny_dino
    dino = tiny_dino()
    with torch.no_grad():
        dino.teacher.backbone.blocks[1].token_mixing.weight.fill_(0.5)  # the teacher's, not the student's
    dino_path = save_checkpoint(dino, tmp_path / "dino.pt")
    assert visualize.read_stacks(dino_path)["blocks"][1].eq(0.5).all()
    supervised = save_checkpoint(build_resmlp_image("resmlp_tiny_28", 10, img_size=8, patch_size=4, embed_dim=8,
                                                    depth=2), tmp_path / "supervised.pt")
    out = tmp_path / "beside"
    assert visualize.main([dino_path, str(out), "--beside", supervised, "--names", "DINO", "supervised"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["blocks_0_beside.png", "blocks_1_beside.png"]
    with Image.open(out / "blocks_1_beside.png") as picture:
        assert picture.width > 1.5 * picture.height  # two panels side by side
