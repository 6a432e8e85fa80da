"""Image criteria (Mixup/CutMix cross entropy, DeiT's hard distillation) and timm's LAMB."""
import timm
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.optim import OPTIMIZER_REGISTRY, build_optimizer
from omegaconf import OmegaConf

from resmlp_mt import convert
from resmlp_mt.criterions.image_cross_entropy import (
    HardDistillationConfig,
    HardDistillationCriterion,
    ImageCrossEntropyConfig,
    ImageCrossEntropyCriterion,
)
from resmlp_mt.models.resmlp_image import build_resmlp_image
from resmlp_mt.optim.lamb import TimmLamb
from test_image_data import image_folder_tree, task_for  # noqa: F401  (a fixture)


def batch(n, classes=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"net_input": {"images": torch.randn(n, 3, size, size, generator=g)},
            "target": torch.randint(classes, (n,), generator=g), "nsentences": n, "ntokens": n}


def smoothed_ce_sum(logits, target, eps):
    """Label-smoothed cross entropy, by hand: (1 - eps) * -log p_y + eps * mean_k -log p_k."""
    logp = logits.log_softmax(-1)
    return ((1 - eps) * -logp.gather(1, target[:, None])[:, 0] - eps * logp.mean(-1)).sum()


def student(size=32):
    return build_resmlp_image("resmlp_tiny_32", num_classes=2, img_size=size, embed_dim=16, depth=2)


def test_hard_distillation_equals_hand_computation(tmp_path, image_folder_tree):  # noqa: F811
    task = task_for(image_folder_tree, dataset="imagefolder")
    task.cfg.img_size = 32
    # Teacher 1: a fairseq checkpoint (a converted timm ResMLP); teacher 2: a timm model and its weights.
    teacher_timm = timm.create_model("resmlp_12_224", img_size=32, num_classes=2)
    torch.nn.init.normal_(teacher_timm.head.weight)
    torch.save(teacher_timm.state_dict(), tmp_path / "teacher.pth")
    convert.main([str(tmp_path / "teacher.pth"), str(tmp_path / "teacher.pt"), "--data", image_folder_tree])
    resnet = timm.create_model("test_resnet", num_classes=2)
    torch.save(resnet.state_dict(), tmp_path / "resnet.pth")
    teachers = [(str(tmp_path / "teacher.pt"), None, teacher_timm),
                (str(tmp_path / "resnet.pth"), "test_resnet", resnet)]

    model, sample = student().train(), batch(6)
    images, target = sample["net_input"]["images"], sample["target"]
    for path, name, reference in teachers:
        cfg = HardDistillationConfig(teacher_path=path, teacher_model=name, label_smoothing=0.1)
        criterion = HardDistillationCriterion(cfg, task)
        loss, sample_size, log = criterion(model, sample)
        with torch.no_grad():
            logits, teacher_labels = model(images), reference.eval()(images).argmax(1)
        distill = F.cross_entropy(logits, teacher_labels, reduction="sum")
        expected = 0.5 * smoothed_ce_sum(logits, target, 0.1) + 0.5 * distill
        torch.testing.assert_close(loss, expected)
        assert sample_size == 6 and "loss_teacher" in log
        assert not any(p.requires_grad for p in criterion._teacher[0].parameters())
        assert not list(criterion.parameters())  # neither trained nor saved with the student

        model.eval()  # validation: the plain cross entropy
        loss, _, _ = criterion(model, sample)
        torch.testing.assert_close(loss, smoothed_ce_sum(model(images), target, 0.1))
        model.train()


def test_cross_entropy_accuracy_and_top5(image_folder_tree):  # noqa: F811
    task = task_for(image_folder_tree)
    criterion = ImageCrossEntropyCriterion(ImageCrossEntropyConfig(label_smoothing=0.1), task)
    model = student().eval()
    logs = []
    for seed in range(3):
        sample = batch(5, seed=seed)
        loss, n, log = criterion(model, sample)
        torch.testing.assert_close(loss, smoothed_ce_sum(model(sample["net_input"]["images"]), sample["target"], 0.1))
        logs.append(log)
    with metrics.aggregate() as agg:
        ImageCrossEntropyCriterion.reduce_metrics(logs)
        values = agg.get_smoothed_values()
    assert values["nsentences"] == 15
    assert values["accuracy"] == round(100 * sum(log["ncorrect"] for log in logs) / 15, 2)
    assert values["top5"] == 100  # two classes: the top 5 hold every label


def test_mixup_cutmix_soft_targets_seeded_by_torch(image_folder_tree):  # noqa: F811
    task = task_for(image_folder_tree)
    cfg = ImageCrossEntropyConfig(mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    criterion = ImageCrossEntropyCriterion(cfg, task)
    model = student().train()
    sample = batch(7)
    losses = []
    for _ in range(2):
        torch.manual_seed(5)  # fairseq reseeds torch at every update
        loss, n, log = criterion(model, sample)
        losses.append(loss)
    assert n == 6 and log["nsentences"] == 6  # an odd batch mixes in pairs: one image sits out
    assert "ncorrect" not in log  # no accuracy on mixed labels
    assert losses[0] == losses[1]
    assert loss > 0.2 * 6  # soft targets: far from a confident fit
    original = batch(7)["net_input"]["images"]
    assert torch.equal(sample["net_input"]["images"], original)  # the batch itself is not mixed in place


def test_timm_lamb_is_timms_without_decay_on_vectors():
    assert OPTIMIZER_REGISTRY["timm_lamb"] is TimmLamb
    model = student()
    cfg = OmegaConf.create({"_name": "timm_lamb", "lr": [0.01], "weight_decay": 0.2})  # as fairseq's config has it
    optimizer = build_optimizer(cfg, list(model.parameters()))
    assert isinstance(optimizer.optimizer, timm.optim.Lamb)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.2 and plain["weight_decay"] == 0.0
    vectors = {id(p) for p in plain["params"]}
    assert id(model.blocks[0].ls1.gamma) in vectors and id(model.norm.alpha) in vectors
    assert id(model.blocks[0].token_mixing.bias) in vectors and id(model.head.bias) in vectors
    assert id(model.blocks[0].token_mixing.weight) not in vectors and all(p.ndim > 1 for p in decayed["params"])

    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    state = optimizer.state_dict()
    optimizer.load_state_dict(state, {"weight_decay": 0.3, "lr": 0.02})  # --optimizer-overrides
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]
    assert optimizer.get_lr() == 0.02
