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
