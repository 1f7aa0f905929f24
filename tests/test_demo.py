"""The demo's printed table (which teacher precision the OFD student trained with), its overall progress line with
an ETA between runs, and ``--threads``; no training runs here."""
from __future__ import annotations

import logging
from datetime import datetime

import pytest
import torch

from overhaul_det import demo
from overhaul_det.cli import build_parser, main as cli_main
from overhaul_det.demo import DemoProgress, _table, progress_text


def test_the_table_names_the_ofd_students_teacher_precision():
    results = [dict(method="baseline", top1=77.53, seconds=165.0, teacher=None),
               dict(method="ofd", top1=81.20, seconds=248.0, teacher="float32")]
    lines = _table(91.04, 6.0, results, trained=False).splitlines()
    assert lines[0].split() == ["model", "top-1", "(%)", "time", "(s)"]
    assert lines[2].split() == ["teacher", "resnet18", "(shipped,", "tested)", "91.04", "6"]
    assert lines[3].split() == ["baseline", "student", "77.53", "165"]
    assert lines[4].split() == ["ofd", "student", "(float32", "teacher)", "81.20", "248"]


def test_progress_text_gives_time_left_and_clock_eta():
    now = datetime(2026, 1, 2, 10, 0, 0)
    text = progress_text(2, 4, 75.4, 630.0, now)
    assert text == "[demo 2/4 done] 0:01:15 elapsed; about 0:10:30 left, ETA 10:10:30"


def test_progress_text_before_the_time_left_is_known_and_at_the_end():
    now = datetime(2026, 1, 2, 10, 0, 0)
    assert progress_text(1, 3, 6.0, None, now) == (
        "[demo 1/3 done] 0:00:06 elapsed; overall time left known once a run of each remaining kind has finished")
    assert progress_text(3, 3, 3725.0, 0.0, now) == "[demo 3/3 done] 1:02:05 elapsed, finished"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_estimates_remaining_runs_from_finished_runs_of_their_kind(caplog):
    clock = _Clock()
    progress = DemoProgress(["teacher test", "student", "student", "student"], clock=clock)
    with caplog.at_level(logging.INFO, logger="overhaul_det.demo"):
        progress.begin("evaluating the teacher")
        clock.now = 5.0
        progress.end()
        assert progress.seconds_left() is None
        progress.begin("training the baseline student")
        clock.now = 105.0
        progress.end()
        assert progress.seconds_left() == 200.0
        progress.begin("training the OFD student")
        clock.now = 305.0
        progress.end()
    assert progress.seconds_left() == 150.0
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "[demo 1/4] evaluating the teacher"
    assert messages[3].startswith("[demo 2/4 done] 0:01:45 elapsed; about 0:03:20 left, ETA ")
    assert messages[5].startswith("[demo 3/4 done] 0:05:05 elapsed; about 0:02:30 left, ETA ")


def _parse_demo(*args):
    return build_parser().parse_args(["demo", *args])


def test_demo_threads_option_is_parsed_and_refuses_bad_counts(capsys):
    assert _parse_demo().threads is None
    assert _parse_demo("--threads", "2").threads == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            _parse_demo("--threads", bad)
        assert "--threads" in capsys.readouterr().err


def test_demo_threads_reach_the_runs_and_are_restored(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "_run_demo", lambda out, epochs, retrain: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    assert cli_main(["demo", "--threads", str(target), "--work-dir", str(tmp_path)]) == 0
    assert cli_main(["demo", "--work-dir", str(tmp_path)]) == 0
    assert seen == [target, before]
    assert torch.get_num_threads() == before
