"""Checkpoints are data: weights_only or safetensors, code-carrying pickles refused and never run."""
from __future__ import annotations

import argparse
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader
from safetensors.torch import save_file

from overhaul_det.engine import install
from overhaul_det.engine.checkpoint import UnsafeCheckpointError, load_checkpoint_file, load_state_dict_file
from overhaul_det.training import build_runner
from overhaul_det.export import export_student
from overhaul_det.models.classifiers import build_classifier

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Getattr:
    """Unpickling this calls ``getattr(owner, name)``."""

    def __init__(self, owner, name: str) -> None:
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


@pytest.fixture
def evil(tmp_path):
    """A teacher-looking checkpoint whose loading would run ``touch marker``."""
    marker = tmp_path / "code_ran"
    state = build_classifier("resnet18", num_classes=10).state_dict()
    path = tmp_path / "teacher.pth"
    torch.save(dict(state_dict=state, payload=RunsCode(marker)), path)
    return path, marker


LOADERS = {
    "load_checkpoint_file": lambda p: load_checkpoint_file(p),
    "load_state_dict_file": lambda p: load_state_dict_file(p),
    "teacher_checkpoint": lambda p: build_classifier("resnet18", num_classes=10, checkpoint=str(p)),
    "mmengine_loader": lambda p: (install(), CheckpointLoader.load_checkpoint(str(p), map_location="cpu")),
    "export": lambda p: export_student(p, p.with_name("student.safetensors")),
}


@pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS.keys())
def test_code_carrying_pickle_is_refused_and_never_runs(evil, load):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*teacher\.pth.*convert it once"):
        load(path)
    assert not marker.exists(), "the pickle's code ran"


def test_refusal_message_converts_a_trusted_file(tmp_path):
    """A trusted checkpoint with extra Python objects (here an argparse.Namespace) is refused; the
    command in the message turns it into a .safetensors file that loads into the model."""
    model = build_classifier("resnet18", num_classes=10)
    source = tmp_path / "trusted.pth"
    torch.save(dict(state_dict=model.state_dict(), args=argparse.Namespace(lr=0.1)), source)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint_file(source)
    command = re.search(r"`python -c \"(.*)\"`", str(refused.value)).group(1)
    out = tmp_path / "trusted"
    command = command.replace("'IN'", repr(str(source))).replace("'OUT.safetensors'", repr(f"{out}.safetensors"))
    subprocess.run([sys.executable, "-c", command], check=True, timeout=120)
    converted = build_classifier("resnet18", num_classes=10, checkpoint=f"{out}.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_teacher_weights_load_weights_only_or_safetensors(tmp_path, suffix):
    torch.manual_seed(3)
    source = build_classifier("resnet18", num_classes=10)
    path = tmp_path / f"teacher{suffix}"
    if suffix == ".pth":
        torch.save(dict(state_dict=source.state_dict()), path)
    else:
        save_file(source.state_dict(), str(path))
    loaded = build_classifier("resnet18", num_classes=10, checkpoint=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _one_iteration_config(work_dir: Path) -> Config:
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.work_dir = str(work_dir)
    cfg.model.teacher = dict(name="resnet18")
    cfg.train_dataloader.batch_size = 4
    cfg.train_dataloader.dataset.num_samples = 8
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=1)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.param_scheduler = [dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=4)]
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    return cfg


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_own_checkpoints_load_and_resume_with_the_allow_list(tmp_path):
    build_runner(_one_iteration_config(tmp_path), str(DEMO_CONFIG)).train()
    path = tmp_path / "iter_1.pth"
    with pytest.raises(pickle.UnpicklingError):  # torch alone refuses mmengine's HistoryBuffer
        torch.load(path, weights_only=True)
    checkpoint = load_checkpoint_file(path)
    assert {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"} <= checkpoint.keys()
    assert any(isinstance(v, HistoryBuffer) for v in checkpoint["message_hub"]["log_scalars"].values())

    cfg = _one_iteration_config(tmp_path)
    cfg.train_cfg.max_iters = 2
    runner = build_runner(cfg, str(DEMO_CONFIG), resume=True)
    runner.train()
    assert runner.iter == 2
    assert load_checkpoint_file(tmp_path / "iter_2.pth")["meta"]["iter"] == 2


@pytest.mark.parametrize("owner,name", [
    (HistoryBuffer, "__init__"), (HistoryBuffer, "_statistics_methods"), (HistoryBuffer([1.0], [1]), "__class__"),
    (OrderedDict, "fromkeys"), (np.ndarray, "tofile"),
], ids=["dunder", "private", "instance-dunder", "other-class", "ndarray-tofile"])
def test_restricted_getattr_refuses_other_attributes(tmp_path, owner, name):
    path = tmp_path / "getattr.pth"
    torch.save(dict(state_dict={}, trick=Getattr(owner, name)), path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint_file(path)
    assert f"'{name}') is not allowed in a checkpoint" in str(refused.value.__context__)


def test_restricted_getattr_allows_history_buffer_statistics(tmp_path):
    path = tmp_path / "stats.pth"
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    torch.save(dict(method=Getattr(buffer, "mean")), path)
    method = load_checkpoint_file(path)["method"]
    assert method() == pytest.approx(2.0)
