"""Config keys of ``model`` and of every dataset are checked against the classes they build."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import Registry

from overhaul_det.cli import main as cli_main
from overhaul_det.engine import keys
from overhaul_det.engine.keys import check_config_keys
from overhaul_det.engine.runner import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(path for path in (REPO / "configs").glob("*/*.py") if path.parent.name != "_base_")
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"


@pytest.mark.parametrize("config", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_every_shipped_config_passes(config):
    load_config(str(config))


@pytest.mark.parametrize("option, message", [
    ("model.studnet.name=resnet18", "model.studnet: unknown key; did you mean model.student? ClassificationDistiller "
                                    "takes teacher, student, num_classes, ofd, kd_weight"),
    ("train_dataloader.dataset.num_sample=10", "train_dataloader.dataset.num_sample: unknown key; did you mean "
                                               "train_dataloader.dataset.num_samples? FashionMNISTDataset takes"),
])
def test_a_misspelt_key_stops_the_cli_before_anything_is_built(option, message, tmp_path, capsys):
    assert cli_main(["train", str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", option]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"overhaul-det train: error: {message}")
    assert not list(tmp_path.iterdir())


def test_datasets_inside_wrappers_are_checked_with_their_place():
    dataset = dict(type="FashionMNISTDataset", train=True)
    cfg = Config(dict(model=dict(type="ClassificationDistiller"), val_dataloader=dict(dataset=dict(
        type="ConcatDataset", datasets=[dataset, dict(dataset, resise=32)]))))
    with pytest.raises(TypeError, match=r"^val_dataloader\.dataset\.datasets\[1\]\.resise: unknown key; did you mean "
                                        r"val_dataloader\.dataset\.datasets\[1\]\.resize\?"):
        check_config_keys(cfg)
    cfg.val_dataloader.dataset.datasets[1].pop("resise")
    cfg.val_dataloader.dataset.lazy_inti = True
    with pytest.raises(TypeError, match=r"^val_dataloader\.dataset\.lazy_inti: .*did you mean .*\.lazy_init\? "
                                        r"ConcatDataset takes"):
        check_config_keys(cfg)


def test_a_class_taking_any_keyword_and_an_unregistered_type_pass():
    registry = Registry("test")

    @registry.register_module()
    class Open:
        def __init__(self, size=1, **kwargs):
            pass

    keys._check_spec(dict(type="Open", anything=1), registry, "model")
    keys._check_spec(dict(type="NoSuchThing", anything=1), registry, "model")
    check_config_keys(Config(dict(train_dataloader=dict(dataset=dict(type="NoSuchDataset", anything=1)))))
    with pytest.raises(TypeError, match=r"^model\.anything: unknown key; BaseDataPreprocessor takes non_blocking$"):
        check_config_keys(Config(dict(model=dict(type="BaseDataPreprocessor", anything=1))))
