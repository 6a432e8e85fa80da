"""DINO self-supervised training (--task image_dino, --arch resmlp_dino_*, --criterion dino).

The loss against a brute-force loop, the EMA teacher and the centre against their
formulas, the schedules against DINO's own (numpy) definitions, the multi-crop views, the
converters of DINO's layouts against timm's model, and through fairseq-train: exact
resumption with every schedule running, the frozen last layer, the weight-decay schedule,
and a linear probe and kNN from the DINO checkpoint.
"""
import math
import re

import numpy as np
import pytest
import torch
from test_convert import converted_model, official_names, random_timm

from helpers import USER_DIR, run_cli
from resmlp_mt import convert
from resmlp_mt.criterions.dino import dino_loss, teacher_targets, teacher_temperature
from resmlp_mt.image.data import ImageDataset
from resmlp_mt.image.multi_crop import MultiCrop
from resmlp_mt.models.resmlp_dino import DinoNetwork, ResMLPDinoModel
from resmlp_mt.models.resmlp_image import ResMLPImageModel, dino_trunk
from resmlp_mt.modules.dino_head import DINOHead
from resmlp_mt.tasks.image_dino import cosine
from test_image_data import image_folder_tree  # noqa: F401  (a fixture)
from training_runs import fairseq_train, load, loaded_checkpoint, max_abs_diff, num_updates, read, start, wait_for


def tiny_dino(out_dim=12, momentum=0.9, seed=0):
    torch.manual_seed(seed)
    backbone = ResMLPImageModel(0, in_chans=3, img_size=8, patch_size=4, embed_dim=8, depth=2)
    return ResMLPDinoModel(DinoNetwork(backbone, DINOHead(8, out_dim, hidden_dim=16, bottleneck_dim=4)), momentum)


def test_loss_matches_a_brute_force_loop():
    """Every (teacher global view, other student view) pair, per image, in float64 with math.exp."""
    g = torch.Generator().manual_seed(0)
    views, batch, k = 4, 3, 5
    student, teacher, center = (torch.randn(views, batch, k, generator=g), torch.randn(2, batch, k, generator=g),
                                torch.randn(1, k, generator=g))
    ts, tt = 0.1, 0.04
    got = dino_loss(student, teacher_targets(teacher, center, tt), ts)
    for b in range(batch):
        total, pairs = 0.0, 0
        for g_view in range(2):
            logits = [(float(teacher[g_view, b, j]) - float(center[0, j])) / tt for j in range(k)]
            top = max(logits)
            z = sum(math.exp(x - top) for x in logits)
            q = [math.exp(x - top) / z for x in logits]
            for v in range(views):
                if v == g_view:
                    continue
                s = [float(student[v, b, j]) / ts for j in range(k)]
                log_z = max(s) + math.log(sum(math.exp(x - max(s)) for x in s))
                total += -sum(q[j] * (s[j] - log_z) for j in range(k))
                pairs += 1
        assert pairs == 2 * (views - 1)
        assert got[b].item() == pytest.approx(total / pairs, rel=1e-5)


def test_head_is_an_mlp_then_unit_prototypes():
    torch.manual_seed(0)
    head = DINOHead(8, 10, hidden_dim=16, bottleneck_dim=4, num_layers=3)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 4)]
    x = torch.randn(5, 8)
    h = x
    for i, m in enumerate(linears):
        h = m(h) if i == len(linears) - 1 else torch.nn.functional.gelu(m(h))
    prototypes = head.last_layer.parametrizations.weight.original1  # v of w = g v / |v|, g fixed at 1
    expected = (h / h.norm(dim=1, keepdim=True)) @ (prototypes / prototypes.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(head(x), expected)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad  # norm_last_layer
    assert DINOHead(8, 10, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad


def test_teacher_is_an_ema_of_the_student_and_the_centre_a_running_mean():
    model = tiny_dino()
    assert max_abs_diff(model.student.state_dict(), model.teacher.state_dict()) == 0  # starts as a copy
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    student = model.student.state_dict()
    model.update_teacher(0.7)
    for key, value in model.teacher.state_dict().items():
        if key.endswith("weight.original0"):  # the fixed gain: no gradient, copied
            assert torch.equal(value, student[key])
        else:
            torch.testing.assert_close(value, 0.7 * before[key] + 0.3 * student[key])
    logits = torch.randn(2, 6, 12)
    model.update_center(logits, 0.9)
    torch.testing.assert_close(model.center, 0.1 * logits.reshape(-1, 12).mean(0, keepdim=True))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not model.train().teacher.training  # no stochastic depth in the teacher


def test_teacher_sees_the_global_views_only():
    model = tiny_dino().eval()
    images = torch.randn(3, 4, 3, 8, 8)  # 2 global + 2 local views
    student, teacher = model(images)
    assert student.shape == (4, 3, 12) and teacher.shape == (2, 3, 12)
    torch.testing.assert_close(student[3], model.student(images[:, 3]))
    torch.testing.assert_close(teacher[1], model.teacher(images[:, 1]))
    with pytest.raises(ValueError, match="multi-crop batches"):
        model(torch.randn(3, 3, 8, 8))


def test_schedules_are_dinos():
    """DINO's utils.cosine_scheduler (no warm-up): final + (base - final)(1 + cos(pi i / N)) / 2, i < N."""
    n = 50
    dino = 1.0 + 0.5 * (0.996 - 1.0) * (1 + np.cos(np.pi * np.arange(n) / n))
    np.testing.assert_allclose([cosine(i, n, 0.996, 1.0) for i in range(n)], dino, rtol=0, atol=1e-12)
    wd = 0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * np.arange(n) / n))
    np.testing.assert_allclose([cosine(i, n, 0.04, 0.4) for i in range(n)], wd, rtol=0, atol=1e-12)
    warm = np.concatenate([np.linspace(0.04, 0.07, 10, endpoint=False), np.full(5, 0.07)])  # np.linspace in DINO
    np.testing.assert_allclose([teacher_temperature(i, 0.04, 0.07, 10) for i in range(15)], warm, atol=1e-12)


def test_views_are_seeded_per_image_and_epoch(image_folder_tree):  # noqa: F811
    from resmlp_mt.image.data import image_folder
    source = image_folder(f"{image_folder_tree}/train")
    views = MultiCrop(16, (0.5,) * 3, (0.25,) * 3, local_crops=3)
    dataset = ImageDataset(source, views, shuffle=False, seed=4, seed_items=True)  # a validation split
    first = dataset[2]["image"]
    assert first.shape == (5, 3, 16, 16)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[2], first[3])
    torch.rand(3)
    assert torch.equal(dataset[2]["image"], first)
    dataset.set_epoch(2)
    assert not torch.equal(dataset[2]["image"], first)
    assert dataset.collater([dataset[0], dataset[1]])["net_input"]["images"].shape == (2, 5, 3, 16, 16)
    gray = MultiCrop(28, (0.3,), (0.35,), local_crops=1)(source[0][0].convert("L"))  # one channel: Fashion-MNIST
    assert gray.shape == (3, 1, 28, 28)
    with pytest.raises(ValueError, match="local crop scale"):
        MultiCrop(16, (0.5,), (0.2,), local_scale=(0.5, 0.2))


def test_converts_dinos_layouts_to_timms_features(tmp_path):
    """The release's trunk (official keys, no head), DINO's training checkpoint ({"teacher": backbone. + head.})
    and our own resmlp_dino checkpoint all give the features of timm's head-less model."""
    reference = random_timm("resmlp_12_224", img_size=32, num_classes=0)
    trunk = official_names(reference.state_dict())
    assert not any(k.startswith("head.") for k in trunk)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(images)
    dino_head = {"head.mlp.0.weight": torch.zeros(4, 384), "head.last_layer.weight_v": torch.zeros(9, 4)}
    layouts = {
        "release": trunk,
        "training": {"teacher": {**{f"module.backbone.{k}": v for k, v in trunk.items()},
                                 **{f"module.{k}": v for k, v in dino_head.items()}},
                     "student": {"module.backbone.patch_embed.proj.weight": torch.zeros(1)}},
    }
    for name, state in layouts.items():
        torch.save(state, tmp_path / f"{name}.pth")
        assert convert.main([str(tmp_path / f"{name}.pth"), str(tmp_path / f"{name}.pt")]) == 0
        ours, _ = converted_model(tmp_path / f"{name}.pt")
        assert ours.num_classes == 0
        with torch.no_grad():
            assert (ours(images) - expected).abs().max().item() < 1e-4, name
    ours, _ = converted_model(tmp_path / "release.pt")
    model = tiny_dino()
    assert dino_trunk(model.state_dict()).keys() == model.teacher.backbone.state_dict().keys()
    assert convert.main([str(tmp_path / "release.pth"), str(tmp_path / "probe.pt"), "--num-classes", "7"]) == 0
    assert converted_model(tmp_path / "probe.pt")[0].head.out_features == 7


def test_a_trunk_without_classifier_needs_new_head():
    trunk = tiny_dino().state_dict()
    model = ResMLPImageModel(3, in_chans=3, img_size=8, patch_size=4, embed_dim=8, depth=2)
    with pytest.raises(ValueError, match="no classifier.*--new-head"):
        model.load_state_dict(trunk)
    probe = ResMLPImageModel(3, in_chans=3, img_size=8, patch_size=4, embed_dim=8, depth=2, new_head=True)
    probe.load_state_dict(trunk)  # the teacher's trunk, and its own new classifier
    teacher = tiny_dino().teacher.backbone.state_dict()
    assert all(torch.equal(probe.state_dict()[k], v) for k, v in teacher.items())


# Through fairseq-train -------------------------------------------------------------------------------------------

TINY = ["--task", "image_dino", "--arch", "resmlp_dino_tiny_28", "--img-size", "16", "--embed-dim", "16",
        "--depth", "2", "--dino-out-dim", "32", "--dino-hidden-dim", "16", "--dino-bottleneck-dim", "8"]
UPDATES = 10  # 20 training images in batches of 4: two epochs


def dino_args(data, save_dir, *extra):
    """Every schedule runs across the resumption at update 4: lr warm-up and cosine, teacher temperature
    warm-up, weight decay and momentum cosines, the frozen last layer (6 updates); 2 local views, drop-path."""
    return [str(data), "--user-dir", USER_DIR, *TINY, "--local-crops", "2", "--drop-path", "0.1",
            "--criterion", "dino", "--warmup-teacher-temp", "0.04", "--teacher-temp", "0.06",
            "--warmup-teacher-temp-updates", "5", "--momentum-teacher", "0.9", "--freeze-last-layer-updates", "6",
            "--optimizer", "timm_adamw", "--lr", "5e-3", "--weight-decay", "0.04", "--weight-decay-end", "0.4",
            "--lr-scheduler", "cosine", "--warmup-updates", "2", "--clip-norm", "3.0", "--max-update", str(UPDATES),
            "--batch-size", "4", "--seed", "3", "--cpu", "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--save-interval-updates", "4", "--log-format", "simple", "--log-interval", "1", "--num-workers", "0",
            *map(str, extra)]


@pytest.fixture(scope="module")
def dino_run(image_folder_tree, tmp_path_factory):  # noqa: F811
    save = tmp_path_factory.mktemp("dino")
    out = run_cli("fairseq-train", *dino_args(image_folder_tree, save))
    return save, out.stdout + out.stderr


@pytest.mark.slow
def test_resumed_dino_run_ends_where_an_uninterrupted_one_does(dino_run, image_folder_tree, tmp_path):  # noqa: F811
    """SIGKILLed once it has logged update 6 (after its update-4 checkpoint, mid-epoch), then restarted
    unchanged: student, teacher and centre end bit-identical (within 1e-6) to the uninterrupted run's."""
    reference, log = dino_run
    resumed = tmp_path / "resumed"
    killed_log = tmp_path / "killed.log"
    proc = start(fairseq_train(dino_args(image_folder_tree, resumed)), killed_log)
    wait_for(lambda: "num_updates=6," in read(killed_log), proc, killed_log)
    proc.kill()
    proc.wait()
    before = num_updates(resumed / "checkpoint_last.pt")
    assert 4 <= before < UPDATES
    out = run_cli("fairseq-train", *dino_args(image_folder_tree, resumed))
    assert loaded_checkpoint(out.stdout + out.stderr) == (str(resumed / "checkpoint_last.pt"), before)
    assert num_updates(resumed / "checkpoint_last.pt") == UPDATES
    ours, theirs = load(resumed / "checkpoint_last.pt")["model"], load(reference / "checkpoint_last.pt")["model"]
    assert {k.split(".")[0] for k in ours} == {"student", "teacher", "center"}
    diff = max_abs_diff(ours, theirs)
    print(f"max |resumed - uninterrupted| over student, teacher and centre: {diff:.3g}")
    assert diff <= 1e-6
    assert theirs["center"].abs().sum() > 0
    assert max_abs_diff(dino_trunk(theirs), {k[len("student.backbone."):]: v for k, v in theirs.items()
                                             if k.startswith("student.backbone.")}) > 1e-4  # an EMA, not a copy
    temps = [float(t) for t in re.findall(r"train_inner \|.*?teacher_temp=([\d.]+)", log)]
    np.testing.assert_allclose(temps, [0.04 + 0.02 * min(u, 5) / 5 for u in range(UPDATES)], atol=1e-4)


@pytest.mark.slow
def test_last_layer_frozen_then_trained_and_weight_decay_scheduled(dino_run):
    reference, _ = dino_run
    last = "head.last_layer.parametrizations.weight.original1"
    at4, at10 = load(reference / "checkpoint_1_4.pt"), load(reference / "checkpoint_last.pt")
    # frozen: the student's last layer is still its initial value, which the teacher (an EMA of it) also
    # holds, up to the EMA's rounding; the rest of the head has moved (and the last layer once unfrozen)
    def gap(state, key):
        return (state["model"][f"student.{key}"] - state["model"][f"teacher.{key}"]).abs().max().item()

    assert gap(at4, last) < 1e-6 and gap(at4, "head.mlp.0.weight") > 1e-4 and gap(at10, last) > 1e-4
    groups = at10["last_optimizer_state"]["param_groups"]
    expected = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * (UPDATES - 1) / UPDATES))  # set before step 10
    assert [g["weight_decay"] for g in groups] == [pytest.approx(expected), 0.0]
    assert groups[1]["no_weight_decay"]  # the vectors (biases, Aff, LayerScale): no decay, whatever the schedule


@pytest.mark.slow
def test_linear_probe_and_knn_read_the_teachers_trunk(dino_run, image_folder_tree, tmp_path):  # noqa: F811
    reference, _ = dino_run
    ckpt = reference / "checkpoint_last.pt"
    out = run_cli(
        "fairseq-train", image_folder_tree, "--user-dir", USER_DIR, "--task", "image_classification",
        "--arch", "resmlp_tiny_28", "--img-size", "16", "--embed-dim", "16", "--depth", "2",
        "--finetune-from-model", ckpt, "--freeze-trunk", "--new-head", "--no-augment",
        "--criterion", "image_cross_entropy", "--optimizer", "timm_lamb", "--lr", "1e-2", "--max-update", "3",
        "--batch-size", "4", "--cpu", "--save-dir", tmp_path / "probe", "--no-epoch-checkpoints",
        "--disable-validation", "--num-workers", "0")
    probe = load(tmp_path / "probe" / "checkpoint_last.pt")["model"]
    teacher = dino_trunk(load(ckpt)["model"])
    assert all(torch.equal(probe[k], v) for k, v in teacher.items()), out.stdout[-2000:]
    knn = run_cli("resmlp-knn", image_folder_tree, "--path", ckpt, "--k", "3").stdout
    assert re.search(r"kNN \(k=3, T=0.07\) top-1 [\d.]+% on 13 test images, 20 train images", knn), knn
