"""A NaN/Inf loss term stops training naming the term and iteration; the last checkpoint stays good."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from mmengine.logging import MessageHub

from conftest import iteration_config
from overhaul_det.cli import main as cli_main
from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.training import build_runner, load_config
from overhaul_det.tasks.classification import ClassificationDistiller


def _write_config(tmp_path: Path, lr: float) -> str:
    return iteration_config(tmp_path / "nonfinite_config.py", max_iters=4, extra=f"""
train_dataloader = dict(batch_size=4, dataset=dict(num_samples=16))
optim_wrapper = dict(optimizer=dict(lr={lr!r}))
default_hooks = dict(checkpoint=dict(interval=1, by_epoch=False), logger=dict(interval=1))
""")


def _parameters(model: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_diverging_run_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path):
    config = _write_config(tmp_path, lr=1e10)
    runner = build_runner(load_config(config), config, str(tmp_path / "work"))
    with pytest.raises(FloatingPointError) as stopped:
        runner.train()
    message = str(stopped.value)
    assert message.startswith("non-finite loss at iteration 2: loss_ofd=nan, loss_cls=nan.")
    assert "\n" not in message

    work = tmp_path / "work"
    assert not (work / "iter_2.pth").exists()
    assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_1.pth")
    good = load_checkpoint_file(work / "iter_1.pth")
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())
    inside = {k: v for k, v in _parameters(runner.model).items() if not k.startswith("distiller.teacher.")}
    assert inside and all(torch.equal(inside[k], good["state_dict"][k]) for k in inside), "the optimizer stepped on NaN"


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_cli_reports_one_line_and_keeps_what_was_written(tmp_path, capsys):
    config = _write_config(tmp_path, lr=1e10)
    work = tmp_path / "work"
    assert cli_main(["train", config, "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("overhaul-det train: error: non-finite loss at iteration 2: loss_ofd=nan, loss_cls=nan.")
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_1.pth"]
    assert load_checkpoint_file(work / "iter_1.pth")["meta"]["iter"] == 1


@pytest.fixture(scope="module")
def plain_model() -> ClassificationDistiller:
    return ClassificationDistiller(teacher=None, student=dict(name="resnet18"), num_classes=10, ofd=dict(alpha=0))


@pytest.mark.parametrize("bad", ["loss_cls", "loss_ofd", "loss_kd"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_any_single_term_is_named(plain_model, bad, value):
    MessageHub.get_current_instance().update_info("iter", 6)
    losses = {name: torch.tensor(1.0, requires_grad=True) for name in ("loss_cls", "loss_ofd", "loss_kd")}
    losses[bad] = torch.tensor(value, requires_grad=True)
    with pytest.raises(FloatingPointError, match=rf"^non-finite loss at iteration 7: {bad}={value}\. "):
        plain_model.parse_losses(losses)


@pytest.fixture
def api_distiller(make_model):
    from overhaul_det import FeatureDistiller

    return FeatureDistiller(make_model("tv", "resnet18"), make_model("tv", "mobilenet_v3_small"),
                            input_size=(3, 64, 64)).train()


def _student_state(distiller) -> dict:
    return {k: v.clone() for k, v in distiller.student.state_dict().items()}


def test_api_path_refuses_a_nan_batch_before_batchnorm_takes_it(api_distiller):
    before = _student_state(api_distiller)
    x = torch.randn(2, 3, 64, 64)
    x[0, 0, 3, 3] = math.nan
    with pytest.raises(FloatingPointError, match=r"^FeatureDistiller: the input batch holds 1 NaN/Inf value\(s\) of "
                                                 r"24576; .*The data is the cause, not the loss weights"):
        api_distiller(x)
    after = _student_state(api_distiller)
    assert all(torch.equal(before[k], after[k]) for k in before), "BatchNorm statistics took the NaN batch"


def test_api_path_stops_a_non_finite_loss_before_the_optimizer_step(api_distiller):
    with torch.no_grad():
        next(api_distiller.regressors[0].parameters()).fill_(math.inf)
    weights = {k: v.clone() for k, v in api_distiller.student.named_parameters()}
    optimizer = torch.optim.SGD(api_distiller.student.parameters(), lr=0.1)
    with pytest.raises(FloatingPointError, match=r"^non-finite loss_ofd=(nan|inf); stopped before the optimizer "
                                                 r"step: lower alpha or the learning rate"):
        _, losses = api_distiller(torch.randn(2, 3, 64, 64))
        losses["loss_ofd"].backward()
        optimizer.step()
    assert all(torch.equal(v, weights[k]) for k, v in api_distiller.student.named_parameters())


@pytest.mark.usefixtures("fashion_data")
def test_runner_path_blames_the_data_for_a_non_finite_batch(tmp_path):
    config = _write_config(tmp_path, lr=0.01)
    cfg = load_config(config, {"model.data_preprocessor.std": [0.0, 0.0, 0.0]})
    runner = build_runner(cfg, config, str(tmp_path / "work"))
    with pytest.raises(FloatingPointError, match=r"^(FeatureDistiller|the student \(\w+\)): the input batch holds \d+ "
                                                 r"NaN/Inf value.*The data is the cause"):
        runner.train()
    assert not list((tmp_path / "work").glob("*.pth"))
