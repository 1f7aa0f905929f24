"""Two processes through torchrun on CPU (gloo): same weights on every rank, sharded data, exact eval."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from torch import nn

from overhaul_det.datasets import FashionMNISTDataset
from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.engine.reliability import prepare_distributed
from overhaul_det.tasks.classification import ClassificationDistiller

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"
NUM_TRAIN, NUM_VAL = 16, 9  # 9 validation images: rank 1 gets a padded duplicate that must not count

PROBE = '''
import hashlib, json, os
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, METRICS
from overhaul_det.evaluation import Accuracy


@HOOKS.register_module()
class ProbeHook(Hook):
    def __init__(self):
        self.seen = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen += [hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in data_batch["inputs"]]

    def after_train(self, runner):
        rank = get_rank()
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        torch.save(model.state_dict(), os.path.join(runner.work_dir, f"state_rank{rank}.pth"))
        info = dict(seen=self.seen, wrapper=type(runner.model).__name__, world_size=get_world_size())
        with open(os.path.join(runner.work_dir, f"probe_rank{rank}.json"), "w") as f:
            json.dump(info, f)


@METRICS.register_module()
class CountingAccuracy(Accuracy):
    def __init__(self, dump, **kwargs):
        super().__init__(**kwargs)
        self.dump = dump

    def compute_metrics(self, results):
        with open(self.dump, "w") as f:
            json.dump([label for _, label in results], f)
        return dict(super().compute_metrics(results), count=len(results))
'''


def _write_config(tmp_path: Path) -> Path:
    (tmp_path / "ddp_probe.py").write_text(PROBE)
    config = tmp_path / "ddp_config.py"
    config.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
custom_imports = dict(imports=['ddp_probe'], allow_failed_imports=False)
model = dict(teacher=dict(_delete_=True, name='resnet18'))
train_dataloader = dict(batch_size=4, dataset=dict(num_samples={NUM_TRAIN}, augment=False))
val_dataloader = dict(batch_size=4, dataset=dict(num_samples={NUM_VAL}))
val_evaluator = dict(_delete_=True, type='CountingAccuracy', topk=(1,), dump={str(tmp_path / 'val_labels.json')!r})
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2)
param_scheduler = []
default_hooks = dict(checkpoint=dict(interval=1, by_epoch=False), logger=dict(interval=1))
custom_hooks = [dict(type='DataMarginHook'), dict(type='ProbeHook')]
log_processor = dict(by_epoch=False)
work_dir = {str(tmp_path / 'work')!r}
""")
    return config


def _dataset_hashes() -> set:
    dataset = FashionMNISTDataset(train=True, resize=32, num_samples=NUM_TRAIN)
    return {hashlib.sha1(dataset[i]["inputs"].numpy().tobytes()).hexdigest() for i in range(len(dataset))}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_torchrun_two_cpu_processes(tmp_path):
    config = _write_config(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")  # two ranks on CPU even where one GPU is visible
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tools/train.py"), str(config), "--launcher", "pytorch"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    work = tmp_path / "work"
    probes = [json.loads((work / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["wrapper"] for p in probes] == ["CPUDistributedDataParallel"] * 2
    assert [p["world_size"] for p in probes] == [2, 2]

    states = [torch.load(work / f"state_rank{r}.pth", weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    different = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not different, f"ranks disagree on {different[:5]}"
    saved = [load_checkpoint_file(work / f"iter_{i}.pth")["state_dict"] for i in (1, 2)]
    weights = [k for k in states[0] if k.startswith("distiller.student.") and "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(saved[1][k], states[0][k]) for k in weights)
    assert any(not torch.equal(saved[0][k], saved[1][k]) for k in weights)

    seen = [set(p["seen"]) for p in probes]
    assert len(probes[0]["seen"]) == len(probes[1]["seen"]) == NUM_TRAIN // 2
    assert not seen[0] & seen[1], "both ranks trained on the same images"
    assert seen[0] | seen[1] == _dataset_hashes()

    labels = json.loads((tmp_path / "val_labels.json").read_text())
    expected = FashionMNISTDataset(train=False, num_samples=NUM_VAL).labels.tolist()
    assert labels == expected, "validation samples were dropped, duplicated or reordered across ranks"
    assert f"accuracy/count: {NUM_VAL}" in done.stdout + done.stderr


def test_sync_bn_is_refused_on_cpu(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = Config(dict(model=dict(), env_cfg=dict(dist_cfg=dict(backend="gloo")), sync_bn="torch"))
    with pytest.raises(ValueError, match="sync_bn='torch': torch's SyncBatchNorm runs on GPU only"):
        prepare_distributed(cfg, "pytorch")


def test_sync_bn_conversion_reaches_student_and_regressors():
    """Runner's sync_bn='torch' swaps each BatchNorm for SyncBatchNorm after the taps are attached;
    the FX-bound student forward must call the swapped modules, with the same numerics alone.
    (timm's BatchNormAct2d is traced through to find the pre-activation, so it is not swapped in
    the student's graph: see docs/reliability.md.)"""
    model = ClassificationDistiller(
        teacher=dict(name="resnet18"), student=dict(name="mobilenet_v3_small"), num_classes=10,
        ofd=dict(alpha=1e-2, input_size=(3, 32, 32)),
    ).train()
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model)).train()
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert list(synced.state_dict()) == list(model.state_dict())
    called = set()
    for name, module in synced.named_modules():
        if isinstance(module, nn.SyncBatchNorm):
            module.register_forward_hook(lambda *_, name=name: called.add(name.split(".")[1]))
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    expected = model.loss(x, labels)
    torch.manual_seed(1)
    got = synced.loss(x, labels)
    assert called == {"student", "regressors"}
    for name in expected:
        assert torch.allclose(expected[name], got[name]), name
