"""DeepLab segmenters, their OFD taps, the segmentation task adapter and a Runner round trip."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mmengine.config import Config
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from overhaul_det.training import load_config
from overhaul_det.models.segmentation import build_segmenter
from overhaul_det.taps.presets import head_tap_nodes, segmenter_taps
from overhaul_det.taps import attach_taps, capture_taps, find_taps, qualified_name, trace
from overhaul_det.tasks.segmentation import SegmentationDistiller, segmentation_tap_weights

SIZE = 64
CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "segmentation").glob("*.py"))


def _outputs_of(model: nn.Module, paths, x: torch.Tensor):
    """The outputs of the modules at ``paths`` in one eval forward of ``model``."""
    seen, handles = {}, []
    for path in paths:
        hook = (lambda p: lambda m, a, out: seen.__setitem__(p, out.clone()))(path)
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _batch(num_classes: int, sizes=((SIZE, SIZE), (SIZE, SIZE))):
    generator = torch.Generator().manual_seed(1)
    return dict(
        inputs=[torch.randn(3, h, w, generator=generator) for h, w in sizes],
        data_samples=[dict(gt_seg=torch.randint(0, num_classes, (h, w), generator=generator), img_path=f"{i}.jpg")
                      for i, (h, w) in enumerate(sizes)],
    )


# ---------------------------------------------------------------------------------------------
# Taps


def test_head_taps_found_by_find_taps_on_torchvision_deeplab_head(randomized):
    head = randomized(DeepLabHead(32, 5).eval())
    taps = find_taps(head, input_size=(32, 8, 8), nodes=head_tap_nodes(head))
    assert [t.norm for t in taps] == ["0.project.1", "2"]
    assert [t.activation for t in taps] == ["ReLU", "ReLU"] and [t.channels for t in taps] == [256, 256]
    x = torch.randn(2, 32, 8, 8)
    expected = _outputs_of(head, ["0.project.1", "2"], x)
    attach_taps(head, taps)
    with torch.no_grad(), capture_taps(head) as feats:
        head(x)
    for tap in taps:
        torch.testing.assert_close(feats[tap.name], expected[tap.norm])
        assert feats[tap.name].min() < 0, f"{tap.name} lost its negative half"


def _swap(module: torch.nn.Module, kind: type, make) -> None:
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, make(child))
        else:
            _swap(child, kind, make)


def test_head_taps_see_timm_activations_and_frozen_batch_norm():
    """The head's taps use the one set of graph predicates: timm's activation layers and
    torchvision's FrozenBatchNorm2d count as activations and norms, as in find_taps."""
    from timm.layers.activations import GELU
    from torchvision.ops.misc import FrozenBatchNorm2d

    head = DeepLabHead(32, 5).eval()
    _swap(head, torch.nn.ReLU, lambda relu: GELU())
    _swap(head, torch.nn.BatchNorm2d, lambda bn: FrozenBatchNorm2d(bn.num_features))
    taps = find_taps(head, input_size=(32, 8, 8), nodes=head_tap_nodes(head))
    assert [t.norm for t in taps] == ["0.project.1", "2"]
    assert [t.activation for t in taps] == ["gelu", "gelu"]


class _LinearBottleneckPair(torch.nn.Module):
    """A block ending without activation, then the next block's 1x1 expansion + FrozenBatchNorm2d + ReLU6."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.ops.misc import FrozenBatchNorm2d

        self.project = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.expand = torch.nn.Conv2d(8, 16, 1)
        self.bn = FrozenBatchNorm2d(16)
        self.act = torch.nn.ReLU6()

    def forward(self, x):
        return self.act(self.bn(self.expand(self.project(x))))


def test_linear_bottleneck_stage_tap_is_the_frozen_expansion_norm():
    from overhaul_det.taps.presets import _stage_tap

    model = _LinearBottleneckPair()
    graph = trace(model)
    block_output = next(n for n in graph.nodes if n.target == "project")
    assert qualified_name(_stage_tap(model, block_output)) == "bn"


def test_deeplabv3plus_taps_are_stage_ends_aspp_and_decoder(randomized):
    model = randomized(build_segmenter("timm/resnet18", 5, decoder=True, channels=16).eval())
    taps = segmenter_taps(model, (3, SIZE, SIZE))
    assert [t.stride for t in taps] == [4, 8, 16, 16, 16, 4]
    assert [t.norm for t in taps] == [f"backbone.layer{i}.1.bn2" for i in range(1, 5)] + [
        "classifier.aspp.project.1", "classifier.decoder.5"]
    assert [t.channels for t in taps] == [64, 128, 256, 512, 16, 16]
    x = torch.randn(2, 3, SIZE, SIZE)
    expected = _outputs_of(model, ["classifier.aspp.project.1", "classifier.decoder.5"], x)
    plain = copy.deepcopy(model)
    attach_taps(model, taps)
    with torch.no_grad(), capture_taps(model) as feats:
        out = model(x)["out"]
    torch.testing.assert_close(out, plain(x)["out"])
    assert all(feats[t.name].min() < 0 for t in taps)
    for tap in taps[4:]:
        torch.testing.assert_close(feats[tap.name], expected[tap.norm])


def test_mobilenetv2_taps_are_the_official_expansion_bns(randomized):
    model = randomized(build_segmenter("mobilenetv2_100", 5, decoder=True, channels=16).eval())
    taps = segmenter_taps(model, (3, SIZE, SIZE))
    assert [t.norm for t in taps[:4]] == ["backbone.blocks.2.0.bn1", "backbone.blocks.3.0.bn1",
                                          "backbone.blocks.5.0.bn1", "backbone.blocks.6.0.bn3"]
    assert [t.channels for t in taps[:4]] == [144, 192, 576, 320]
    attach_taps(model, taps)
    with torch.no_grad(), capture_taps(model) as feats:
        model(torch.randn(2, 3, SIZE, SIZE))
    assert all(feats[t.name].min() < 0 for t in taps), "an in-place activation overwrote a captured tap"


def test_torchvision_deeplabv3_keeps_its_keys_and_outputs():
    reference = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5, aux_loss=True).eval()
    model = build_segmenter("deeplabv3_mobilenet_v3_large", 5, aux_loss=True).eval()
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], reference(x)["out"])
    taps = segmenter_taps(model, (3, SIZE, SIZE))
    assert [t.norm for t in taps[4:]] == ["classifier.0.project.1", "classifier.2"]


def test_build_segmenter_errors_name_the_fix():
    with pytest.raises(ValueError, match="use timm/resnet18"):
        build_segmenter("resnet18")
    with pytest.raises(ValueError, match="output_stride"):
        build_segmenter("timm/resnet18", output_stride=4)
    with pytest.raises(ValueError, match=r"\['decoder'\]"):
        build_segmenter("deeplabv3_resnet50", decoder=True)
    with pytest.raises(ValueError, match="did you mean"):
        build_segmenter("resnet181")


# ---------------------------------------------------------------------------------------------
# Task adapter


@pytest.fixture(scope="module")
def distiller():
    from conftest import randomize_bn

    torch.manual_seed(0)
    teacher = randomize_bn(build_segmenter("timm/resnet18", 4, decoder=True, channels=32))
    student = dict(backbone="mobilenetv2_050", decoder=True, channels=16, aux_loss=True)
    return SegmentationDistiller(teacher, student, num_classes=4, ofd=dict(input_size=(3, SIZE, SIZE)))


def test_loss_step_trains_student_and_regressors_only(distiller):
    from mmengine.optim import OptimWrapper

    model = copy.deepcopy(distiller).train()
    assert model.distiller.alpha == 1e-5 and model.distiller.weights == segmentation_tap_weights(4)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    data = model.data_preprocessor(_batch(4), True)
    losses = model(**data, mode="loss")
    assert set(losses) == {"loss_ce", "loss_aux", "loss_ofd"}
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_ofd"] > 0
    model.parse_losses(losses)[0].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.distiller.regressors.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.student.parameters())
    optimizer = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4))
    optimizer.step()
    model.train_step(_batch(4), optimizer)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"


def test_predict_crops_padding_to_each_label(distiller):
    model = copy.deepcopy(distiller).eval()
    batch = _batch(4, sizes=((SIZE, 48), (40, SIZE)))
    results = model.val_step(batch)
    assert [tuple(r["pred_seg"].shape) for r in results] == [(SIZE, 48), (40, SIZE)]
    assert all(r["pred_seg"].dtype == torch.int64 and r["pred_seg"].max() < 4 for r in results)
    assert [r["img_path"] for r in results] == ["0.jpg", "1.jpg"]


def test_taps_given_by_name_are_the_default_taps(distiller):
    """ofd.teacher_taps / student_taps as node names reach the distiller's own tap resolution and pair in order."""
    pairs = distiller.distiller.pairs
    named = SegmentationDistiller(copy.deepcopy(distiller.teacher), dict(backbone="mobilenetv2_050", decoder=True, channels=16),
                                  num_classes=4, ofd=dict(input_size=(3, SIZE, SIZE),
                                                          student_taps=[s.name for s, _ in pairs],
                                                          teacher_taps=[t.name for _, t in pairs]))
    assert named.distiller.pairs == pairs


def test_an_input_that_collapses_the_backbone_stages_is_refused():
    with pytest.raises(ValueError, match=r"input size 8 px is smaller than the deepest stage stride \(16\) of "
                                         r"Segmenter's backbone.*at least 16x16"):
        SegmentationDistiller(dict(backbone="timm/resnet18", channels=16), dict(backbone="timm/resnet18", channels=16),
                              num_classes=3, ofd=dict(input_size=(3, 8, 8)))


def test_alpha_zero_is_the_baseline():
    model = SegmentationDistiller(dict(backbone="timm/resnet18"), dict(backbone="timm/resnet18", channels=16),
                                  num_classes=3, ofd=dict(alpha=0)).train()
    assert model.teacher is None and model.student_prefix == "student_model."
    losses = model(**model.data_preprocessor(_batch(3), True), mode="loss")
    assert set(losses) == {"loss_ce"} and torch.isfinite(losses["loss_ce"])


def test_class_weight_weighs_the_cross_entropy_per_class():
    spec = dict(backbone="timm/resnet18", channels=16)
    plain = SegmentationDistiller(None, spec, num_classes=3, ofd=dict(alpha=0)).train()
    weighted = SegmentationDistiller(None, spec, num_classes=3, ofd=dict(alpha=0), class_weight=[0.1, 1, 2]).train()
    weighted.load_state_dict(plain.state_dict())
    assert set(weighted.state_dict()) == set(plain.state_dict())  # the weights are not saved in checkpoints
    batch = weighted.data_preprocessor(_batch(3), True)
    torch.manual_seed(0)
    logits = weighted.student(batch["inputs"])["out"]
    torch.manual_seed(0)
    loss = weighted(**batch, mode="loss")["loss_ce"]
    target = torch.stack([sample["gt_seg"] for sample in batch["data_samples"]])
    expected = torch.nn.functional.cross_entropy(logits, target, torch.tensor([0.1, 1, 2]))
    assert torch.allclose(loss, expected)
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(logits, target))


def test_class_weight_needs_one_weight_per_class():
    with pytest.raises(ValueError, match=r"model.class_weight has 2 values for 3 classes"):
        SegmentationDistiller(None, dict(backbone="timm/resnet18", channels=16), num_classes=3, ofd=dict(alpha=0),
                              class_weight=[1, 2])


# ---------------------------------------------------------------------------------------------
# Configs and the Runner


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_configs_load(path):
    cfg = load_config(str(path))
    assert cfg.model.type == "SegmentationDistiller"
    assert cfg.val_evaluator.type == "SegmentationMetric"


def test_paper_configs_follow_the_recipe():
    for name in ("ofd_deeplabv3plus_r101-to-r18_voc.py", "ofd_deeplabv3plus_r101-to-mbv2_voc.py"):
        cfg = load_config(str(CONFIGS[0].parent / name))
        assert cfg.model.ofd.alpha == 1e-5 and cfg.model.student.decoder and cfg.model.teacher.decoder
        assert cfg.optim_wrapper.optimizer.lr == 0.007 and cfg.optim_wrapper.optimizer.weight_decay == 5e-4
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys["regressors"]["lr_mult"] == 10
        assert cfg.train_cfg.max_epochs == 50 and cfg.train_dataloader.batch_size == 16
        assert cfg.train_dataloader.dataset.crop_size == (513, 513)
        assert any(h.type == "RegressorWarmupHook" and h.epochs == 1 for h in cfg.custom_hooks)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_runner_trains_and_evaluates_on_generated_scenes(tmp_path):
    from mmengine.runner import Runner

    from overhaul_det.datasets.scenes import SCENE_CLASSES, make_scenes

    make_scenes(tmp_path / "voc", "train", 6, SIZE, seed=0, fmt=("voc",))
    make_scenes(tmp_path / "voc", "val", 4, SIZE, seed=0, fmt=("voc",))

    def loader(split: str, train: bool) -> dict:
        dataset = dict(type="VOCSegmentation", data_root=str(tmp_path / "voc"), split=split, train=train,
                       classes=SCENE_CLASSES, crop_size=(SIZE, SIZE))
        return dict(batch_size=2, num_workers=0, dataset=dataset, collate_fn=dict(type="pseudo_collate"),
                    sampler=dict(type="DefaultSampler", shuffle=train))

    cfg = Config(dict(
        default_scope="overhaul_det",
        work_dir=str(tmp_path / "work"),
        model=dict(type="SegmentationDistiller", num_classes=11, ofd=dict(input_size=(3, SIZE, SIZE)),
                   teacher=dict(backbone="timm/resnet18", decoder=True, channels=16),
                   student=dict(backbone="mobilenetv2_050", decoder=True, channels=16, aux_loss=True)),
        train_dataloader=loader("train", True),
        val_dataloader=loader("val", False),
        val_evaluator=dict(type="SegmentationMetric", num_classes=11),
        optim_wrapper=dict(constructor="DistillerOptimWrapperConstructor",
                           optimizer=dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=5e-4),
                           paramwise_cfg=dict(custom_keys={"regressors": dict(lr_mult=10)})),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=2, val_interval=100),
        val_cfg=dict(type="ValLoop"),
        custom_hooks=[dict(type="RegressorWarmupHook", iters=1)],
        default_hooks=dict(logger=dict(type="LoggerHook", interval=1),
                           checkpoint=dict(type="CheckpointHook", interval=100)),
        log_level="WARNING",
    ))
    runner = Runner.from_cfg(cfg)
    runner.train()
    hub = runner.message_hub
    for key in ("loss", "loss_ce", "loss_aux", "loss_ofd"):
        assert torch.isfinite(torch.tensor(hub.get_scalar(f"train/{key}").current())), key
    regressor_params = {id(p) for p in runner.model.distiller.regressors.parameters()}
    optimized = {id(p) for group in runner.optim_wrapper.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in runner.model.distiller.teacher.parameters()}
    for group in runner.optim_wrapper.optimizer.param_groups:
        if any(id(p) in regressor_params for p in group["params"]):
            assert group["lr"] == pytest.approx(0.1)
    metrics = runner.val()
    assert metrics["seg/mIoU"] == pytest.approx(_miou(runner, 11))


@torch.no_grad()
def _miou(runner, num_classes: int) -> float:
    """mIoU of the runner's predictions on its val set, counted here pixel set by pixel set."""
    intersection, union = np.zeros(num_classes), np.zeros(num_classes)
    for batch in runner.val_dataloader:
        for sample in runner.model.val_step(batch):
            pred, gt = np.asarray(sample["pred_seg"]), np.asarray(sample["gt_seg"])
            labelled = gt != 255
            for c in range(num_classes):
                p, g = (pred == c) & labelled, (gt == c) & labelled
                intersection[c] += (p & g).sum()
                union[c] += (p | g).sum()
    present = union > 0
    return float((intersection[present] / union[present]).mean())


def test_cpu_config_model_runs_a_step():
    from overhaul_det.registry import MODELS

    cfg = load_config(str(CONFIGS[0].parent / "ofd_deeplabv3_fashion_scenes.py"))
    cfg.model.teacher.pop("checkpoint")
    model = MODELS.build(cfg.model).train()
    assert len(model.distiller.pairs) == 6 and model.distiller.alpha == 1e-3
    losses = model(**model.data_preprocessor(_batch(11, sizes=((128, 128),) * 2), True), mode="loss")
    assert set(losses) == {"loss_ce", "loss_ofd"} and all(torch.isfinite(v) for v in losses.values())
