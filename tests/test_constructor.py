import logging
import uuid

import pytest
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope
from torch import nn

import overhaul_det.engine  # noqa: F401  (registers the constructor)
from overhaul_det.registry import SCOPE


class _Distiller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.teacher = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).requires_grad_(False)
        self.student = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))
        self.regressors = nn.ModuleList([nn.Conv2d(2, 4, 1, bias=False)])
        self.student[1].bias.requires_grad_(False)  # a frozen parameter inside a trainable module


def _build(model: nn.Module, constructor: str):
    cfg = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1),
               paramwise_cfg=dict(custom_keys={"regressors": dict(lr_mult=10)}))
    if constructor:
        cfg["constructor"] = constructor
    with DefaultScope.overwrite_default_scope(SCOPE):
        return build_optim_wrapper(model, cfg)


@pytest.fixture
def log_lines():
    # A new name makes this logger mmengine's current one, which print_log(logger='current') uses.
    logger = MMLogger.get_instance(f"test_constructor_{uuid.uuid4().hex}")
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


@pytest.mark.parametrize("constructor", ["", "DistillerOptimWrapperConstructor"])
def test_frozen_teacher_is_left_out_with_one_line_not_one_per_parameter(log_lines, constructor):
    model = _Distiller()
    wrapper = _build(model, constructor)
    grouped = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert set(grouped) == {id(p) for p in trainable}
    assert grouped[id(model.regressors[0].weight)] == pytest.approx(1.0)
    skipped = [line for line in log_lines if "is skipped since its requires_grad=False" in line]
    if constructor:
        assert skipped == ["student.1.bias is skipped since its requires_grad=False"]
        assert any(line.startswith("optimizer: 1 frozen module(s) left out (teacher; 120 parameters")
                   for line in log_lines)
    else:
        assert len(skipped) == 5  # mmengine's own: one per frozen parameter
