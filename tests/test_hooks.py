"""DataMarginHook estimates data margins from the batches the task model feeds its teacher."""
import copy
import logging
from types import SimpleNamespace

import pytest
import torch

from overhaul_det.engine.hooks import DataMarginHook
from overhaul_det.tasks.detection import DetectionDistiller

SIZE = 96


@pytest.fixture(scope="module")
def detector():
    """FPN taps (no BatchNorm after them, so their margins come from data); a teacher with its own normalisation."""
    torch.manual_seed(0)
    teacher = dict(name="resnet18", fpn_channels=32, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    return DetectionDistiller(teacher=teacher, student=dict(name="resnet18", fpn_channels=16), num_classes=4,
                              min_size=SIZE, max_size=SIZE, feature_levels="fpn",
                              ofd=dict(alpha=1e-3, input_size=(3, 64, 64)))


def _margins(model):
    return [margin.clone() for margin in model.distiller.margins]


def test_detection_margins_come_from_the_teachers_view_of_several_batches(detector):
    model = copy.deepcopy(detector)
    assert not bool(model.distiller.margins_calibrated)
    torch.manual_seed(1)
    loader = [dict(inputs=[torch.rand(3, SIZE, SIZE) for _ in range(2)],
                   data_samples=[dict(image_id=i, boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
                                 for i in range(2)]) for _ in range(3)]
    expected = copy.deepcopy(model)
    expected.distiller.calibrate_margins([model.teacher_input(model.student_model.transform(data["inputs"])[0].tensors)
                                          for data in loader[:2]])
    runner = SimpleNamespace(model=model, train_dataloader=loader, logger=logging.getLogger("test"))
    DataMarginHook(num_batches=2).before_train(runner)
    assert bool(model.distiller.margins_calibrated)
    calibrated, wanted = _margins(model), _margins(expected)
    assert all(torch.equal(m, w) for m, w in zip(calibrated, wanted))
    assert all((m < 0).all() for m in calibrated)
    assert all(not torch.equal(m, u) for m, u in zip(calibrated, _margins(detector)))  # the uncalibrated ones


@pytest.mark.usefixtures("fashion_data")
@pytest.mark.parametrize("resize, refused", [(64, True), (32, False)])
def test_ofd_input_size_unlike_the_first_batch_is_refused_with_the_key(tmp_path, capsys, resize, refused):
    from conftest import iteration_config
    from overhaul_det.cli import main as cli_main

    config = iteration_config(tmp_path / "size.py", max_iters=1, extra=f"""
train_dataloader = dict(batch_size=4, dataset=dict(num_samples=8, resize={resize}, augment=False))
model = dict(ofd=dict(input_size=(3, 32, 32)))
""")
    code = cli_main(["train", config, "--work-dir", str(tmp_path / "work")])
    if refused:
        assert code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            "overhaul-det train: error: model.ofd.input_size=(3, 32, 32) but the first training batch is 64x64 px "
            "(train_dataloader's pipeline): set model.ofd.input_size=(3, 64, 64) or resize the data to it")
    else:
        assert code == 0
