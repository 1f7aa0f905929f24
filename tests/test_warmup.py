"""RegressorWarmupHook: only the regressors learn at first; the student (weights and BN stats) stays put."""
from __future__ import annotations

import logging
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
    teacher = randomized(build_segmenter("timm/resnet18", 3, channels=16))
    model = SegmentationDistiller(teacher, dict(backbone="timm/resnet18", channels=16, aux_loss=True), num_classes=3,
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


def test_warmup_longer_than_training_says_the_student_never_trained(caplog):
    """A 1-epoch run of 8 iterations under a 50-iteration warm-up: the log says the warm-up was cut short."""
    spec = dict(backbone="timm/resnet18", channels=16)
    model = SegmentationDistiller(spec, dict(spec), num_classes=3, ofd=dict(input_size=(3, SIZE, SIZE)))
    runner = SimpleNamespace(model=model, iter=0, max_iters=8, train_dataloader=[None] * 8,
                             logger=logging.getLogger("test_warmup"))
    hook = RegressorWarmupHook(iters=50)
    with caplog.at_level(logging.INFO, logger="test_warmup"):
        hook.before_train(runner)
        for iteration in range(8):
            runner.iter = iteration
            hook.before_train_iter(runner, iteration)
            assert not any(p.requires_grad for p in model.student.parameters())
        runner.iter = 8
        hook.after_train(runner)
    assert all(p.requires_grad for p in model.student.parameters())
    messages = [r.getMessage() for r in caplog.records if r.name == "test_warmup"]
    assert not any("the student trains" in m for m in messages), messages
    assert any(m.startswith("RegressorWarmupHook: the warm-up (50 iterations) lasts the whole training (8 iterations)")
               for m in messages), messages
    assert messages[-1].startswith("regressor warm-up cut short: training ended at iteration 8 of the 50 warm-up "
                                   "iterations, so the student never trained")
