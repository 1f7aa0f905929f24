"""The total batch and learning rate are logged at the start; a batch unlike ``auto_scale_lr.base_batch_size`` warns
unless ``--auto-scale-lr`` scales the rate, as mmengine's Runner does."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import iteration_config
from overhaul_det.cli import main as cli_main
from overhaul_det.training import build_runner, load_config

LR = 0.08


def _config(tmp_path: Path) -> str:
    return iteration_config(tmp_path / "batch_lr.py", max_iters=1, extra=f"""
train_dataloader = dict(batch_size=2, dataset=dict(num_samples=4))
optim_wrapper = dict(optimizer=dict(lr={LR}))
auto_scale_lr = dict(base_batch_size=16)
""")


def _log(work: Path) -> str:
    return "".join(path.read_text() for path in work.glob("*/*.log"))


@pytest.mark.usefixtures("fashion_data")
@pytest.mark.parametrize("scale", [False, True])
def test_a_batch_unlike_the_configs_warns_or_is_scaled(tmp_path, scale):
    config, work = _config(tmp_path), tmp_path / "work"
    runner = build_runner(load_config(config), config, str(work), auto_scale_lr=scale)
    runner.train()
    rates = {group.get("initial_lr", group["lr"]) for group in runner.optim_wrapper.optimizer.param_groups}
    log = _log(work)
    if scale:
        assert sorted(rates) == [pytest.approx(LR * 2 / 16)]
        assert "total batch 2 (1 process(es) x 2); learning rate 0.01 (scaled by --auto-scale-lr)" in log
        assert "auto_scale_lr.base_batch_size" not in log
    else:
        assert rates == {LR}
        assert "total batch 2 (1 process(es) x 2); learning rate 0.08" in log
        assert ("WARNING - the config's learning rate is for a total batch of 16 (auto_scale_lr.base_batch_size) but "
                "this run's is 2: train with --auto-scale-lr") in log


def test_auto_scale_lr_without_a_base_batch_is_refused(tmp_path, capsys):
    config = iteration_config(tmp_path / "no_base.py", max_iters=1)
    assert cli_main(["train", config, "--work-dir", str(tmp_path / "work"), "--auto-scale-lr"]) == 2
    assert "sets no auto_scale_lr.base_batch_size" in capsys.readouterr().err
