"""Classification through mmengine's Runner: the four methods, resume, export, CLI errors."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config

from overhaul_det.cli import main as cli_main
from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.training import build_runner, load_config, validate_config
from overhaul_det.export import export_student, student_state_dict
from overhaul_det.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"


def tiny_config(work_dir: Path, alpha: float = 1e-2, kd_weight: float = 0.0, max_iters: int = 2) -> Config:
    """The demo config shrunk to a few 32 px images, iteration-based, random-init teacher."""
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = work_dir.name  # mmengine keys its MessageHub by this; the default repeats within a second
    cfg.model.teacher = dict(name="resnet18")
    cfg.model.ofd.alpha = alpha
    cfg.model.kd_weight = kd_weight
    cfg.train_dataloader.batch_size = 4
    cfg.train_dataloader.dataset.num_samples = 16
    cfg.val_dataloader.batch_size = 8
    cfg.val_dataloader.dataset.num_samples = 16
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False, save_last=True)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=0)
    return cfg


@torch.no_grad()
def _student_top1(runner) -> float:
    """Top-1 (%) of the student on the runner's val set, counted here, not by the Accuracy metric."""
    model = runner.model.eval()
    correct = total = 0
    for batch in runner.val_dataloader:
        data = model.data_preprocessor(batch, False)
        predicted = model.student(data["inputs"]).argmax(1)
        samples = data["data_samples"]  # pseudo_collate gives dict(gt_label=[...])
        labels = torch.as_tensor([int(v) for v in samples["gt_label"]])
        correct += int((predicted == labels).sum())
        total += len(labels)
    return 100.0 * correct / total


@pytest.mark.parametrize(
    "alpha,kd_weight,expected",
    [(0.0, 0.0, {"loss_cls"}), (0.0, 1.0, {"loss_cls", "loss_kd"}), (1e-2, 0.0, {"loss_cls", "loss_ofd"}),
     (1e-2, 1.0, {"loss_cls", "loss_ofd", "loss_kd"})],
    ids=["baseline", "kd", "ofd", "ofd+kd"],
)
@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_runner_two_iterations(tmp_path, alpha, kd_weight, expected):
    runner = build_runner(tiny_config(tmp_path, alpha, kd_weight), str(DEMO_CONFIG))
    teacher = runner.model.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()} if teacher is not None else {}
    runner.train()
    losses = runner.message_hub.log_scalars
    logged = {k.split("/")[-1] for k in losses if k.startswith("train/loss_")}
    assert logged == expected
    for name in expected:
        assert torch.isfinite(torch.tensor(losses[f"train/{name}"].current()))
    metrics = runner.val_loop.run()
    assert metrics["accuracy/top1"] == pytest.approx(_student_top1(runner), abs=1e-4)
    if teacher is not None:
        assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_resume_continues_at_saved_iteration(tmp_path):
    first = build_runner(tiny_config(tmp_path, max_iters=2), str(DEMO_CONFIG))
    first.train()
    saved = load_checkpoint_file(tmp_path / "iter_2.pth")
    assert saved["meta"]["iter"] == 2

    check = build_runner(tiny_config(tmp_path / "check", max_iters=3), str(DEMO_CONFIG))
    check._train_loop = check.build_train_loop(check._train_loop)
    check.optim_wrapper = check.build_optim_wrapper(check.optim_wrapper)
    check.resume(str(tmp_path / "iter_2.pth"))
    assert check.iter == 2
    restored = check.optim_wrapper.optimizer.state_dict()["state"]
    original = saved["optimizer"]["state"]
    assert restored and restored.keys() == original.keys()
    for key in original:
        assert torch.equal(restored[key]["momentum_buffer"], original[key]["momentum_buffer"])
    for key, value in check.model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key

    resumed = build_runner(tiny_config(tmp_path, max_iters=3), str(DEMO_CONFIG), resume=True)
    resumed.train()
    assert resumed.iter == 3
    assert load_checkpoint_file(tmp_path / "iter_3.pth")["meta"]["iter"] == 3


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_export_loads_strict_into_plain_timm_model(tmp_path):
    runner = build_runner(tiny_config(tmp_path), str(DEMO_CONFIG))
    runner.train()
    checkpoint = tmp_path / "iter_2.pth"
    out = export_student(checkpoint, tmp_path / "student.safetensors")
    from safetensors.torch import load_file

    plain = timm.create_model("mobilenetv3_small_050", num_classes=10)
    plain.load_state_dict(load_file(str(out)), strict=True)
    plain.eval()
    inside = runner.model.student.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), inside(x), atol=1e-6)
    assert student_state_dict(load_checkpoint_file(checkpoint)).keys() == plain.state_dict().keys()


def test_taps_cli_prints_four_stage_ends(capsys):
    assert cli_main(["taps", "resnet50", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    for block in ("layer1.2", "layer2.3", "layer3.5", "layer4.2"):
        assert f"{block}.add " in out and f"{block}.bn3" in out


def test_misspelled_config_key_is_named(tmp_path):
    config = tmp_path / "bad.py"
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\ntrain_dataloder = dict(batch_size=2)\n")
    with pytest.raises(ValueError, match="train_dataloder.*train_dataloader"):
        load_config(str(config))


def test_unknown_model_name_is_named(tmp_path, capsys):
    config = tmp_path / "bad_model.py"
    config.write_text(f"_base_ = ['{DEMO_CONFIG}']\nmodel = dict(student=dict(name='mobilenetv3_smal_050'))\n")
    code = cli_main(["train", str(config), "--work-dir", str(tmp_path / "w")])
    assert code == 2
    assert "mobilenetv3_smal_050" in capsys.readouterr().err


def test_validate_config_accepts_helper_variables():
    """Config-level helper variables (image_size, max_epochs) are not taken for misspelled keys,
    while a misspelled key beside them is."""
    helpers = dict(model=dict(type="ClassificationDistiller"), image_size=32, max_epochs=3)
    assert validate_config(Config(helpers)) is None
    with pytest.raises(ValueError, match="'val_evalutor'; did you mean 'val_evaluator'"):
        validate_config(Config(dict(helpers, val_evalutor=dict(type="Accuracy"))))


IMAGENET_CONFIG = REPO / "configs/classification/ofd_resnet50-to-mobilenetv3_imagenet.py"


def _splits(root: Path, train: list, val: list) -> Path:
    """``root/{train,val}/<class>/x.jpg`` (never decoded: building a dataset only lists files)."""
    for split, classes in (("train", train), ("val", val)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            (root / split / name / "x.jpg").write_bytes(b"")
    return root


@pytest.mark.parametrize("val, problem", [(["cat", "eel"], r"\(missing \['dog'\]\); .*add the missing folders to "),
                                          (["cat", "dog", "eel", "fox"], r"\(extra \['fox'\]\); .*rename the extra "
                                                                         r"folders in ")],
                         ids=["missing", "extra"])
def test_val_split_with_other_class_folders_is_refused(tmp_path, val, problem):
    """A val split sorted on its own would shift every label after a missing folder; it is refused instead."""
    root = _splits(tmp_path / "data", ["cat", "dog", "eel"], val)
    cfg = load_config(str(IMAGENET_CONFIG), data_root=str(root))
    DATASETS.build(cfg.train_dataloader.dataset)
    for key in ("val_dataloader", "test_dataloader"):
        here = re.escape(str(root))
        with pytest.raises(ValueError, match=rf"ImageFolder {here}/val does not have the class folders of the train "
                                             rf"split {here}/train {problem}{here}/val"):
            DATASETS.build(cfg[key].dataset)


def test_val_labels_follow_train_class_names(tmp_path):
    root = _splits(tmp_path / "data", ["cat", "dog", "eel"], ["eel", "cat", "dog"])
    cfg = load_config(str(IMAGENET_CONFIG), data_root=str(root))
    train, val = (DATASETS.build(cfg[key].dataset) for key in ("train_dataloader", "val_dataloader"))
    assert val.metainfo["classes"] == train.metainfo["classes"] == ("cat", "dog", "eel")
    assert sorted((Path(p).parent.name, y) for p, y in val.samples) == [("cat", 0), ("dog", 1), ("eel", 2)]
    named = DATASETS.build(dict(cfg.val_dataloader.dataset, classes=["eel", "dog", "cat"]))
    assert sorted((Path(p).parent.name, y) for p, y in named.samples) == [("cat", 2), ("dog", 1), ("eel", 0)]
