"""Config paths: shipped configs find the clone's checkpoints from any folder; one data_root reaches every split."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from mmengine.config import Config

from overhaul_det.cli import main as cli_main
from overhaul_det.engine import paths
from overhaul_det import training
from overhaul_det.engine.paths import fill_data_root
from overhaul_det.training import load_config
from overhaul_det.evaluation.coco_metric import CocoDetectionMetric
from overhaul_det.models.classifiers import build_classifier
from overhaul_det.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"
TEACHER = "checkpoints/fashionmnist_resnet18_teacher.safetensors"
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def test_config_loaded_from_another_folder_finds_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher = load_config(str(DEMO_CONFIG)).model.teacher
    assert teacher.checkpoint == str(REPO / TEACHER)
    build_classifier(**teacher, num_classes=10)


def test_a_relative_config_path_not_found_here_is_the_clones(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    relative = str(DEMO_CONFIG.relative_to(REPO))
    with caplog.at_level("INFO"):
        cfg = load_config(relative)
    assert Path(cfg.filename) == DEMO_CONFIG
    assert f"config {relative} is not in {tmp_path}; using the clone's {DEMO_CONFIG}" in caplog.text


@pytest.mark.parametrize("where", ["here", "the clone"])
def test_a_misspelt_config_name_gets_the_nearest_names(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(REPO if where == "here" else tmp_path)
    typo = "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnet.py"
    assert cli_main(["train", typo]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"overhaul-det train: error: config {typo} does not exist; did you mean "
        "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py?")


def test_a_config_path_unlike_any_names_the_shipped_configs(tmp_path, capsys):
    assert cli_main(["test", str(tmp_path / "zzz.py"), "student.pth"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"overhaul-det test: error: config {tmp_path / 'zzz.py'} does not exist; "
        f"the shipped configs are under {REPO / 'overhaul_det' / 'configs'}")


def test_an_installed_package_without_its_clone_finds_configs_among_those_it_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_package_clone", lambda: None)
    found = paths.find_config("configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py")
    assert Path(found) == REPO / "overhaul_det" / "configs" / "classification" / "ofd_resnet18-to-mobilenetv3_fashionmnist.py"
    with pytest.raises(FileNotFoundError, match="did you mean configs/classification/ofd_resnet18-to-mobilenetv3_"):
        paths.find_config("configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnet.py")


def test_path_that_exists_here_is_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / TEACHER).write_bytes((REPO / TEACHER).read_bytes())
    assert load_config(str(DEMO_CONFIG)).model.teacher.checkpoint == TEACHER


def _cli_config(monkeypatch, argv) -> dict:
    """The config `overhaul-det ARGV` would run, caught before a Runner is built."""
    seen = {}

    class Stub:
        def train(self):
            return None

        def test(self):
            return {}

    def capture(cfg, *args, **kwargs):
        seen["cfg"] = cfg
        return Stub()

    monkeypatch.setattr(training, "build_runner", capture)
    monkeypatch.setattr(training, "build_test_runner", capture)
    assert cli_main(argv) == 0
    return seen["cfg"]


@pytest.mark.parametrize("command", [["train"], ["test", "checkpoint.pth"]])
@pytest.mark.parametrize("config", ["classification/ofd_resnet50-to-mobilenetv3_imagenet.py",
                                    "detection/ofd_frcnn_r50-to-mbv3_coco.py",
                                    "segmentation/ofd_deeplabv3plus_r101-to-mbv2_voc.py"])
def test_data_root_flag_reaches_every_split(tmp_path, monkeypatch, command, config):
    root = str(tmp_path / "elsewhere")
    argv = [command[0], str(REPO / "configs" / config), *command[1:], "--data-root", root]
    cfg = _cli_config(monkeypatch, argv)
    assert cfg.data_root == root
    for key in LOADERS:
        assert cfg[key].dataset.data_root == root, key
    for key in ("val_evaluator", "test_evaluator"):
        assert "ann_file" not in cfg[key], "evaluators read the ground truth of their dataset"


@pytest.mark.usefixtures("fashion_data")
def test_data_root_reaches_the_coco_evaluator(tmp_path, monkeypatch):
    from overhaul_det.datasets.scenes import make_scenes

    root = tmp_path / "scenes"
    make_scenes(root, "val", 3, 64, seed=0, fmt=("coco",))
    config = REPO / "configs/detection/ofd_frcnn_fashion_scenes.py"
    cfg = _cli_config(monkeypatch, ["test", str(config), "checkpoint.pth", "--data-root", str(root)])
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    metric = CocoDetectionMetric(**{k: v for k, v in cfg.test_evaluator.items() if k != "type"})
    metric.dataset_meta = dataset.metainfo  # as mmengine's TestLoop does
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    metric.process(None, [dict(image_id=info["image_id"], boxes=info["boxes"], labels=info["labels"],
                               scores=np.ones(len(info["labels"]))) for info in infos])
    assert metric.evaluate(len(infos))["coco/bbox_mAP"] == pytest.approx(1.0)
    assert Path(metric._coco_file) == root / "annotations/instances_val.json"


def test_data_root_option_reaches_every_split(tmp_path):
    root = str(tmp_path / "imagenet")
    cfg = load_config(str(REPO / "configs/classification/ofd_resnet50-to-mobilenetv3_imagenet.py"),
                      {"data_root": root})
    assert [cfg[key].dataset.data_root for key in LOADERS] == [root] * 3
    assert cfg.val_dataloader.dataset.classes == str(Path(root) / "train")


def test_data_root_flag_refuses_a_dataset_with_its_own_root(tmp_path, capsys):
    config = tmp_path / "own_root.py"
    config.write_text(f"_base_ = [{str(REPO / 'configs/classification/ofd_resnet50-to-mobilenetv3_imagenet.py')!r}]\n"
                      "val_dataloader = dict(dataset=dict(data_root='/old/imagenet'))\n")
    assert cli_main(["train", str(config), "--data-root", str(tmp_path)]) == 2
    assert "a dataset of val_dataloader sets its own data_root '/old/imagenet'; remove it" in capsys.readouterr().err


def test_data_root_reaches_datasets_inside_wrappers():
    inner = dict(type="CocoDetection", ann_file="a.json")
    cfg = Config(dict(data_root="/coco", train_dataloader=dict(dataset=dict(type="RepeatDataset", times=2,
                                                                            dataset=inner))))
    fill_data_root(cfg)
    assert cfg.train_dataloader.dataset.dataset.data_root == "/coco"
    assert "data_root" not in cfg.train_dataloader.dataset


def test_test_finds_a_checkpoint_under_the_clones_checkpoints_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = []
    monkeypatch.setattr(training, "build_runner", lambda *args, **kwargs: SimpleNamespace(model=None))
    monkeypatch.setattr(training, "_load_student", lambda model, checkpoint: loaded.append(checkpoint))
    training.build_test_runner(load_config(str(DEMO_CONFIG)), str(DEMO_CONFIG), TEACHER)
    assert loaded == [str(REPO / TEACHER)]
    assert paths.resolve_repo_path("checkpoints/none_such.pth", str(DEMO_CONFIG)) == "checkpoints/none_such.pth"
