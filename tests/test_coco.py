"""CocoDetection: targets follow resize and flip; bad annotation files fail at construction, by name."""
import copy
import json

import pytest
import torch
from mmengine.dataset import pseudo_collate
from PIL import Image
from torch.utils.data import DataLoader

from overhaul_det.datasets.coco import CocoDetection
from overhaul_det.datasets.fashion_mnist import CLASSES
from overhaul_det.datasets.scenes import make_scenes
from overhaul_det.registry import DATASETS

SIZE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fashion_files):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, "train", 8, SIZE, seed=0, fmt=("coco",), fashion_root=fashion_files)
    return out


def _dataset(root, **kwargs):
    return CocoDetection(str(root), "annotations/instances_train.json", "images/train", **kwargs)


def _tiny_coco(tmp_path, annotations, images=None):
    """A 40x30 image file and a COCO file holding the given annotations."""
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (30, 20, 10)).save(tmp_path / "b.png")
    dataset = dict(
        images=images or [dict(id=1, file_name="a.png", width=40, height=30),
                          dict(id=2, file_name="b.png", width=40, height=30)],
        annotations=annotations,
        categories=[dict(id=3, name="cat"), dict(id=7, name="dog")],
    )
    (tmp_path / "ann.json").write_text(json.dumps(dataset))
    return str(tmp_path / "ann.json")


GOOD = dict(id=5, image_id=1, category_id=7, bbox=[2, 3, 10, 12], area=120, iscrowd=0)


def test_items_have_torchvision_target_format(scenes):
    dataset = _dataset(scenes, train=False)
    assert len(dataset) == 8
    assert dataset.metainfo["classes"] == CLASSES and dataset.label_to_cat == tuple(range(1, 11))
    item = dataset[0]
    sample = item["data_samples"]
    assert item["inputs"].shape == (3, SIZE, SIZE) and item["inputs"].dtype == torch.float32
    assert 0 <= item["inputs"].min() and item["inputs"].max() <= 1
    assert sample["boxes"].dtype == torch.float32 and sample["boxes"].shape == (len(sample["labels"]), 4)
    assert sample["labels"].dtype == torch.int64 and ((sample["labels"] >= 1) & (sample["labels"] <= 10)).all()
    assert sample["image_id"] == 1 and sample["orig_size"] == (SIZE, SIZE)
    assert sample["scale_factor"] == 1.0 and sample["flipped"] is False
    assert (sample["boxes"][:, 2:] > sample["boxes"][:, :2]).all()


def test_flip_mirrors_image_and_boxes(scenes):
    plain = _dataset(scenes, train=True, flip_prob=0.0)[3]
    flipped = _dataset(scenes, train=True, flip_prob=1.0)[3]
    assert flipped["data_samples"]["flipped"] is True
    assert torch.equal(flipped["inputs"], plain["inputs"].flip(-1))
    boxes = plain["data_samples"]["boxes"]
    expected = torch.stack([SIZE - boxes[:, 2], boxes[:, 1], SIZE - boxes[:, 0], boxes[:, 3]], dim=1)
    assert torch.allclose(flipped["data_samples"]["boxes"], expected)


def test_resize_scales_boxes_with_the_image(scenes):
    plain = _dataset(scenes, train=False)[2]["data_samples"]["boxes"]
    short = _dataset(scenes, train=False, resize=48)[2]
    assert short["inputs"].shape == (3, 48, 48) and short["data_samples"]["scale_factor"] == 0.5
    assert torch.allclose(short["data_samples"]["boxes"], plain * 0.5)
    ranged = _dataset(scenes, train=False, resize=(1.0, 2.0))[2]
    assert ranged["inputs"].shape == (3, 144, 144)
    assert torch.allclose(ranged["data_samples"]["boxes"], plain * 1.5)
    for _ in range(3):
        side = _dataset(scenes, train=True, flip_prob=0.0, resize=(0.5, 1.0))[2]["inputs"].shape[-1]
        assert 48 <= side <= SIZE


def test_empty_images_crowd_boxes_and_filtering(tmp_path):
    crowd = dict(GOOD, id=6, iscrowd=1, bbox=[0, 0, 40, 30])
    ann_file = _tiny_coco(tmp_path, [GOOD, crowd])
    dataset = CocoDetection(str(tmp_path), "ann.json", train=False)
    first, second = dataset[0]["data_samples"], dataset[1]["data_samples"]
    assert first["labels"].tolist() == [2] and first["boxes"].tolist() == [[2, 3, 12, 15]]
    assert second["boxes"].shape == (0, 4) and second["labels"].shape == (0,)
    assert dataset.metainfo["cat_ids"] == [3, 7] and dataset.metainfo["ann_file"] == ann_file
    assert len(CocoDetection(str(tmp_path), "ann.json", filter_empty=True)) == 1


@pytest.mark.parametrize("broken, message", [
    ({k: v for k, v in GOOD.items() if k != "bbox"}, "lacks key"),
    (dict(GOOD, category_id=4), "category_id 4"),
    (dict(GOOD, image_id=9), "image_id 9"),
])
def test_malformed_annotations_fail_at_construction_naming_file_and_id(tmp_path, broken, message):
    ann_file = _tiny_coco(tmp_path, [dict(GOOD, id=4), dict(broken, id=7)])
    with pytest.raises(ValueError, match=message) as error:
        CocoDetection(str(tmp_path), "ann.json")
    assert ann_file in str(error.value) and "id 7" in str(error.value)


def test_boxes_of_zero_area_or_outside_their_image_are_skipped_in_one_warning(tmp_path, caplog):
    boxes = [dict(GOOD, id=4), dict(GOOD, id=7, bbox=[30, 3, 12, 12]), dict(GOOD, id=8, bbox=[2, 3, 0, 12]),
             dict(GOOD, id=9, image_id=2, bbox=[50, 40, 5, 5])]
    ann_file = _tiny_coco(tmp_path, boxes)
    with caplog.at_level("WARNING", logger="overhaul_det.datasets.coco"):
        dataset = CocoDetection(str(tmp_path), "ann.json", train=False)
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"COCO {ann_file}: skipped 3 box(es) (1 of zero area, 2 outside their image), e.g. annotation id(s) [7, 8, 9]"]
    assert dataset[0]["data_samples"]["boxes"].tolist() == [[2, 3, 12, 15]]
    assert dataset[1]["data_samples"]["boxes"].shape == (0, 4)


def test_images_missing_on_disk_are_listed_before_training(tmp_path):
    ann_file = _tiny_coco(tmp_path, [GOOD], images=[dict(id=1, file_name="a.png", width=40, height=30),
                                                    dict(id=2, file_name="gone.png", width=40, height=30)])
    with pytest.raises(ValueError, match=rf"^{ann_file}: 1 of 2 images are not on disk:\n  {tmp_path}/gone\.png\n"
                                         rf"put them under {tmp_path}"):
        CocoDetection(str(tmp_path), "ann.json")


def test_missing_section_and_class_count_are_named(tmp_path):
    ann_file = _tiny_coco(tmp_path, [GOOD])
    dataset = json.loads(open(ann_file).read())
    broken = copy.deepcopy(dataset)
    del broken["categories"]
    (tmp_path / "ann.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="missing key 'categories'"):
        CocoDetection(str(tmp_path), "ann.json")
    (tmp_path / "ann.json").write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match="num_classes=3"):
        CocoDetection(str(tmp_path), "ann.json", num_classes=5)


def test_unreadable_or_mis_sized_image_names_the_file(tmp_path):
    _tiny_coco(tmp_path, [GOOD])
    dataset = CocoDetection(str(tmp_path), "ann.json", train=False)
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match="a.png"):
        dataset[0]
    Image.new("RGB", (20, 30)).save(tmp_path / "b.png")
    with pytest.raises(ValueError, match="b.png.*20x30"):
        dataset[1]


def test_registry_build_and_pseudo_collate_batches(scenes):
    """pseudo_collate keeps tensors unstacked; it turns the sample dicts into one dict of per-key lists."""
    dataset = DATASETS.build(dict(type="CocoDetection", data_root=str(scenes),
                                  ann_file="annotations/instances_train.json", img_prefix="images/train"))
    batch = next(iter(DataLoader(dataset, batch_size=3, collate_fn=pseudo_collate)))
    assert len(batch["inputs"]) == 3 and batch["inputs"][0].shape == (3, SIZE, SIZE)
    samples = batch["data_samples"]
    assert samples["image_id"] == [1, 2, 3] and len(samples["boxes"]) == len(samples["labels"]) == 3
