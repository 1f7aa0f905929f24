"""The reproduce report: collected from finished runs, mean ± std per method, table and plot."""
from __future__ import annotations

import json
import statistics

import pytest

from overhaul_det import reproduce


def _fake_run(root, method, seed, final):
    folder = root / "classification" / method.replace(" ", "_").replace("+", "_") / f"seed{seed}"
    folder.mkdir(parents=True)
    result = dict(task="classification", method=method, seed=seed, metric="accuracy/top1", final=final,
                  history=[final - 10, final], seconds=10.0 + seed, overrides={})
    (folder / "result.json").write_text(json.dumps(result))


def test_report_from_finished_runs(tmp_path):
    for seed, (b, o) in enumerate([(75.0, 82.0), (76.0, 81.0), (74.0, 83.0)]):
        _fake_run(tmp_path, "baseline", seed, b)
        _fake_run(tmp_path, "ofd", seed, o)
    _fake_run(tmp_path, "ofd, teacher BN eval", 0, 80.0)
    report = reproduce.collect_task("classification", tmp_path)
    assert list(report["summary"]) == ["baseline", "ofd", "ofd, teacher BN eval"]
    assert report["summary"]["ofd"]["mean"] == pytest.approx(82.0)
    assert report["summary"]["baseline"]["std"] == pytest.approx(statistics.stdev([75.0, 76.0, 74.0]))
    assert report["summary"]["ofd, teacher BN eval"]["std"] == 0.0
    table = reproduce._markdown(report, "overhaul-det reproduce classification", "plot.png")
    assert "| ofd | 82.00 ± 1.00 | 82.00, 81.00, 83.00 | 11 |" in table
    plot = tmp_path / "plot.png"
    reproduce._plot("classification", report["results"], report["metric"], plot)
    assert plot.stat().st_size > 1000


def test_report_without_runs_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="overhaul-det reproduce detection"):
        reproduce.collect_task("detection", tmp_path)


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="kd"):
        reproduce.run_task("detection", 1, tmp_path, None, False, methods=["kd"])
