"""What every task adapter shares: built or loaded weights survive mmengine's start-up init; a teacher
without weights is warned about, a missing one refused; eval mode computes no OFD term; a misspelt spec
key is named; forward, loss and predict take mmengine's (inputs, data_samples)."""
from __future__ import annotations

import inspect
import logging

import pytest
import timm
import torch

from overhaul_det.registry import MODELS
from overhaul_det.tasks.base import DistillationModel
from overhaul_det.tasks.classification import ClassificationDistiller
from overhaul_det.tasks.detection import DetectionDistiller
from overhaul_det.tasks.segmentation import SegmentationDistiller

from conftest import assert_same_state, snapshot_state


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """timm classifiers whose own ``init_weights`` would re-draw them, saved as files."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for name in ("resnet18d", "resnet10t"):
        torch.manual_seed(1)
        model = timm.create_model(name, num_classes=10)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.5)  # nothing an initialiser would produce
        paths[name] = folder / f"{name}.pth"
        torch.save(model.state_dict(), paths[name])
    return paths


@pytest.mark.parametrize("alpha, kd_weight", [(0.0, 1.0), (0.0, 0.0), (1e-2, 0.0)])
def test_classification_runner_init_keeps_loaded_weights(checkpoints, alpha, kd_weight):
    model = ClassificationDistiller(
        teacher=dict(name="resnet18d", checkpoint=str(checkpoints["resnet18d"])),
        student=dict(name="resnet10t", checkpoint=str(checkpoints["resnet10t"])),
        num_classes=10, ofd=dict(alpha=alpha, input_size=(3, 64, 64)), kd_weight=kd_weight)
    before = snapshot_state(model)
    model.init_weights()  # what mmengine's Runner calls before training
    assert_same_state(model, before)
    expected = torch.load(checkpoints["resnet18d"], weights_only=True)
    assert torch.equal(model.teacher.conv1[0].weight, expected["conv1.0.weight"])


def test_detection_and_segmentation_runner_init_keep_weights():
    detector = DetectionDistiller(teacher=dict(name="resnet18d"), student=dict(name="resnet10t", fpn_channels=32),
                                  num_classes=3, min_size=64, max_size=64, ofd=dict(alpha=0.0))
    segmenter = SegmentationDistiller(teacher=dict(backbone="resnet18d", channels=32),
                                      student=dict(backbone="resnet10t", channels=32), num_classes=3,
                                      ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))
    for model in (detector, segmenter):
        before = snapshot_state(model)
        model.init_weights()
        assert_same_state(model, before)


# ---------------------------------------------------------------------------------------------
# A teacher without weights


def _classification(teacher):
    return ClassificationDistiller(teacher=teacher, student=dict(name="timm/resnet10t"), num_classes=10,
                                   ofd=dict(alpha=0.0), kd_weight=1.0)


def _detection(teacher):
    return DetectionDistiller(teacher=teacher, student=dict(name="timm/resnet10t", fpn_channels=32), num_classes=3,
                              min_size=64, max_size=64, ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


def _segmentation(teacher):
    return SegmentationDistiller(teacher=teacher, student=dict(backbone="timm/resnet10t", channels=32), num_classes=3,
                                 ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


def _random_teacher_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "RANDOMLY INITIALISED" in r.getMessage()]


@pytest.mark.parametrize("build, key, weights", [
    (_classification, "name", lambda path: dict(checkpoint=path)),
    (_detection, "name", lambda path: dict(backbone_checkpoint=path)),
    (_segmentation, "backbone", lambda path: dict(pretrained_backbone=True, pretrained_cfg_overlay=dict(file=path))),
], ids=["classification", "detection", "segmentation"])
def test_a_teacher_spec_without_weights_warns_once(build, key, weights, checkpoints, caplog):
    with caplog.at_level(logging.WARNING):
        build({key: "timm/resnet18d"})
    (message,) = _random_teacher_warnings(caplog)
    assert f"model.teacher ({key}='timm/resnet18d') has no weights" in message
    assert "model.teacher.checkpoint=PATH" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build({key: "timm/resnet18d", **weights(str(checkpoints["resnet18d"]))})
    assert _random_teacher_warnings(caplog) == []


def test_a_teacher_module_is_taken_as_it_is(caplog):
    with caplog.at_level(logging.WARNING):
        _classification(timm.create_model("resnet18d", num_classes=10))
    assert _random_teacher_warnings(caplog) == []


# ---------------------------------------------------------------------------------------------
# Eval mode: no OFD term


@pytest.fixture(scope="module")
def ofd_models():
    torch.manual_seed(0)
    classifier = ClassificationDistiller(teacher=dict(name="timm/resnet18d"), student=dict(name="timm/resnet10t"),
                                         num_classes=3, ofd=dict(alpha=1e-2, input_size=(3, 32, 32)))
    return dict(classification=(classifier, dict(inputs=torch.randn(2, 3, 32, 32), data_samples=[0, 2])),
                segmentation=(_segmentation(dict(backbone="timm/resnet18d", channels=32)),
                              dict(inputs=[torch.randn(3, 64, 64) for _ in range(2)],
                                   data_samples=[dict(gt_seg=torch.randint(0, 3, (64, 64))) for _ in range(2)])))


def _count_teacher_calls(model):
    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in model.teacher.modules()]
    return calls, handles


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_eval_mode_runs_no_teacher_and_returns_no_ofd_loss(ofd_models, task):
    model, batch = ofd_models[task]
    calls, handles = _count_teacher_calls(model)
    try:
        model.eval()
        losses = model(**model.data_preprocessor(batch, False), mode="loss")
        model.val_step(batch)
        assert "loss_ofd" not in losses and losses and calls == []
        model.train()
        losses = model(**model.data_preprocessor(batch, True), mode="loss")
        assert "loss_ofd" in losses and calls
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# A misspelt key in a model spec


@pytest.mark.parametrize("build, message", [
    (lambda: MODELS.build(dict(type="ClassificationDistiller", teacher=dict(name="resnet18", checkpiont="t.pth"),
                               student=dict(name="timm/resnet10t"), num_classes=3, ofd=dict(alpha=0.0))),
     r"model\.teacher\.checkpiont: unknown key \(.*checkpiont.*\); did you mean model\.teacher\.checkpoint\? "
     r"build_classifier takes name, num_classes, pretrained, checkpoint, checkpoint_prefix"),
    (lambda: SegmentationDistiller(teacher=None, student=dict(backbone="timm/resnet10t", chanels=16), num_classes=3,
                                   ofd=dict(alpha=0.0)),
     r"model\.student\.chanels: .*did you mean model\.student\.channels\?"),
    (lambda: DetectionDistiller(teacher=None, student=dict(name="resnet18", fpn_chanels=32), num_classes=3,
                                ofd=dict(alpha=0.0)),
     r"model\.student\.fpn_chanels: .*did you mean model\.student\.fpn_channels\?"),
], ids=["classification", "segmentation", "detection"])
def test_a_misspelt_spec_key_is_named_with_the_nearest_valid_one(build, message):
    with pytest.raises(TypeError, match=message):
        build()


@pytest.mark.parametrize("build", [
    lambda ofd: ClassificationDistiller("resnet18", "timm/resnet10t", num_classes=3, ofd=ofd),
    lambda ofd: DetectionDistiller(None, dict(name="resnet18", fpn_channels=32), num_classes=3, ofd=ofd),
    lambda ofd: SegmentationDistiller(None, dict(backbone="timm/resnet10t", channels=16), num_classes=3, ofd=ofd),
], ids=["classification", "detection", "segmentation"])
@pytest.mark.parametrize("ofd, message", [
    (dict(alpah=1e-2), r"^model\.ofd\.alpah: unknown key; did you mean model\.ofd\.alpha\? FeatureDistiller takes "
                       r"teacher_taps, .*alpha, .*tracer_kwargs$"),
    (dict(alpha=0, teacher_precison="float32"), r"^model\.ofd\.teacher_precison: .*did you mean "
                                                 r"model\.ofd\.teacher_precision\?"),
], ids=["alpha", "baseline"])
def test_a_misspelt_ofd_key_is_named_before_any_model_is_built(build, ofd, message):
    with pytest.raises(TypeError, match=message):
        build(ofd)


# ---------------------------------------------------------------------------------------------
# The teacher guard


@pytest.mark.parametrize("build, message", [
    (lambda: ClassificationDistiller(None, "timm/resnet10t", num_classes=3, ofd=dict(alpha=0), kd_weight=1.0),
     r"OFD or KD needs a teacher; set teacher=dict\(name=\.\.\., checkpoint=\.\.\.\) or ofd\.alpha=0 and kd_weight=0"),
    (lambda: DetectionDistiller(None, dict(name="timm/resnet10t", fpn_channels=32), num_classes=3, min_size=64,
                                max_size=64),
     r"OFD needs a teacher; set teacher=dict\(name=\.\.\., checkpoint=\.\.\.\) or ofd\.alpha=0"),
    (lambda: SegmentationDistiller(None, dict(backbone="timm/resnet10t", channels=16), num_classes=3),
     r"OFD needs a teacher; set teacher=dict\(backbone=\.\.\., checkpoint=\.\.\.\) or ofd\.alpha=0"),
], ids=["classification", "detection", "segmentation"])
def test_a_missing_teacher_is_refused_naming_the_fix(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_an_unused_teacher_is_built_by_classification_only(caplog):
    """Classification builds and freezes a teacher no term uses (its initialisation draws from the RNG the
    published baselines were trained after); detection and segmentation leave it out and say so.
    Specs may be bare names."""
    classifier = ClassificationDistiller("timm/resnet18d", "timm/resnet10t", num_classes=3, ofd=dict(alpha=0))
    assert isinstance(classifier.teacher, timm.models.ResNet) and not classifier.teacher.training
    assert not any(p.requires_grad for p in classifier.teacher.parameters())
    with caplog.at_level(logging.INFO, logger="overhaul_det.tasks.base"):
        detector = DetectionDistiller("timm/resnet18d", "timm/resnet10t", num_classes=3, min_size=64, max_size=64,
                                      ofd=dict(alpha=0))
        segmenter = SegmentationDistiller("timm/resnet18d", "timm/resnet10t", num_classes=3, ofd=dict(alpha=0))
    assert detector.teacher is None and segmenter.teacher is None
    assert not any(key.startswith(("teacher", "distiller")) for model in (detector, segmenter)
                   for key in model.state_dict())
    assert [r.getMessage() for r in caplog.records].count("ofd.alpha=0: the teacher is not built (baseline run)") == 2


# ---------------------------------------------------------------------------------------------
# mmengine's (inputs, data_samples) convention

ADAPTERS = (ClassificationDistiller, DetectionDistiller, SegmentationDistiller)
PREDICTED = dict(classification="pred_score", detection="boxes", segmentation="pred_seg")


def _baseline(task):
    """A baseline adapter of ``task`` and a two-image batch as its dataset and collate give it."""
    torch.manual_seed(0)
    if task == "classification":
        model = ClassificationDistiller(None, "timm/resnet10t", num_classes=3, ofd=dict(alpha=0))
        return model, dict(inputs=torch.randn(2, 3, 32, 32), data_samples=[dict(gt_label=0), dict(gt_label=2)])
    if task == "detection":
        model = DetectionDistiller(None, dict(name="timm/resnet10t", fpn_channels=32, box_score_thresh=0.0),
                                   num_classes=3, min_size=64, max_size=64, ofd=dict(alpha=0))
        samples = [dict(image_id=i + 1, orig_size=(64, 64), flipped=False) for i in range(2)]
        return model, dict(inputs=[torch.rand(3, 64, 64) for _ in range(2)], data_samples=samples)
    model = SegmentationDistiller(None, dict(backbone="timm/resnet10t", channels=16), num_classes=3, ofd=dict(alpha=0))
    samples = [dict(gt_seg=torch.randint(0, 3, (64, 64)), img_path=f"{i}.png") for i in range(2)]
    return model, dict(inputs=[torch.randn(3, 64, 64) for _ in range(2)], data_samples=samples)


def _assert_same_results(expected, got):
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key], key


@pytest.mark.parametrize("cls", ADAPTERS, ids=lambda cls: cls.__name__)
def test_the_adapters_share_forward_and_take_inputs_then_data_samples(cls):
    assert cls.forward is DistillationModel.forward
    for method in (cls.loss, cls.predict):
        assert list(inspect.signature(method).parameters) == ["self", "inputs", "data_samples"], method
    assert inspect.signature(cls.predict).parameters["data_samples"].default is None


@pytest.mark.parametrize("task", sorted(PREDICTED))
def test_predict_takes_the_batch_as_forward_and_val_step_do(task):
    """predict(inputs, data_samples) is what mode='predict' and mmengine's val_step return; without
    samples it predicts the same for each image; an unknown mode is named."""
    model, batch = _baseline(task)
    model.eval()
    data = model.data_preprocessor(batch, False)
    with torch.no_grad():
        direct = model.predict(data["inputs"], data["data_samples"])
        bare = model.predict(data["inputs"])
        _assert_same_results(direct, model(**data, mode="predict"))
    _assert_same_results(direct, model.val_step(batch))
    assert len(direct) == len(bare) == 2
    key = PREDICTED[task]
    assert all(torch.equal(a[key], b[key]) for a, b in zip(direct, bare))
    assert all(len(result[key]) for result in direct)
    with pytest.raises(ValueError, match="mode='logits'; expected 'loss', 'predict' or 'tensor'"):
        model(**data, mode="logits")


def test_alpha_auto_weights_loss_ofd_against_the_task_losses():
    model = ClassificationDistiller(teacher=dict(name="resnet18"), student=dict(name="timm/mobilenetv3_small_050"),
                                    num_classes=10, ofd=dict(alpha="auto", alpha_series=None, input_size=(3, 32, 32))).train()
    inputs = torch.randn(4, 3, 32, 32)
    samples = [dict(gt_label=i) for i in range(4)]
    losses = model.loss(inputs, samples)
    _, log_vars = model.parse_losses(losses)
    assert float(log_vars["loss_ofd"]) == pytest.approx(16.0 * float(log_vars["loss_cls"]), rel=1e-5)
    assert float(model.distiller.alpha_auto) > 0


@pytest.mark.parametrize("alpha", ["autp", -1e-3, None])
def test_a_bad_alpha_is_named(alpha):
    with pytest.raises(ValueError, match=rf"model.ofd.alpha={alpha!r}; give a number >= 0 \(0 trains the plain "
                                         r"baseline\) or 'auto'"):
        ClassificationDistiller(teacher=dict(name="resnet18"), student=dict(name="timm/mobilenetv3_small_050"),
                                num_classes=10, ofd=dict(alpha=alpha, input_size=(3, 32, 32)))


# ---------------------------------------------------------------------------------------------
# A channels-last student


def _channels_last_case(task, channels_last):
    """A task model (built from seed 0, so both layouts get the same weights) and a batch for it."""
    torch.manual_seed(0)
    layout = dict(num_classes=3, student_channels_last=channels_last)
    if task == "classification":
        model = ClassificationDistiller(teacher=dict(name="timm/resnet18d"), student=dict(name="timm/mobilenetv3_small_050"),
                                        ofd=dict(alpha=1e-2, input_size=(3, 32, 32)), **layout)
        return model, dict(inputs=torch.randn(8, 3, 32, 32), data_samples=[0, 2, 1, 1, 0, 2, 2, 1])
    if task == "segmentation":
        model = SegmentationDistiller(teacher=dict(backbone="timm/resnet18d", channels=32),
                                      student=dict(backbone="timm/resnet10t", channels=32),
                                      ofd=dict(alpha=1e-3, input_size=(3, 64, 64)), **layout)
        return model, dict(inputs=[torch.randn(3, 64, 64) for _ in range(8)],
                           data_samples=[dict(gt_seg=torch.randint(0, 3, (64, 64))) for _ in range(8)])
    model = DetectionDistiller(teacher=dict(name="timm/resnet18d", fpn_channels=32),
                               student=dict(name="timm/resnet10t", fpn_channels=32), min_size=64, max_size=64,
                               ofd=dict(alpha=1e-3, input_size=(3, 64, 64)), **layout)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0]])
    return model, dict(inputs=[torch.rand(3, 64, 64) for _ in range(2)],
                       data_samples=[dict(boxes=boxes, labels=torch.tensor([1])) for _ in range(2)])


def _train_losses(model, batch):
    model.train()
    for module in model.modules():  # dropout draws its mask in memory order: one mask per layout
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    torch.manual_seed(1)  # the detector samples its proposals
    data = model.data_preprocessor(batch, True)
    losses = model(**data, mode="loss")
    sum(losses.values()).backward()
    return {name: float(value) for name, value in losses.items()}


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_a_channels_last_student_trains_as_the_contiguous_one(task):
    plain, batch = _channels_last_case(task, False)
    fast, _ = _channels_last_case(task, True)
    weights = [p for p in fast.student.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert any(not p.is_contiguous() for p in weights)
    assert all(p.is_contiguous() for p in [*plain.student.parameters(), *fast.teacher.parameters()])
    expected, measured = _train_losses(plain, batch), _train_losses(fast, batch)
    assert expected.keys() == measured.keys() and "loss_ofd" in measured
    for name, value in expected.items():
        assert measured[name] == pytest.approx(value, rel=1e-3), name
    grads = [torch.cat([p.grad.flatten() for p in m.student.parameters() if p.grad is not None]) for m in (plain, fast)]
    assert float((grads[1] - grads[0]).norm() / grads[0].norm()) < 1e-3


def test_a_bad_student_channels_last_is_named():
    with pytest.raises(ValueError, match=r"model.student_channels_last='yes'; give True or False"):
        ClassificationDistiller(teacher=None, student=dict(name="timm/resnet10t"), num_classes=3,
                                ofd=dict(alpha=0.0), student_channels_last="yes")
