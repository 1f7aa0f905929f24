"""VOCSegmentation: normalised images with class-index labels; bad labels are named, by file."""
import numpy as np
import pytest
import torch
from PIL import Image

from overhaul_det.datasets.scenes import SCENE_CLASSES, make_scenes
from overhaul_det.datasets.voc import IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, VOCSegmentation, voc_palette
from overhaul_det.registry import DATASETS

SIZE = 96


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fashion_files):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, "train", 8, SIZE, seed=0, fmt=("voc",), fashion_root=fashion_files)
    return out


def _dataset(root, **kwargs):
    return VOCSegmentation(str(root), "train", classes=SCENE_CLASSES, **kwargs)


def _tiny_voc(root, label: np.ndarray, image_size=(40, 30)):
    """One image (W, H) = image_size and its label, listed in ImageSets/Segmentation/train.txt."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", image_size, (90, 120, 200)).save(root / "JPEGImages" / "x.jpg")
    mask = Image.frombytes("P", label.shape[::-1], label.astype(np.uint8).tobytes())
    mask.putpalette(voc_palette())
    mask.save(root / "SegmentationClass" / "x.png")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    return str(root / "SegmentationClass" / "x.png")


def test_eval_items_are_normalised_images_with_index_labels(scenes):
    dataset = _dataset(scenes, train=False, validate=True)
    assert len(dataset) == 8 and dataset.metainfo["classes"] == SCENE_CLASSES
    item = dataset[0]
    inputs, gt_seg = item["inputs"], item["data_samples"]["gt_seg"]
    assert inputs.shape == (3, SIZE, SIZE) and inputs.dtype == torch.float32
    assert gt_seg.shape == (SIZE, SIZE) and gt_seg.dtype == torch.int64
    assert set(gt_seg.unique().tolist()) <= set(range(11)) and gt_seg.max() > 0
    with Image.open(item["data_samples"]["img_path"]) as image:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(inputs * std + mean, pixels, atol=1e-5)


def test_train_crops_have_one_size_and_pad_labels_with_ignore(scenes):
    dataset = _dataset(scenes, crop_size=(64, 80))
    for index in range(4):
        item = dataset[index]
        assert item["inputs"].shape == (3, 64, 80) and item["data_samples"]["gt_seg"].shape == (64, 80)
    padded = _dataset(scenes, crop_size=(200, 200), scale_range=(1.0, 1.0))[0]
    assert padded["inputs"].shape == (3, 200, 200)
    gt_seg = padded["data_samples"]["gt_seg"]
    assert (gt_seg == 255).sum() == 200 * 200 - SIZE * SIZE
    evaluated = _dataset(scenes, train=False, crop_size=(128, 128))[0]
    assert evaluated["inputs"].shape == (3, 128, 128) and (evaluated["inputs"][:, SIZE:, :] == 0).all()


def test_flip_mirrors_image_and_label(scenes):
    plain = _dataset(scenes, flip_prob=0.0, scale_range=(1.0, 1.0))[1]
    flipped = _dataset(scenes, flip_prob=1.0, scale_range=(1.0, 1.0))[1]
    assert torch.equal(flipped["inputs"], plain["inputs"].flip(-1))
    assert torch.equal(flipped["data_samples"]["gt_seg"], plain["data_samples"]["gt_seg"].flip(-1))


def test_label_size_mismatch_names_the_file(tmp_path):
    seg_path = _tiny_voc(tmp_path, np.zeros((20, 40)))
    with pytest.raises(ValueError, match=f"{seg_path}.*40x20.*40x30"):
        VOCSegmentation(str(tmp_path), validate=True)
    with pytest.raises(ValueError, match=seg_path):
        VOCSegmentation(str(tmp_path))[0]


def test_out_of_range_class_names_the_file_but_ignore_is_allowed(tmp_path):
    label = np.zeros((30, 40))
    label[:5] = 255
    _tiny_voc(tmp_path, label)
    assert VOCSegmentation(str(tmp_path), num_classes=3, validate=True)[0]["data_samples"]["gt_seg"].max() == 255
    label[10:12] = 7
    seg_path = _tiny_voc(tmp_path, label)
    with pytest.raises(ValueError, match=rf"{seg_path} holds class ids \[7\]"):
        VOCSegmentation(str(tmp_path), num_classes=3, validate=True)
    with pytest.raises(ValueError, match=seg_path):
        VOCSegmentation(str(tmp_path), num_classes=3)[0]


def test_colour_labels_and_missing_files_are_refused(tmp_path):
    seg_path = _tiny_voc(tmp_path, np.zeros((30, 40)))
    Image.new("RGB", (40, 30)).save(seg_path)
    with pytest.raises(ValueError, match="'RGB'"):
        VOCSegmentation(str(tmp_path), validate=True)
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCSegmentation(str(tmp_path), split="val")


def test_registry_build_and_class_defaults(scenes):
    dataset = DATASETS.build(dict(type="VOCSegmentation", data_root=str(scenes), num_classes=11))
    assert dataset.num_classes == 11 and len(dataset.metainfo["classes"]) == 11
    assert VOCSegmentation(str(scenes)).metainfo["classes"] == VOC_CLASSES
    assert voc_palette()[255 * 3:] == [224, 224, 192]
    with pytest.raises(ValueError, match="num_classes=5"):
        VOCSegmentation(str(scenes), classes=SCENE_CLASSES, num_classes=5)


def _config(preprocessor, dataset_type="VOCSegmentation"):
    from mmengine.config import Config

    return Config(dict(model=dict(type="SegmentationDistiller", data_preprocessor=preprocessor),
                       train_dataloader=dict(dataset=dict(type=dataset_type, mean=[0.286] * 3, std=[0.353] * 3))))


def test_a_second_normalisation_of_voc_images_is_refused_by_name():
    from overhaul_det.datasets.voc import check_normalised_once

    with pytest.raises(ValueError, match=r"cfg\.py: model\.data_preprocessor normalises .*train_dataloader"):
        check_normalised_once(_config(dict(type="ImgDataPreprocessor", mean=[72.93] * 3, std=[90.02] * 3)), "cfg.py")
    check_normalised_once(_config(dict(type="ImgDataPreprocessor")), "cfg.py")
    check_normalised_once(_config(dict(type="ImgDataPreprocessor", mean=[0.0] * 3, std=[1.0] * 3)), "cfg.py")
    check_normalised_once(_config(dict(type="ImgDataPreprocessor", mean=[72.93] * 3), "FashionMNISTDataset"), "cfg.py")


def _image_and_label(image_dir, label_dir, stem, value):
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), (value, 0, 0)).save(image_dir / f"{stem}.jpg")
    Image.fromarray(np.full((16, 20), value, np.uint8), mode="L").save(label_dir / f"{stem}.png")


def test_sbd_trainaug_combines_as_the_official_code(tmp_path):
    """VOC train first, then SBD train and val ids not yet listed, minus VOC val; SBD files for SBD-only ids."""
    voc, sbd = tmp_path / "VOC2012", tmp_path / "benchmark_RELEASE" / "dataset"
    for stem, value in (("a", 1), ("b", 2), ("c", 3)):
        _image_and_label(voc / "JPEGImages", voc / "SegmentationClass", stem, value)
    for stem, value in (("b", 12), ("c", 13), ("d", 14), ("e", 15)):
        _image_and_label(sbd / "img", sbd / "cls", stem, value)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\nb\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("c\n")
    (sbd / "train.txt").write_text("b\nc\nd\n")
    (sbd / "val.txt").write_text("e\nd\n")
    dataset = VOCSegmentation(str(voc), "trainaug", train=False, sbd_root=str(sbd.parent), sbd_label_suffix=".png")
    labels = [int(dataset[i]["data_samples"]["gt_seg"][0, 0]) for i in range(len(dataset))]
    assert labels == [1, 2, 14, 15]
    assert dataset[2]["data_samples"]["img_path"] == str(sbd / "img" / "d.jpg")
    with pytest.raises(ValueError, match="split='trainaug'"):
        VOCSegmentation(str(voc), "train", sbd_root=str(sbd.parent))


def test_an_sbd_matlab_label_names_the_converter():
    from overhaul_det.datasets.voc import _read_label

    with pytest.raises(ValueError, match=r"a\.mat is one of SBD's MATLAB labels.*tools/sbd_to_png\.py"):
        _read_label("cls/a.mat")
