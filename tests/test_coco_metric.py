"""CocoDetectionMetric gives the numbers of a direct COCOeval call on the same detections."""
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from overhaul_det.datasets.coco import CocoDetection
from overhaul_det.datasets.scenes import make_scenes
from overhaul_det.evaluation.coco_metric import BBOX_KEYS, CocoDetectionMetric
from overhaul_det.registry import METRICS


@pytest.fixture(scope="module")
def ann_file(tmp_path_factory, fashion_files):
    out = tmp_path_factory.mktemp("scenes")
    return str(make_scenes(out, "test", 8, 96, seed=3, fmt=("coco",), fashion_root=fashion_files)["coco"])


def _fake_detections(coco: COCO):
    """Ground-truth boxes jittered by up to 4 px with random scores, plus one false positive per image."""
    rng = np.random.default_rng(0)
    samples, flat = [], []
    for image_id in sorted(coco.imgs):
        boxes, scores, labels = [], [], []
        for ann in coco.imgToAnns[image_id]:
            x, y, w, h = np.array(ann["bbox"], dtype=np.float64) + rng.uniform(-4, 4, 4)
            boxes.append([x, y, x + max(w, 2), y + max(h, 2)])
            scores.append(rng.uniform(0.3, 1.0))
            labels.append(ann["category_id"])
        boxes.append([5.0, 5.0, 30.0, 40.0])
        scores.append(0.9)
        labels.append(int(rng.integers(1, 11)))
        samples.append(dict(image_id=image_id, boxes=torch.tensor(boxes), scores=torch.tensor(scores),
                            labels=torch.tensor(labels)))
        flat += [dict(image_id=image_id, category_id=label, score=float(score),
                      bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]])
                 for box, score, label in zip(boxes, scores, labels)]
    return samples, flat


def _direct_cocoeval(coco: COCO, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(detections), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:6]


def test_metric_equals_direct_cocoeval(ann_file):
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    samples, flat = _fake_detections(coco)
    metric = METRICS.build(dict(type="CocoDetectionMetric", ann_file=ann_file))
    metric.process({}, samples[:5])
    metric.process({}, samples[5:])
    scores = metric.evaluate(size=len(samples))
    expected = _direct_cocoeval(coco, flat)
    assert 0 < scores["coco/bbox_mAP"] < 1
    assert [scores[f"coco/{key}"] for key in BBOX_KEYS] == pytest.approx(list(expected), abs=1e-12)


def test_ground_truth_and_label_map_come_from_the_dataset(ann_file):
    dataset = CocoDetection(str(Path(ann_file).parents[1]), ann_file, "images/test", train=False)
    metric = CocoDetectionMetric()
    metric.dataset_meta = dataset.metainfo
    for index in range(len(dataset)):
        sample = dataset[index]["data_samples"]
        metric.process({}, [dict(image_id=sample["image_id"], boxes=sample["boxes"],
                                 scores=torch.ones(len(sample["labels"])), labels=sample["labels"])])
    assert metric.evaluate(size=len(dataset))["coco/bbox_mAP"] == pytest.approx(1.0)


def test_no_detections_scores_zero_and_unknown_labels_are_named(ann_file):
    metric = CocoDetectionMetric(ann_file=ann_file, label_to_cat={1: 1})
    empty = dict(image_id=1, boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))
    metric.process({}, [empty])
    scores = metric.compute_metrics(metric.results)
    assert scores["bbox_mAP"] == 0.0 and set(scores.values()) <= {0.0, -1.0}
    metric.process({}, [dict(empty, boxes=torch.ones(1, 4), scores=torch.ones(1), labels=torch.tensor([2]))])
    with pytest.raises(ValueError, match="label 2"):
        metric.compute_metrics(metric.results)
    with pytest.raises(ValueError, match="ann_file"):
        CocoDetectionMetric().compute_metrics([])


def test_an_epoch_without_detections_gives_minus_one_where_cocoeval_does(ann_file):
    """A size range with no ground truth reads -1 on every epoch, with detections or without."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
    one_miss = [dict(image_id=image_id, category_id=sorted(coco.cats)[0], score=0.5, bbox=[0.0, 0.0, 1.0, 1.0])
                for image_id in sorted(coco.imgs)]
    with_detections = _direct_cocoeval(coco, one_miss)
    metric = CocoDetectionMetric(ann_file=ann_file)
    metric.process({}, [dict(image_id=image_id, boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                             labels=torch.zeros(0, dtype=torch.long)) for image_id in sorted(coco.imgs)])
    without = metric.compute_metrics(metric.results)
    assert -1.0 in list(with_detections) and 0.0 in list(with_detections)
    assert [without[key] for key in BBOX_KEYS] == [-1.0 if value == -1 else 0.0 for value in with_detections]
