"""RegressorWarmupHook: only the regressors learn at first; the student (weights and BN stats) stays put."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper

from overhaul_det.engine.warmup import RegressorWarmupHook
from overhaul_det.models.segmentation import build_segmenter
from overhaul_det.tasks.segmentation import SegmentationDistiller

SIZE = 64


def _batch():
    generator = torch.Generator().manual_seed(2)
    return dict(inputs=[torch.randn(3, SIZE, SIZE, generator=generator) for _ in range(2)],
                data_samples=[dict(gt_seg=torch.randint(0, 3, (SIZE, SIZE), generator=generator)) for _ in range(2)])


def _snapshot(module: torch.nn.Module):
    return {key: value.clone() for key, value in module.state_dict().items()}


def _changed(before, module: torch.nn.Module):
    return [key for key, value in module.state_dict().items() if not torch.equal(value, before[key])]


def test_hook_needs_exactly_one_length():
    with pytest.raises(ValueError, match="exactly one of iters=N or epochs=N"):
        RegressorWarmupHook()
    with pytest.raises(ValueError, match="exactly one"):
        RegressorWarmupHook(iters=2, epochs=1)
    with pytest.raises(ValueError, match=">= 0"):
        RegressorWarmupHook(epochs=-1)


def test_warmup_freezes_student_then_releases_it(randomized):
    teacher = randomized(build_segmenter("resnet18", 3, channels=16))
    model = SegmentationDistiller(teacher, dict(backbone="resnet18", channels=16, aux_loss=True), num_classes=3,
                                  ofd=dict(input_size=(3, SIZE, SIZE), alpha=1e-2))
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    runner = SimpleNamespace(model=model, iter=0, train_dataloader=[None] * 3, logger=MMLogger.get_current_instance())
    hook = RegressorWarmupHook(epochs=1)
    student, regressors = model.student, model.distiller.regressors
    student_before, regressors_before = _snapshot(student), _snapshot(regressors)

    hook.before_train(runner)
    for iteration in range(3):
        runner.iter = iteration
        model.train()
        hook.before_train_iter(runner, iteration)
        assert not student.training and not any(p.requires_grad for p in student.parameters())
        losses = model.train_step(_batch(), optim)
        assert torch.isfinite(losses["loss_ofd"]) and losses["loss_ofd"] > 0
    assert _changed(student_before, student) == [], "the student moved during warm-up"
    assert _changed(regressors_before, regressors), "the regressors did not learn during warm-up"

    runner.iter = 3
    model.train()
    hook.before_train_iter(runner, 3)
    assert student.training and all(p.requires_grad for p in student.parameters())
    model.train_step(_batch(), optim)
    moved = _changed(student_before, student)
    assert any(k.endswith("running_mean") for k in moved) and any(k.endswith("weight") for k in moved)


def test_warmup_released_when_training_ends_early():
    model = SegmentationDistiller(dict(backbone="resnet18", channels=16), dict(backbone="resnet18", channels=16),
                                  num_classes=3, ofd=dict(input_size=(3, SIZE, SIZE)))
    runner = SimpleNamespace(model=model, iter=0, train_dataloader=[], logger=MMLogger.get_current_instance())
    hook = RegressorWarmupHook(iters=10)
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    assert not any(p.requires_grad for p in model.student.parameters())
    hook.after_train(runner)
    assert all(p.requires_grad for p in model.student.parameters())
