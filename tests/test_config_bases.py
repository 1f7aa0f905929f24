"""A user's config outside the clone inherits shipped configs with ``overhaul_det::``; a missing base is named."""
import pytest

from overhaul_det.config_bases import resolve_bases, shipped_configs_dir
from overhaul_det.training import load_config

SHIPPED_DATASET = "_base_/datasets/fashion_mnist.py"
SHIPPED_RUN = "classification/teacher_resnet18_fashionmnist.py"


def test_shipped_configs_are_found_from_the_package():
    assert (shipped_configs_dir() / SHIPPED_DATASET).is_file()
    assert (shipped_configs_dir() / SHIPPED_RUN).is_file()


def test_config_outside_the_clone_inherits_a_shipped_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(f"_base_ = ['overhaul_det::{SHIPPED_RUN}']\n"
                                      "train_cfg = dict(max_epochs=3)\n"
                                      "work_dir = '{{ fileDirname }}/runs'\n")
    cfg = load_config("mine.py")
    assert cfg.model.type == "ClassificationDistiller"
    assert cfg.train_cfg.max_epochs == 3
    assert cfg.work_dir == f"{tmp_path.resolve()}/runs"
    assert cfg.filename.endswith("mine.py")


def test_user_base_chain_mixing_relative_and_shipped_bases(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "data.py").write_text(f"_base_ = ['overhaul_det::{SHIPPED_DATASET}']\nbatch = 7\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mine.py").write_text(
        "_base_ = ['../bases/data.py', 'overhaul_det::_base_/schedules/fashion_mnist_short.py',\n"
        "          'overhaul_det::_base_/default_runtime.py']\n"
        "model = dict(type='ClassificationDistiller')\n")
    cfg = load_config(str(tmp_path / "runs" / "mine.py"))
    assert cfg.batch == 7
    assert cfg.train_dataloader.dataset.type == "FashionMNISTDataset"
    assert cfg.param_scheduler[0].type == "LinearLR"


def test_config_without_shipped_bases_is_read_as_it_is(tmp_path):
    config = tmp_path / "plain.py"
    config.write_text("model = dict(type='ClassificationModel')\n")
    assert resolve_bases(str(config), str(tmp_path / "copies")) == str(config.resolve())
    assert not (tmp_path / "copies").exists()


def test_missing_relative_base_names_the_file_and_the_spelling_that_works(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text(f"_base_ = ['../{SHIPPED_DATASET}']\nmodel = dict(type='ClassificationModel')\n")
    with pytest.raises(FileNotFoundError) as error:
        load_config(str(config))
    message = str(error.value)
    assert str(config) in message
    assert f"'../{SHIPPED_DATASET}'" in message
    assert f"'overhaul_det::{SHIPPED_DATASET}'" in message


def test_unknown_shipped_base_is_named(tmp_path):
    config = tmp_path / "mine.py"
    config.write_text("_base_ = ['overhaul_det::_base_/datasets/no_such.py']\n")
    with pytest.raises(FileNotFoundError, match="no_such.py' is not a shipped config"):
        resolve_bases(str(config), str(tmp_path / "copies"))
