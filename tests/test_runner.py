"""Config loading and runner building: `test` without the teacher file, dataloaders for any worker count, a training
checkpoint without the teacher loaded, exported and tested."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner, load_checkpoint
from safetensors.torch import load_file

from conftest import iteration_config
from overhaul_det.cli import main as cli_main
from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.models import build_classifier
from overhaul_det.training import load_config
from overhaul_det.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")


def _ofd_checkpoint(path: Path) -> dict:
    """An OFD run's checkpoint (student keys ``distiller.student.``), its student moved off its initialisation."""
    cfg = Config.fromfile(str(DEMO_CONFIG))
    model = MODELS.build(dict(cfg.model, teacher=dict(name="resnet18")))
    with torch.no_grad():
        for value in model.distiller.student.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value))
    state = model.state_dict()
    torch.save(dict(meta=dict(iter=1), state_dict=state), path)
    return {k[len("distiller.student."):]: v for k, v in state.items() if k.startswith("distiller.student.")}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_test_command_needs_no_teacher_file(tmp_path, monkeypatch, capsys):
    student = _ofd_checkpoint(tmp_path / "ofd.pth")
    config = tmp_path / "config.py"
    config.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
model = dict(teacher=dict(checkpoint={str(tmp_path / 'gone.safetensors')!r}))
test_dataloader = dict(batch_size=8, dataset=dict(num_samples=16))
experiment_name = {tmp_path.name!r}
""")
    tested = []
    run_test = Runner.test
    monkeypatch.setattr(Runner, "test", lambda runner: tested.append(runner) or run_test(runner))

    code = cli_main(["test", str(config), str(tmp_path / "ofd.pth"), "--work-dir", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err[-500:]
    assert "accuracy/top1: " in capsys.readouterr().out
    model = tested[0].model
    assert model.teacher is None
    loaded = model.student.state_dict()
    assert loaded.keys() == student.keys() and all(torch.equal(loaded[k], v) for k, v in student.items())


BASES = ["imagenet.py", "coco_detection.py", "voc_segmentation.py"]


@pytest.mark.parametrize("base", BASES)
def test_base_dataset_configs_build_dataloaders_without_workers(tmp_path, base):
    config = tmp_path / "config.py"
    config.write_text(f"_base_ = [{str(REPO / 'configs/_base_/datasets' / base)!r}]\nmodel = dict(type='x')\n")
    assert all(load_config(str(config))[key].persistent_workers for key in LOADERS), "kept where there are workers"
    cfg = load_config(str(config), {f"{key}.num_workers": 0 for key in LOADERS})
    for key in LOADERS:
        loader = Runner.build_dataloader(dict(cfg[key], dataset=list(range(4))))
        assert loader.num_workers == 0 and not loader.persistent_workers
        assert next(iter(loader))


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_test_command_scores_a_float16_export(tmp_path, monkeypatch, capsys):
    student = _ofd_checkpoint(tmp_path / "ofd.pth")
    exported = tmp_path / "student.safetensors"
    assert cli_main(["export", str(tmp_path / "ofd.pth"), "--out", str(exported), "--dtype", "float16"]) == 0
    stored = load_file(str(exported))
    assert {str(v.dtype) for k, v in stored.items() if student[k].is_floating_point()} == {"torch.float16"}
    assert all(stored[k].dtype == v.dtype for k, v in student.items() if not v.is_floating_point())
    config = tmp_path / "config.py"
    config.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
test_dataloader = dict(batch_size=8, dataset=dict(num_samples=16))
experiment_name = {tmp_path.name!r}
""")
    tested = []
    run_test = Runner.test
    monkeypatch.setattr(Runner, "test", lambda runner: tested.append(runner) or run_test(runner))
    code = cli_main(["test", str(config), str(exported), "--work-dir", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err[-500:]
    loaded = tested[0].model.student.state_dict()
    assert all(loaded[k].dtype == v.dtype and torch.equal(loaded[k], v.half().to(v.dtype)) if v.is_floating_point()
               else torch.equal(loaded[k], v) for k, v in student.items())
    with pytest.raises(SystemExit):  # argparse names the choices
        cli_main(["export", str(tmp_path / "ofd.pth"), "--out", str(exported), "--dtype", "float8"])
    assert "invalid choice: 'float8'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_a_training_checkpoint_without_teacher_loads_exports_and_tests(tmp_path, monkeypatch, capsys):
    config = iteration_config(tmp_path / "train.py", 2, extra="""
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(num_samples=20))
default_hooks = dict(checkpoint=dict(interval=2, by_epoch=False))
randomness = dict(seed=0)
""")
    assert cli_main(["train", config, "--work-dir", str(tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "iter_2.pth"
    state = load_checkpoint_file(checkpoint)["state_dict"]
    assert not any(".teacher." in f".{k}" for k in state) and "distiller.teacher_sha256" in state

    cfg = load_config(config)
    torch.manual_seed(0)  # the seed the run built its random-init teacher with
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), strict=True)  # strict: raises on any missing or unexpected key
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    exported = tmp_path / "student.safetensors"
    assert cli_main(["export", str(checkpoint), "--out", str(exported)]) == 0
    plain = build_classifier(**cfg.model.student, num_classes=cfg.model.num_classes)
    plain.load_state_dict(load_file(str(exported)), strict=True)

    tested = []
    run_test = Runner.test
    monkeypatch.setattr(Runner, "test", lambda runner: tested.append(runner) or run_test(runner))
    test_config = tmp_path / "test.py"
    test_config.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
test_dataloader = dict(batch_size=8, dataset=dict(num_samples=16))
experiment_name = {tmp_path.name!r}
""")
    code = cli_main(["test", str(test_config), str(checkpoint), "--work-dir", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().err[-500:]
    assert "accuracy/top1: " in capsys.readouterr().out
    loaded = tested[0].model.student.state_dict()
    assert all(torch.equal(v, state[f"distiller.student.{k}"]) for k, v in loaded.items())
