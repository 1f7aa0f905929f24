"""SegmentationMetric against numbers worked out by hand on a 4x4 image."""
import math

import pytest
import torch

from overhaul_det.evaluation.segmentation_metric import SegmentationMetric, confusion_matrix
from overhaul_det.registry import METRICS

GT = torch.tensor([[0, 0, 1, 1],
                   [0, 0, 1, 1],
                   [2, 2, 255, 255],
                   [2, 2, 1, 0]])
PRED = torch.tensor([[0, 1, 1, 1],
                     [0, 0, 1, 2],
                     [2, 0, 3, 3],
                     [2, 2, 1, 0]])


def test_hand_computed_scores_with_ignore_pixels_and_an_absent_class():
    """Class 3 is only predicted on ignored pixels, so it is absent: NaN, and left out of mIoU and mAcc.

    Class 0: 4 hits, 5 label px, 5 predicted px -> IoU 4/6; class 1: same; class 2: 3 hits, 4 and 4 -> 3/5.
    """
    metric = SegmentationMetric(num_classes=4, classes=("bg", "a", "b", "c"))
    metric.process({}, [dict(pred_seg=PRED, gt_seg=GT)])
    scores = metric.compute_metrics(metric.results)
    assert scores["IoU.bg"] == pytest.approx(4 / 6) and scores["IoU.a"] == pytest.approx(4 / 6)
    assert scores["IoU.b"] == pytest.approx(3 / 5) and math.isnan(scores["IoU.c"])
    assert scores["mIoU"] == pytest.approx((4 / 6 + 4 / 6 + 3 / 5) / 3)
    assert scores["aAcc"] == pytest.approx(11 / 14)
    assert scores["mAcc"] == pytest.approx((4 / 5 + 4 / 5 + 3 / 4) / 3)


def test_class_predicted_but_not_labelled_scores_zero_iou():
    metric = SegmentationMetric(num_classes=2)
    metric.process({}, [dict(pred_seg=torch.tensor([[0, 1]]), gt_seg=torch.tensor([[0, 0]]))])
    scores = metric.compute_metrics(metric.results)
    assert scores["IoU.0"] == pytest.approx(0.5) and scores["IoU.1"] == 0.0
    assert scores["mIoU"] == pytest.approx(0.25) and scores["mAcc"] == pytest.approx(0.5)


def test_matrices_sum_over_images_and_evaluate_adds_the_prefix():
    metric = METRICS.build(dict(type="SegmentationMetric", num_classes=4))
    metric.dataset_meta = dict(classes=("bg", "a", "b", "c"))
    metric.process({}, [dict(pred_seg=PRED[:2], gt_seg=GT[:2])])
    metric.process({}, [dict(pred_seg=PRED[2:], gt_seg=GT[2:])])
    assert len(metric.results) == 2
    scores = metric.evaluate(size=2)
    assert scores["seg/mIoU"] == pytest.approx((4 / 6 + 4 / 6 + 3 / 5) / 3) and "seg/IoU.bg" in scores
    assert metric.results == []


def test_bad_predictions_are_named():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(PRED[:2], GT, 4)
    assert confusion_matrix(PRED, GT, 3).sum() == 14
    wrong = PRED.clone()
    wrong[0, 0] = 3
    with pytest.raises(ValueError, match="pred_seg.*num_classes"):
        confusion_matrix(wrong, GT, 3)
    with pytest.raises(ValueError, match="gt_seg.*num_classes"):
        confusion_matrix(PRED, GT, 2)
