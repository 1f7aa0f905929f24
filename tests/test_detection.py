"""Faster R-CNN over either zoo's backbone, and OFD between detector bodies, down to mmengine's Runner."""
import contextlib
import io
from pathlib import Path

import pytest
import torch
import torchvision
from mmengine.dataset import pseudo_collate
from mmengine.hooks import Hook
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops.misc import FrozenBatchNorm2d

from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.evaluation.coco_metric import BBOX_KEYS
from overhaul_det.export import student_state_dict
from overhaul_det.models.detection import build_detector, resolution_stages
from overhaul_det.ofd import bn_margin
from overhaul_det.taps import find_taps
from overhaul_det.tasks.detection import DetectionDistiller

SIZE = 96
NUM_CLASSES = 4
# Small RPN/ROI sampling so a CPU step takes well under a second.
LIGHT = dict(fpn_channels=32, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
             rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
             box_score_thresh=0.0)
TASK_LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
CONFIG = Path(__file__).parents[1] / "configs" / "detection" / "ofd_frcnn_fashion_scenes.py"


def _batch(sizes=((SIZE, SIZE), (SIZE, SIZE))):
    """Images in [0, 1] and their data samples, as the COCO dataset gives them."""
    images = [torch.rand(3, h, w) for h, w in sizes]
    samples = [
        dict(image_id=i + 1, boxes=torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 20.0, 70.0, 60.0]]),
             labels=torch.tensor([1, NUM_CLASSES - 1]), orig_size=(h, w), scale_factor=1.0, flipped=False)
        for i, (h, w) in enumerate(sizes)
    ]
    return images, samples


def _finite(losses, keys):
    assert set(losses) == set(keys)
    assert all(torch.isfinite(value) for value in losses.values()), losses


@pytest.fixture(scope="module")
def distiller():
    """OFD from a torchvision ResNet18 body (BatchNorm on batch statistics, another normalisation)
    to a timm MobileNetV3 Faster R-CNN."""
    torch.manual_seed(0)
    teacher = dict(name="resnet18", image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    return DetectionDistiller(teacher=teacher, student=dict(name="mobilenetv3_small_050", **LIGHT),
                              num_classes=NUM_CLASSES, min_size=SIZE, max_size=SIZE,
                              ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A torchvision ResNet18 classifier (10 classes) with random BatchNorm statistics, saved as a file."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_050"])
def test_builders_give_working_detectors(name):
    model = build_detector(dict(name=name, **LIGHT), num_classes=NUM_CLASSES, min_size=SIZE, max_size=SIZE)
    taps = find_taps(model.backbone.body, input_size=(3, 64, 64))
    assert [t.stride for t in taps] == [4, 8, 16, 32]
    images, samples = _batch()
    model.train()
    _finite(model(images, [dict(boxes=s["boxes"], labels=s["labels"]) for s in samples]), TASK_LOSSES)
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4
    assert model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES


def test_torchvision_builder_takes_sizes_classes_weights_and_trainable_stages(tmp_path):
    classifier = torchvision.models.mobilenet_v3_large(num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "mbv3.pth")
    model = build_detector("fasterrcnn_mobilenet_v3_large_fpn", num_classes=5, min_size=SIZE, max_size=128,
                           backbone_checkpoint=str(tmp_path / "mbv3.pth"), trainable_layers=2)
    assert model.transform.min_size == (SIZE,) and model.transform.max_size == 128
    reference = classifier.state_dict()
    assert all(torch.equal(value, reference[f"features.{key}"])
               for key, value in model.backbone.body.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    stages = resolution_stages(model.backbone.body)
    assert len(stages) == 5
    assert all(p.requires_grad for stage in stages[-2:] for p in stage)
    assert not any(p.requires_grad for stage in stages[:-2] for p in stage)
    with pytest.raises(ValueError, match="strides and fpn_channels"):
        build_detector("fasterrcnn_resnet50_fpn", fpn_channels=64)


def test_backbone_checkpoint_loads_into_a_frozen_body(resnet18_checkpoint):
    path, state = resnet18_checkpoint
    model = build_detector("resnet18", num_classes=NUM_CLASSES, backbone_checkpoint=str(path))
    body = model.backbone.body
    for key, value in body.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for module in (body.conv1, body.layer1) for p in module.parameters())
    assert all(p.requires_grad for module in (body.layer2, body.layer3, body.layer4) for p in module.parameters())
    with pytest.raises(ValueError, match="backbone_checkpoint_prefix"):
        build_detector("resnet18", backbone_checkpoint=str(path), backbone_checkpoint_prefix="fc.")


def test_timm_body_loads_classifier_weights(tmp_path):
    import timm

    classifier = timm.create_model("mobilenetv3_small_050", num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "mbv3.pth")
    model = build_detector("mobilenetv3_small_050", backbone_checkpoint=str(tmp_path / "mbv3.pth"), frozen_bn=False,
                           trainable_layers=5)
    reference = classifier.state_dict()
    assert all(torch.equal(value, reference[key]) for key, value in model.backbone.body.state_dict().items())
    assert all(p.requires_grad for p in model.backbone.body.parameters())


def test_one_ofd_step_gives_finite_losses_and_student_gradients(distiller):
    distiller.train()
    distiller.zero_grad()
    losses = distiller(*_batch(), mode="loss")
    _finite(losses, TASK_LOSSES | {"loss_ofd"})
    assert losses["loss_ofd"] > 0
    sum(losses.values()).backward()
    student = distiller.student_model
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.body.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.distiller.regressors.parameters())
    assert student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in distiller.teacher.parameters())


def test_teacher_sees_the_student_batch_in_its_own_normalisation(distiller):
    assert distiller.renormalise
    images = torch.rand(2, 3, 8, 8)
    student_input = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(distiller.teacher_input(student_input), (images - 0.5) / 0.25, atol=1e-5)


def test_teacher_is_unchanged_by_training(distiller):
    before = {k: v.clone() for k, v in distiller.teacher.state_dict().items()}
    assert any(k.endswith("running_mean") for k in before)
    distiller.train()
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        sum(distiller(*_batch(), mode="loss").values()).backward()
        optimizer.step()
    after = distiller.teacher.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_predict_gives_boxes_in_original_image_coordinates(distiller):
    images, samples = _batch(sizes=((SIZE, SIZE), (72, 120)))
    distiller.eval()
    with torch.no_grad():
        raw = distiller.student_model(images)
        same = distiller(images, samples, mode="predict")
        scaled = [dict(s, orig_size=(2 * s["orig_size"][0], 2 * s["orig_size"][1]), scale_factor=0.5) for s in samples]
        scaled[1]["flipped"] = True
        restored = distiller(images, pseudo_collate(scaled), mode="predict")
    assert [p["image_id"] for p in same] == [1, 2] and [p["image_id"] for p in restored] == [1, 2]
    for detection, prediction in zip(raw, same):
        assert len(prediction["boxes"]) > 0
        assert torch.equal(prediction["boxes"], detection["boxes"])
        assert torch.equal(prediction["labels"], detection["labels"])
        assert torch.equal(prediction["scores"], detection["scores"])
    assert torch.allclose(restored[0]["boxes"], raw[0]["boxes"] * 2)
    x1, y1, x2, y2 = raw[1]["boxes"].unbind(1)
    assert torch.allclose(restored[1]["boxes"], torch.stack([120 - x2, y1, 120 - x1, y2], 1) * 2)
    assert restored[1]["boxes"][:, 0::2].max() <= 240 and restored[1]["boxes"][:, 1::2].max() <= 144


def test_checkpoint_holds_the_student_once_and_exports_it(distiller):
    state = distiller.state_dict()
    assert not any(k.startswith("distiller.student.") for k in state)
    assert not any(k.startswith("distiller.teacher.") for k in state)
    assert "distiller.teacher_sha256" in state and "distiller.margin_0" in state
    distiller.load_state_dict(state, strict=True)
    plain = build_detector(dict(name="mobilenetv3_small_050", **LIGHT), num_classes=NUM_CLASSES, min_size=SIZE,
                           max_size=SIZE)
    plain.load_state_dict(student_state_dict({"state_dict": state}), strict=True)


def test_frozen_batchnorm_teacher_gives_bn_margins(randomized):
    teacher = build_detector(dict(name="resnet18", frozen_bn=True, **LIGHT), num_classes=NUM_CLASSES)
    randomized(teacher.backbone.body)
    model = DetectionDistiller(teacher=teacher, student=dict(name="resnet18", **LIGHT), num_classes=NUM_CLASSES,
                               min_size=SIZE, max_size=SIZE, ofd=dict(input_size=(3, 64, 64)))
    body = model.teacher
    for tap, margin in zip(model.distiller.teacher_taps, model.distiller.margins):
        norm = body.get_submodule(tap.norm)
        assert isinstance(norm, FrozenBatchNorm2d)
        assert torch.allclose(margin, bn_margin(norm).float())
        assert (margin < 0).all()


def test_alpha_zero_trains_the_plain_student_without_a_teacher():
    model = DetectionDistiller(teacher=None, student=dict(name="resnet18", **LIGHT), num_classes=NUM_CLASSES,
                               min_size=SIZE, max_size=SIZE, ofd=dict(alpha=0))
    assert model.teacher is None and not hasattr(model, "distiller")
    model.train()
    _finite(model(*_batch(), mode="loss"), TASK_LOSSES)
    with pytest.raises(ValueError, match="needs a teacher"):
        DetectionDistiller(teacher=None, student=dict(name="resnet18", **LIGHT), num_classes=NUM_CLASSES)


@pytest.mark.parametrize("name, num_classes", [("ofd_frcnn_r101-to-r18_coco", 81), ("ofd_frcnn_r50-to-mbv3_coco", 81),
                                               ("frcnn_r101_coco", 81), ("ofd_frcnn_fashion_scenes", 11)])
def test_configs_load(name, num_classes):
    from overhaul_det.training import load_config

    cfg = load_config(str(CONFIG.with_name(f"{name}.py")))
    assert cfg.model.type == "DetectionDistiller" and cfg.model.num_classes == num_classes
    assert cfg.train_dataloader.dataset.type == "CocoDetection" and cfg.val_evaluator.type == "CocoDetectionMetric"
    assert cfg.train_dataloader.dataset.num_classes == num_classes
    assert (cfg.model.teacher is None) == (cfg.model.ofd.alpha == 0)


class _Predictions(Hook):
    """What the model returned in the val loop, image by image."""

    def __init__(self) -> None:
        self.outputs = []

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.outputs.extend(outputs)


def _pycocotools_stats(ann_file: str, predictions) -> list:
    """COCOeval's bbox stats over every image of ``ann_file`` for xyxy predictions with labels 1..K
    (K-th of the sorted category ids), computed here without the package's metric."""
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(ann_file)
        categories = sorted(truth.getCatIds())
        detections = [dict(image_id=int(p["image_id"]), category_id=categories[int(label) - 1],
                           bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score))
                      for p in predictions
                      for (x1, y1, x2, y2), score, label in zip(p["boxes"].tolist(), p["scores"], p["labels"])]
        evaluator = COCOeval(truth, truth.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return sorted(truth.getImgIds()), list(evaluator.stats)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_runner_trains_and_evaluates_ofd_on_scenes(tmp_path, resnet18_checkpoint):
    """Two OFD iterations, then validation: the metric saw every val image once, and its box mAPs are
    pycocotools' own on the predictions the Runner produced."""
    from overhaul_det.datasets.scenes import make_scenes
    from overhaul_det.training import build_runner, load_config

    make_scenes(tmp_path / "scenes", "train", 8, SIZE, seed=0, fmt=("coco",))
    root = str(tmp_path / "scenes")
    ann_file = f"{root}/annotations/instances_train.json"
    loader = dict(batch_size=4, num_workers=0, persistent_workers=False)
    options = {
        "model.teacher.backbone_checkpoint": str(resnet18_checkpoint[0]),
        "model.min_size": SIZE,
        "model.max_size": SIZE,
        "model.ofd.input_size": (3, 64, 64),
        "model.student.box_batch_size_per_image": 64,
        "model.student.box_score_thresh": 0.0,
        "model.student.box_detections_per_img": 1000,
        "train_dataloader": dict(loader, dataset=dict(data_root=root)),
        "val_dataloader": dict(loader, dataset=dict(data_root=root, ann_file="annotations/instances_train.json",
                                                    img_prefix="images/train")),
        "val_evaluator.ann_file": ann_file,
        "train_cfg.max_epochs": 1,
        "train_cfg.val_begin": 2,
        "default_hooks.logger.interval": 1,
        "default_hooks.checkpoint.interval": 1,
    }
    cfg = load_config(str(CONFIG), options)
    runner = build_runner(cfg, str(CONFIG), work_dir=str(tmp_path / "work"))
    runner.train()
    assert runner.iter == 2
    predictions = _Predictions()
    runner.register_hook(predictions)
    metrics = runner.val()
    images, stats = _pycocotools_stats(ann_file, predictions.outputs)
    assert sorted(int(p["image_id"]) for p in predictions.outputs) == images and len(images) == 8
    assert sum(len(p["boxes"]) for p in predictions.outputs) > 0 and stats[1] > 0
    assert {key: metrics[f"coco/{key}"] for key in BBOX_KEYS} == pytest.approx(dict(zip(BBOX_KEYS, stats)), abs=1e-12)
    checkpoint = load_checkpoint_file(tmp_path / "work" / "epoch_1.pth")
    assert not any(k.startswith("distiller.student.") for k in checkpoint["state_dict"])
