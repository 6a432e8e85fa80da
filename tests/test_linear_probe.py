"""Linear probes: --freeze-trunk trains the classifier only, --new-head replaces one of another class count."""
import re

import pytest
import torch
from fairseq import checkpoint_utils

from helpers import USER_DIR, run_cli
from resmlp_mt.convert import fairseq_checkpoint
from resmlp_mt.models.resmlp_image import build_resmlp_image
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)

SMALL = dict(img_size=16, embed_dim=16, depth=2)


def test_frozen_trunk_has_no_gradients_and_stays_in_eval_mode():
    model = build_resmlp_image("resmlp_tiny_28", num_classes=3, in_chans=3, drop_path=0.5, freeze_trunk=True, **SMALL)
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == ["head.bias", "head.weight"]
    model.train()
    assert model.head.training and not any(m.training for n, m in model.named_modules() if n and n != "head")
    images = torch.randn(4, 3, 16, 16)
    assert torch.equal(model(images), model(images))  # no stochastic depth in the trunk
    model(images).sum().backward()
    assert model.head.weight.grad is not None and all(p.grad is None for n, p in model.named_parameters()
                                                      if not n.startswith("head."))


def test_class_mlp_trunk_freezes_too():
    model = build_resmlp_image("resmlp_tiny_28_class_mlp", num_classes=3, in_chans=3, freeze_trunk=True, **SMALL)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained == ["head.weight", "head.bias"]
    assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 16)


def test_new_head_keeps_the_trunk_and_its_own_classifier():
    torch.manual_seed(0)
    trained = build_resmlp_image("resmlp_tiny_28", num_classes=5, in_chans=3, **SMALL)
    probe = build_resmlp_image("resmlp_tiny_28", num_classes=2, in_chans=3, new_head=True, **SMALL)
    head = probe.head.weight.clone()
    probe.load_state_dict(trained.state_dict())
    assert torch.equal(probe.head.weight, head)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in probe.state_dict().items()
               if not k.startswith("head."))
    same_classes = build_resmlp_image("resmlp_tiny_28", num_classes=5, in_chans=3, new_head=True, **SMALL)
    same_classes.load_state_dict(trained.state_dict())  # a resumed probe: its own trained head is loaded
    assert torch.equal(same_classes.head.weight, trained.head.weight)
    with pytest.raises(ValueError, match="classifies 5 classes but the data have 2.*--new-head"):
        build_resmlp_image("resmlp_tiny_28", num_classes=2, in_chans=3, **SMALL).load_state_dict(trained.state_dict())


@pytest.mark.slow
def test_fairseq_train_with_frozen_trunk_changes_the_head_only(image_folder_tree, tmp_path):  # noqa: F811
    """5 updates from a checkpoint, with stochastic depth and weight decay on: the trunk comes back bit for
    bit, the head has moved, and the optimizer holds state for the head only. (--new-head, which the
    trainer's load_state_dict applies, is tested above.)"""
    torch.manual_seed(3)
    start = build_resmlp_image("resmlp_tiny_28", num_classes=2, in_chans=3, **SMALL)
    torch.save(fairseq_checkpoint(start.state_dict(), image_folder_tree), tmp_path / "start.pt")
    out = run_cli(
        "fairseq-train", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
        "--arch", "resmlp_tiny_28", "--img-size", "16", "--embed-dim", "16", "--depth", "2", "--drop-path", "0.3",
        "--freeze-trunk", "--finetune-from-model", tmp_path / "start.pt",
        "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb", "--lr", "1e-2", "--weight-decay", "0.1",
        "--max-update", "5", "--batch-size", "4", "--seed", "1", "--cpu", "--save-dir", tmp_path / "probe",
        "--no-epoch-checkpoints", "--log-format", "simple", "--log-interval", "1",
    )
    log = out.stdout + out.stderr
    head_size = 16 * 2 + 2
    assert re.search(rf"num\. shared model params: [\d,]+ \(num\. trained: {head_size}\)", log), log[-3000:]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(tmp_path / "probe" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 5
    initial = start.state_dict()
    for name, value in state["model"].items():
        if not name.startswith("head."):
            assert torch.equal(value, initial[name]), name
    assert not torch.equal(state["model"]["head.weight"], initial["head.weight"])
    assert not torch.equal(state["model"]["head.bias"], initial["head.bias"])
    optimizer_state = state["last_optimizer_state"]["state"]
    assert sorted(tuple(s["exp_avg"].shape) for s in optimizer_state.values()) == [(2,), (2, 16)]

