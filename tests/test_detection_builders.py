"""Every torchvision detection builder through build_detector and DetectionDistiller: its own losses plus
loss_ofd, as student and as teacher of another detector type; Mask R-CNN's masks from the COCO files to segm mAP."""
import pytest
import torch
import torchvision
from torchvision.models.detection.ssd import SSD

from overhaul_det.datasets.coco import CocoDetection
from overhaul_det.evaluation.coco_metric import BBOX_KEYS, SEGM_KEYS, CocoDetectionMetric
from overhaul_det.models.detection import TORCHVISION_DETECTORS, build_detector, feature_extractor
from overhaul_det.taps.presets import SSD_MAX_TAP_STRIDE
from overhaul_det.tasks.detection import DetectionDistiller

SIZE = 96
NUM_CLASSES = 4
NUM_KEYPOINTS = 17
RCNN_LIGHT = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_batch_size_per_image=64,
                  box_batch_size_per_image=32)
PARTNER = dict(name="mobilenetv3_small_050", fpn_channels=32, **RCNN_LIGHT)
RCNN_LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
# Each family's own loss keys ('loss_' added where torchvision's lack it, so that mmengine sums them).
STUDENT_LOSSES = {
    "retinanet_resnet50_fpn": {"loss_classification", "loss_bbox_regression"},
    "fcos_resnet50_fpn": {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"},
    "ssdlite320_mobilenet_v3_large": {"loss_classification", "loss_bbox_regression"},
    "ssd300_vgg16": {"loss_classification", "loss_bbox_regression"},
    "maskrcnn_resnet50_fpn": RCNN_LOSSES | {"loss_mask"},
    "keypointrcnn_resnet50_fpn": RCNN_LOSSES | {"loss_keypoint"},
    "fasterrcnn_mobilenet_v3_large_320_fpn": RCNN_LOSSES,
}


def _batch(size=SIZE):
    """Two images with two boxes each, the boxes' filled masks and synthetic keypoints inside them."""
    generator = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[8.0, 10.0, 50.0, 60.0], [30.0, 25.0, 90.0, 80.0]])
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    points = boxes[:, None, :2] + (boxes[:, None, 2:] - boxes[:, None, :2]) * torch.rand(
        2, NUM_KEYPOINTS, 2, generator=generator)
    keypoints = torch.cat([points, torch.ones(2, NUM_KEYPOINTS, 1)], dim=2)
    samples = [dict(image_id=i + 1, boxes=boxes, labels=torch.tensor([1, NUM_CLASSES - 1]), masks=masks,
                    keypoints=keypoints, orig_size=(size, size)) for i in range(2)]
    return [torch.rand(3, size, size, generator=generator) for _ in samples], samples


def _spec(name):
    return dict(name=name, **RCNN_LIGHT) if name.split("_")[0].endswith("rcnn") else dict(name=name)


def _distiller(teacher, student):
    torch.manual_seed(0)
    return DetectionDistiller(teacher=teacher, student=student, num_classes=NUM_CLASSES, min_size=SIZE,
                              max_size=SIZE, ofd=dict(alpha=1e-3, input_size=(3, SIZE, SIZE))).train()


def _step(model):
    """One loss and backward: the losses, all finite, and the student extractor's parameters without a gradient."""
    images, samples = _batch()
    losses = model.loss(images, samples)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total, _ = model.parse_losses(losses)
    total.backward()
    extractor = feature_extractor(model.student_model)
    return losses, [n for n, p in extractor.named_parameters() if p.requires_grad and p.grad is None]


def test_every_torchvision_detection_builder_is_known():
    assert set(TORCHVISION_DETECTORS) == set(torchvision.models.list_models(torchvision.models.detection))
    assert len(TORCHVISION_DETECTORS) == 12


@pytest.mark.parametrize("name", sorted(STUDENT_LOSSES))
def test_student_gives_its_own_losses_and_loss_ofd(name):
    """As student of a small Faster R-CNN teacher: the family's own loss keys plus loss_ofd, gradients at every
    trainable parameter of its feature extractor (Keypoint R-CNN on synthetic keypoints: the scenes have none)."""
    model = _distiller(PARTNER, _spec(name))
    losses, without_grad = _step(model)
    assert set(losses) == STUDENT_LOSSES[name] | {"loss_ofd"}
    assert not without_grad
    assert [t.stride for t in model.distiller.student_taps] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", ["ssd300_vgg16", "retinanet_resnet50_fpn"])
def test_teacher_of_another_detector_type_is_unchanged(name):
    """An SSD300 teacher (probed at 320 px, cut at stride 32) runs on the student's 96 px batch; its state holds."""
    model = _distiller(_spec(name), PARTNER)
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    losses, without_grad = _step(model)
    assert set(losses) == RCNN_LOSSES | {"loss_ofd"} and not without_grad
    assert [t.stride for t in model.distiller.teacher_taps] == [4, 8, 16, 32]
    assert all(torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())


def test_ssd_keeps_its_fixed_size_and_taps_its_whole_backbone():
    model = build_detector("ssdlite320_mobilenet_v3_large", num_classes=NUM_CLASSES, min_size=SIZE, max_size=SIZE)
    assert isinstance(model, SSD) and model.transform.fixed_size == (320, 320)
    assert feature_extractor(model) is model.backbone
    with pytest.raises(ValueError, match="anchor_sizes"):
        build_detector("ssdlite320_mobilenet_v3_large", anchor_sizes=[(32,)])
    with pytest.raises(TypeError, match="unexpected keyword argument 'rpn_batch_size_per_image'"):
        build_detector("ssdlite320_mobilenet_v3_large", rpn_batch_size_per_image=8)
    assert SSD_MAX_TAP_STRIDE == 32


def test_unknown_detector_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean retinanet_resnet50_fpn"):
        build_detector("retinanet_resnet50")
    with pytest.raises(ValueError, match="unknown model name"):
        build_detector("not_a_model_at_all")


def test_mask_rcnn_without_masks_says_how_to_get_them():
    model = _distiller(PARTNER, _spec("maskrcnn_resnet50_fpn"))
    images, samples = _batch()
    for sample in samples:
        del sample["masks"]
    with pytest.raises(ValueError, match="with_masks=True"):
        model.loss(images, samples)


def test_mask_rcnn_predicts_masks_in_original_pixels():
    model = _distiller(PARTNER, dict(_spec("maskrcnn_resnet50_fpn"), box_score_thresh=0.0)).eval()
    images, samples = _batch()
    samples[0]["orig_size"] = (2 * SIZE, SIZE)
    with torch.no_grad():
        outputs = model.predict(images, samples)
    assert outputs[0]["masks"].shape == (len(outputs[0]["boxes"]), 2 * SIZE, SIZE)


@pytest.fixture()
def scenes(tmp_path, fashion_data):
    from overhaul_det.datasets.scenes import make_scenes

    make_scenes(tmp_path / "scenes", "train", 4, 64, seed=0, fmt=("coco",))
    return str(tmp_path / "scenes"), str(tmp_path / "scenes" / "annotations" / "instances_train.json")


def test_coco_masks_follow_resize_and_flip(scenes):
    """with_masks=True: one mask per box, inside it, resized and flipped with the image."""
    root, ann_file = scenes
    dataset = CocoDetection(root, ann_file, img_prefix="images/train", resize=(1.5, 1.5), flip_prob=1.0,
                            with_masks=True)
    sample = dataset[0]["data_samples"]
    masks, boxes = sample["masks"], sample["boxes"]
    assert masks.dtype == torch.uint8 and masks.shape == (len(boxes), 96, 96) and sample["flipped"]
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) and xs.min() >= x1 - 1 and xs.max() <= x2 and ys.min() >= y1 - 1 and ys.max() <= y2
    assert "masks" not in CocoDetection(root, ann_file, img_prefix="images/train")[0]["data_samples"]


def test_segm_map_of_the_ground_truth_is_one(scenes):
    """The ground truth's own masks and boxes as detections score segm and bbox mAP 1 (areas > 0)."""
    root, ann_file = scenes
    dataset = CocoDetection(root, ann_file, img_prefix="images/train", train=False, with_masks=True)
    metric = CocoDetectionMetric(ann_file=ann_file, label_to_cat=dataset.label_to_cat, iou_types=("bbox", "segm"))
    for item in dataset:
        sample = item["data_samples"]
        metric.process(None, [dict(image_id=sample["image_id"], boxes=sample["boxes"], labels=sample["labels"],
                                   scores=torch.ones(len(sample["labels"])), masks=sample["masks"].float())])
    results = metric.compute_metrics(metric.results)
    assert set(results) == set(BBOX_KEYS) | set(SEGM_KEYS)
    assert results["segm_mAP"] == pytest.approx(1.0) and results["bbox_mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="iou_types"):
        CocoDetectionMetric(iou_types=("keypoints",))
