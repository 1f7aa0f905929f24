"""Shared fixtures: seeded RNG, cached model builders, BN randomisation and a synthetic Fashion-MNIST.

Fresh timm/torchvision models zero-init the last BN of residual blocks, so the pre-activation of
a stage end equals its (non-negative) skip input and sign bugs stay hidden; tests that check
signs or exact values randomise every BatchNorm's affine parameters and running statistics first.

No test reads the real Fashion-MNIST: those that need it take ``fashion_data`` (or, in module
fixtures, ``fashion_files``), and a download attempt fails the test.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest
import torch
from torch import nn
from torchvision.datasets import FashionMNIST

from overhaul_det import teacher_mode

REPO = Path(__file__).resolve().parents[1]
# The lab's tests import it as a clone runs it: ``tools`` from the repository root.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from tools.synthetic import write_fashion_mnist  # noqa: E402  (after the root is on sys.path)

DEMO_CONFIG = REPO / "configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py"
# The smallest benchmark configuration that runs every classification step (test_bench*.py).
TINY_BENCH = dict(teacher="resnet18", student="mobilenet_v3_small", batch_size=2, input_size=64, repeats=1, warmup=0,
                  loss_shape=(2, 16, 8, 8), rewrite_model="resnet18", measure_memory=False, freed_memory="return")


def iteration_config(path: Path, max_iters: int, extra: str = "") -> str:
    """Write at ``path`` the demo config with a random-init resnet18 teacher, ``max_iters`` iterations, no
    validation or test and no LR schedule; the ``extra`` config lines follow (a key they set again wins)."""
    path.write_text(f"""
_base_ = [{str(DEMO_CONFIG)!r}]
model = dict(teacher=dict(_delete_=True, name='resnet18'))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={max_iters})
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None
param_scheduler = []
log_processor = dict(by_epoch=False)
{extra}""")
    return str(path)


# Small inputs gain nothing from intra-op threads, and spinning threads stall on a shared CPU.
torch.set_num_threads(1)


def pytest_configure(config):
    """Build yapf's grammar cache once, before pytest-xdist starts its workers.

    mmengine.config imports yapf, which writes ``~/.cache/YAPF/.../Grammar*.pickle`` on first
    import and renames it into place before flushing it; two workers importing at once on a
    machine without that cache can read it empty (EOFError while collecting)."""
    if not hasattr(config, "workerinput"):
        import yapf  # noqa: F401


@pytest.fixture(autouse=True)
def teacher_auto_is_float32(monkeypatch):
    """teacher_precision='auto' (the default) resolves to float32 in every test, on CPUs with bfloat16
    arithmetic too: exact-value tests compare with float32 references, and the suite must give the same
    verdicts on any CPU. Tests of 'auto' itself set ``cpu_has_native_bf16`` as they need."""
    monkeypatch.setattr(teacher_mode, "cpu_has_native_bf16", lambda: False)

_PRISTINE: Dict[Tuple[str, str, tuple], nn.Module] = {}


def _build(source: str, name: str, **kwargs) -> nn.Module:
    if source == "tv":
        import torchvision

        return getattr(torchvision.models, name)(**kwargs)
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, **kwargs)
    raise ValueError(source)


def build_model(source: str, name: str, **kwargs) -> nn.Module:
    """A random-init model, built once per process and deep-copied for each caller."""
    key = (source, name, tuple(sorted(kwargs.items())))
    if key not in _PRISTINE:
        torch.manual_seed(0)
        _PRISTINE[key] = _build(source, name, **kwargs).eval()
    return copy.deepcopy(_PRISTINE[key])


def snapshot_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of ``model``'s state_dict, to compare with later (``assert_same_state``)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, snapshot: Dict[str, torch.Tensor]) -> None:
    """``model``'s state_dict has the snapshot's keys, in order, with equal dtypes and values."""
    state = model.state_dict()
    assert list(state) == list(snapshot)
    for key, value in snapshot.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine params (both signs of gamma) and running statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)):
            c = module.num_features if hasattr(module, "num_features") else module.weight.numel()
            if getattr(module, "weight", None) is not None:
                sign = torch.where(torch.rand(c, generator=generator) < 0.2, -1.0, 1.0)
                module.weight.copy_(sign * (0.5 + torch.rand(c, generator=generator)))
                module.bias.copy_(0.5 * torch.randn(c, generator=generator))
            if getattr(module, "running_mean", None) is not None:
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
    return model


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    return build_model


@pytest.fixture
def randomized() -> Callable[..., nn.Module]:
    return randomize_bn


FASHION_PER_CLASS = {"train": 30, "t10k": 20}  # 300 training and 200 test images


@pytest.fixture(scope="session")
def fashion_files(tmp_path_factory) -> Path:
    """A synthetic Fashion-MNIST ROOT: unpacked under ROOT/FashionMNIST/raw, and gzip'd in ROOT/debian
    as Debian's ``dataset-fashion-mnist`` ships it."""
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion-mnist"), FASHION_PER_CLASS)


@pytest.fixture
def fashion_data(fashion_files, monkeypatch) -> Path:
    """Point every Fashion-MNIST lookup, here and in child processes, at the synthetic set; return its ROOT."""
    monkeypatch.setenv("OVERHAUL_DET_DATA", str(fashion_files))
    monkeypatch.setenv("OVERHAUL_DET_DEBIAN_DATA", str(fashion_files / "debian"))
    return fashion_files


@pytest.fixture(scope="session", autouse=True)
def _no_dataset_download():
    def refuse(self) -> None:
        raise RuntimeError("tests never download; take the fashion_data fixture")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FashionMNIST, "download", refuse)
        yield
