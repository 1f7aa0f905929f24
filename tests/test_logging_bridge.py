"""The package's log records reach the run's log file, and only the latest run's."""
from __future__ import annotations

import logging

from mmengine.logging import MMLogger

from overhaul_det.engine.logging_bridge import _lend_file_handlers


def test_package_records_reach_the_latest_runs_log_file(tmp_path):
    first = MMLogger.get_instance("bridge_first", log_file=str(tmp_path / "first.log"))
    _lend_file_handlers(first)
    logging.getLogger("overhaul_det.distiller").info("alpha='auto': alpha = 0.01")
    second = MMLogger.get_instance("bridge_second", log_file=str(tmp_path / "second.log"))
    _lend_file_handlers(second)
    logging.getLogger("overhaul_det.taps").info("taps found")
    for handler in first.handlers + second.handlers:
        handler.flush()
    first_text, second_text = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert "overhaul_det.distiller - INFO - alpha='auto': alpha = 0.01" in first_text
    assert "taps found" in second_text and "taps found" not in first_text
    assert "alpha='auto'" not in second_text


def test_the_environment_config_and_hook_dumps_go_to_files_not_the_screen(tmp_path, fashion_data, capfd):
    from conftest import iteration_config
    from overhaul_det.cli import main as cli_main

    config = iteration_config(tmp_path / "quiet.py", max_iters=1,
                              extra="train_dataloader = dict(batch_size=2, dataset=dict(num_samples=2))")
    assert cli_main(["train", config, "--work-dir", str(tmp_path / "work")]) == 0
    screen = capfd.readouterr()
    dumps = list((tmp_path / "work").glob("*/environment.txt"))
    assert len(dumps) == 1
    text = dumps[0].read_text()
    assert "System environment:" in text and "Config:" in text and "train_dataloader" in text
    assert "System environment" not in screen.out + screen.err and "Config:" not in screen.out + screen.err
    assert f"environment and config written to {dumps[0]}" in screen.out + screen.err
    assert "before_train:" in (dumps[0].parent / "hooks.txt").read_text() and "before_train:" not in screen.out
    assert "will be deprecated" not in screen.out + screen.err
