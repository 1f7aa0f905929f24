"""Config keys of ``model``, of every dataset and of the loops are checked against the classes they build."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import Registry

from overhaul_det.cli import main as cli_main
from overhaul_det.engine import keys
from overhaul_det.engine.keys import check_config_keys
from overhaul_det.training import load_config

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
    ("train_cfg.max_epoch=3", "train_cfg.max_epoch: unknown key; did you mean train_cfg.max_epochs? "
                              "EpochBasedTrainLoop takes max_epochs, val_begin, val_interval, dynamic_intervals"),
    ("val_cfg.fp61=True", "val_cfg.fp61: unknown key; did you mean val_cfg.fp16? ValLoop takes fp16"),
    ("default_hooks.checkpoint.intervall=5", "default_hooks.checkpoint.intervall: unknown key; did you mean "
                                             "default_hooks.checkpoint.interval? CheckpointHook takes interval, "),
    ("train_dataloader.batch_szie=2", "train_dataloader.batch_szie: unknown key; did you mean "
                                      "train_dataloader.batch_size? DataLoader takes dataset, batch_size"),
    ("optim_wrapper.optimizer.momentun=0.9", "optim_wrapper.optimizer.momentun: unknown key; did you mean "
                                             "optim_wrapper.optimizer.momentum? SGD takes params, lr, momentum"),
    ("optim_wrapper.clip_gard=1", "optim_wrapper.clip_gard: unknown key; did you mean optim_wrapper.clip_grad? "
                                  "OptimWrapper takes optimizer, accumulative_counts, clip_grad"),
    ("custom_hooks.0.num_batchs=2", "custom_hooks[0].num_batchs: unknown key; did you mean "
                                    "custom_hooks[0].num_batches? DataMarginHook takes num_batches"),
    ("data_rot=/x", "--cfg-options data_rot: "),
])
def test_a_misspelt_key_stops_the_cli_before_anything_is_built(option, message, tmp_path, capsys):
    assert cli_main(["train", str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", option]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"overhaul-det train: error: {message}")
    assert not list(tmp_path.iterdir())


def test_a_new_top_level_option_is_named_with_the_nearest_key(tmp_path, capsys):
    assert cli_main(["train", str(DEMO_CONFIG), "--work-dir", str(tmp_path), "--cfg-options", "data_rot=/x"]) == 2
    assert "has no key 'data_rot' and nothing reads it; did you mean data_root?" in capsys.readouterr().err


def test_a_misspelt_inherited_key_in_a_file_is_named(tmp_path):
    config = tmp_path / "typo.py"
    config.write_text(f"_base_ = [{str(DEMO_CONFIG)!r}]\ndata_rot = '/x'\nmy_helper = 3\n")
    with pytest.raises(ValueError, match=r"typo\.py: unknown key 'data_rot'; did you mean 'data_root'\?"):
        load_config(str(config))
    config.write_text(f"_base_ = [{str(DEMO_CONFIG)!r}]\nmy_helper = 3\nmax_epoch = 2\n")
    with pytest.raises(ValueError, match=r"unknown key 'max_epoch'; did you mean 'max_epochs'\?"):
        load_config(str(config))


def test_options_on_known_or_existing_keys_pass():
    cfg = load_config(str(DEMO_CONFIG), {"auto_scale_lr.base_batch_size": 64,
                                         "default_hooks.checkpoint.interval": 5, "optim_wrapper.optimizer.lr": 0.1})
    assert cfg.default_hooks.checkpoint.interval == 5 and cfg.optim_wrapper.optimizer.lr == 0.1


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


def test_a_loop_is_checked_as_the_runner_builds_it():
    iterations = Config(dict(train_cfg=dict(type="IterBasedTrainLoop", max_iter=10)))
    with pytest.raises(TypeError, match=r"^train_cfg\.max_iter: unknown key; did you mean train_cfg\.max_iters\? "
                                        r"IterBasedTrainLoop takes max_iters, val_begin"):
        check_config_keys(iterations)
    by_iteration = Config(dict(train_cfg=dict(by_epoch=False, max_epochs=10)))
    with pytest.raises(TypeError, match=r"^train_cfg\.max_epochs: unknown key; did you mean train_cfg\.max_iters\?"):
        check_config_keys(by_iteration)
    check_config_keys(Config(dict(train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1))))
    check_config_keys(Config(dict(train_cfg=dict(max_epochs=2), val_cfg=None)))  # no loop chosen: the Runner says
    with pytest.raises(TypeError, match=r"^test_cfg\.evaluator: unknown key; TestLoop takes fp16$"):
        check_config_keys(Config(dict(test_cfg=dict(evaluator=dict()))))  # the Runner gives the evaluator


def test_an_option_on_a_helper_variable_is_refused_with_the_keys_that_took_its_value(tmp_path):
    config = tmp_path / "helpers.py"
    config.write_text("max_epochs = 16\ntrain_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)\n"
                      "param_scheduler = [dict(type='PolyLR', end=max_epochs)]\n"
                      "norm = dict(mean=[0.5])\nval_dataloader = dict(dataset=norm)\n")
    with pytest.raises(ValueError, match=r"--cfg-options max_epochs: 'max_epochs' is a variable of .*helpers\.py "
                                         r".*changes nothing; set the keys that took its value instead: "
                                         r"train_cfg\.max_epochs, param_scheduler\.0\.end$"):
        keys.check_option_keys(Config.fromfile(str(config)), str(config), {"max_epochs": 3})
    with pytest.raises(ValueError, match=r"--cfg-options norm\.mean: .* val_dataloader\.dataset$"):
        keys.check_option_keys(Config.fromfile(str(config)), str(config), {"norm.mean": [0.1]})
    keys.check_option_keys(Config.fromfile(str(config)), str(config), {"train_cfg.max_epochs": 3})
