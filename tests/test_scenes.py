"""Scene composer: COCO and VOC files that load, agree with each other, and repeat under a seed."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from overhaul_det.datasets.fashion_mnist import CLASSES
from overhaul_det import cli
from overhaul_det.datasets.scenes import SCENE_CLASSES, make_scenes

SIZE = 96
NUM_IMAGES = 8


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fashion_files):
    out = tmp_path_factory.mktemp("scenes")
    written = make_scenes(out, "train", NUM_IMAGES, SIZE, seed=0, fashion_root=fashion_files)
    return out, written


def _files(root: Path) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_coco_json_loads_and_lists_every_image(scenes):
    out, written = scenes
    assert written["coco"] == out / "annotations" / "instances_train.json"
    coco = COCO(str(written["coco"]))
    assert len(coco.imgs) == NUM_IMAGES
    assert [coco.cats[i]["name"] for i in range(1, 11)] == list(CLASSES)
    assert SCENE_CLASSES == ("background",) + CLASSES
    assert len(coco.anns) >= NUM_IMAGES
    for image in coco.imgs.values():
        with Image.open(out / "images" / "train" / image["file_name"]) as picture:
            assert picture.mode == "RGB" and picture.size == (image["width"], image["height"]) == (SIZE, SIZE)


def test_boxes_inside_images_and_match_their_masks(scenes):
    _, written = scenes
    dataset = json.loads(written["coco"].read_text())
    assert {ann["category_id"] for ann in dataset["annotations"]} <= set(range(1, 11))
    for ann in dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
        assert ann["iscrowd"] == 0
        rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
        assert np.abs(mask_utils.toBbox(rle) - np.array(ann["bbox"])).max() <= 1
        assert mask_utils.area(rle) == ann["area"] > 0


def test_voc_labels_are_palette_class_maps_matching_the_coco_masks(scenes):
    out, written = scenes
    stems = written["voc"].read_text().split()
    assert stems == [f"train_{i:06d}" for i in range(NUM_IMAGES)]
    coco = COCO(str(written["coco"]))
    for index, stem in enumerate(stems):
        with Image.open(out / "SegmentationClass" / f"{stem}.png") as label, \
                Image.open(out / "JPEGImages" / f"{stem}.jpg") as image:
            assert label.mode == "P" and label.size == image.size == (SIZE, SIZE)
            classes = np.array(label)
        assert set(np.unique(classes)) <= set(range(11))
        for ann in coco.imgToAnns[index + 1]:
            assert (classes[coco.annToMask(ann) > 0] == ann["category_id"]).all()


@pytest.mark.usefixtures("fashion_data")
def test_same_seed_gives_identical_bytes_and_another_seed_differs(scenes, tmp_path):
    out, _ = scenes
    make_scenes(tmp_path / "again", "train", NUM_IMAGES, SIZE, seed=0)
    make_scenes(tmp_path / "other", "train", NUM_IMAGES, SIZE, seed=1)
    first, again, other = _files(out), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first["images/train/000000.png"] != other["images/train/000000.png"]


@pytest.mark.usefixtures("fashion_data")
def test_cli_writes_only_the_requested_format(tmp_path):
    assert cli.main(["make-scenes", str(tmp_path), "--split", "test", "--num-images", "3", "--image-size", "64",
                     "--format", "coco"]) == 0
    assert len(COCO(str(tmp_path / "annotations" / "instances_test.json")).imgs) == 3
    assert not (tmp_path / "JPEGImages").exists()


def test_cli_refuses_a_misspelt_split_before_writing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["make-scenes", str(tmp_path / "out"), "--split", "vall"])
    assert re.search(r"--split: invalid choice: 'vall' \(choose from '?train'?, '?val'?, '?test'?\)",
                     capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs", [dict(min_objects=3, max_objects=2), dict(fmt=("yolo",)), dict(image_size=4),
                                    dict(split="../up")])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_scenes(tmp_path, num_images=1, **kwargs)


def test_log_counts_objects_of_voc_only_scenes(tmp_path, fashion_files, caplog):
    with caplog.at_level("INFO", logger="overhaul_det.datasets.scenes"):
        make_scenes(tmp_path / "voc", "train", 3, SIZE, seed=0, fmt=("voc",), fashion_root=fashion_files)
        make_scenes(tmp_path / "coco", "train", 3, SIZE, seed=0, fmt=("coco",), fashion_root=fashion_files)
    summaries = [r.getMessage() for r in caplog.records if "objects ->" in r.getMessage()]
    counts = [int(message.split(" objects")[0].rsplit(" ", 1)[1]) for message in summaries]
    annotations = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())["annotations"]
    assert counts == [len(annotations), len(annotations)] and counts[0] > 0
