"""tools/zoo_sweep.py's teacher -> student pairs section on timm's tiny test models: one OFD step
per pair, cached and resumed, failures kept with a reason, and the report section. Then its detection and
segmentation sections: one real training step each for a torchvision detector and a segmenter as teacher
and as student, a builder the adapter refuses, the cache, the report and --detection-only."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("zoo_sweep", Path(__file__).parents[1] / "tools" / "zoo_sweep.py")
zoo_sweep = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(zoo_sweep)
sys.modules.setdefault("zoo_sweep", zoo_sweep)  # the sweep's worker processes import it by this name

TINY = (
    zoo_sweep.Pair("CNN -> ViT", "timm/test_resnet", "timm/test_vit", 64, student_kwargs=(("img_size", 64),)),
    zoo_sweep.Pair("ViT -> CNN", "timm/test_vit", "timm/test_resnet", 64, teacher_kwargs=(("img_size", 64),)),
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    zoo_sweep.run_pairs(TINY, path, timeout=300)
    return path


def test_tiny_pairs_distil_by_depth_across_layouts(cache):
    records = {(r["teacher"], r["student"]): r for r in zoo_sweep.read_pairs_cache(cache)}
    assert set(records) == {(p.teacher, p.student) for p in TINY}
    for r in records.values():
        assert r["status"] == "ok", r.get("reason")
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["paired_by"] == "depth" and "by depth" in r["depth_message"]
        assert r["feeding_params"] > 0 and r["with_grad"] == r["feeding_params"]
        assert r["first_conv_grad"] and r["regressor_grads"] and r["teacher_unchanged"]
        assert all(p["loss_layout"] == "nchw" for p in r["pairs"])
    vit_student = records[("timm/test_resnet", "timm/test_vit")]
    assert vit_student["first_conv"] == "patch_embed.proj"
    assert [(p["student_layout"], p["teacher_layout"]) for p in vit_student["pairs"]] == [("tokens", "nchw")] * 4


def test_cached_pairs_are_not_rerun_and_failures_retry(cache, tmp_path, monkeypatch):
    path = tmp_path / "pairs.jsonl"
    path.write_text(cache.read_text())
    calls = []
    monkeypatch.setattr(zoo_sweep, "check_pair", lambda pair, record: calls.append(pair) or record)
    zoo_sweep.run_pairs(TINY, path, timeout=300)
    assert calls == []

    monkeypatch.undo()
    broken = zoo_sweep.Pair("CNN -> CNN", "timm/test_resnet", "timm/no_such_model", 64)
    zoo_sweep.run_pairs([broken], path, timeout=300)
    (failed,) = [r for r in zoo_sweep.read_pairs_cache(path) if r["student"] == "timm/no_such_model"]
    assert failed["status"] == "fail" and failed["stage"] == "build" and "\n" not in failed["reason"]
    assert failed["reason"].startswith("ValueError: unknown model name")

    monkeypatch.setattr(zoo_sweep, "check_pair", lambda pair, record: calls.append(pair) or record.update(status="ok"))
    zoo_sweep.run_pairs(TINY + (broken,), path, timeout=300, retry_failed=True)
    assert calls == [broken]
    assert len(zoo_sweep.read_pairs_cache(path)) == 3


def test_pairs_only_writes_the_pairs_section(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_sweep, "PAIRS", TINY)
    out, sweep_cache = tmp_path / "zoo.md", tmp_path / "sweep.jsonl"
    assert zoo_sweep.main(["--pairs-only", "--pairs-cache", str(cache), "--cache", str(sweep_cache),
                           "--out", str(out)]) == 0
    assert not sweep_cache.exists()  # the sweep did not run
    text = out.read_text()
    assert "## Teacher -> student pairs (2/2 distil)" in text and "--pairs-only" in text
    rows = [line for line in text.splitlines() if line.startswith("| CNN -> ViT") or line.startswith("| ViT -> CNN")]
    assert len(rows) == 2 and all("| ok |" in row and "| depth |" in row for row in rows)
    assert [json.loads(line)["teacher"] for line in cache.read_text().splitlines()] == [p.teacher for p in TINY]


# ------------------------------------------------------------------------------------------------
# The detection and segmentation sections: torchvision builders as teacher and as student.

@pytest.fixture(scope="module")
def task_caches(tmp_path_factory):
    """Real checks: a torchvision detector and a segmenter that the adapters build, and a detector name
    the detection adapter refuses."""
    root = tmp_path_factory.mktemp("tasks")
    detection, segmentation = root / "detection.jsonl", root / "segmentation.jsonl"
    zoo_sweep.run_task(zoo_sweep.DETECTION, detection, timeout=300,
                       builders=["fasterrcnn_mobilenet_v3_large_fpn", "no_such_detector"])
    zoo_sweep.run_task(zoo_sweep.SEGMENTATION, segmentation, timeout=300, builders=["deeplabv3_mobilenet_v3_large"])
    return detection, segmentation


def test_a_detector_and_a_segmenter_step_as_teacher_and_as_student(task_caches):
    detection, segmentation = (zoo_sweep.read_task_cache(path) for path in task_caches)
    passing = [r for r in detection if r["builder"] == "fasterrcnn_mobilenet_v3_large_fpn"] + segmentation
    assert sorted((r["builder"], r["role"]) for r in passing) == [
        ("deeplabv3_mobilenet_v3_large", "student"), ("deeplabv3_mobilenet_v3_large", "teacher"),
        ("fasterrcnn_mobilenet_v3_large_fpn", "student"), ("fasterrcnn_mobilenet_v3_large_fpn", "teacher")]
    for r in passing:
        assert r["status"] == "ok", r.get("reason")
        assert "loss_ofd" in r["losses"] and all(math.isfinite(v) for v in r["losses"].values())
        assert r["backbone_params"] > 0 and r["with_grad"] == r["backbone_params"] and r["nonzero_grad"] > 0
        assert r["teacher_unchanged"]
        assert r[r["role"]].split(",")[0].endswith("=" + r["builder"])
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(passing[0]["losses"])
    student = next(r for r in segmentation if r["role"] == "student")
    assert set(student["losses"]) == {"loss_ce", "loss_aux", "loss_ofd"} and "aux_loss=True" in student["student"]


def test_a_builder_the_adapter_refuses_is_a_failure_with_its_reason(task_caches):
    failed = [r for r in zoo_sweep.read_task_cache(task_caches[0]) if r["builder"] == "no_such_detector"]
    assert [r["role"] for r in failed] == ["teacher", "student"]
    for r in failed:
        assert r["status"] == "fail" and r["stage"] == "build" and "\n" not in r["reason"]
        assert r["reason"].startswith("ValueError: unknown model name 'no_such_detector'")
        assert r[r["role"]] == "name=no_such_detector"


def test_cached_task_checks_are_not_rerun_and_failures_retry(task_caches, tmp_path, monkeypatch):
    path = tmp_path / "detection.jsonl"
    path.write_text(task_caches[0].read_text())
    calls = []
    monkeypatch.setattr(zoo_sweep, "check_task",
                        lambda section, builder, role, record: calls.append((builder, role)) or record.update(status="ok"))
    builders = ["fasterrcnn_mobilenet_v3_large_fpn", "no_such_detector"]
    zoo_sweep.run_task(zoo_sweep.DETECTION, path, timeout=300, builders=builders)
    assert calls == []
    zoo_sweep.run_task(zoo_sweep.DETECTION, path, timeout=300, builders=builders, retry_failed=True)
    assert calls == [("no_such_detector", "teacher"), ("no_such_detector", "student")]
    records = zoo_sweep.read_task_cache(path)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)


def test_task_report_counts_and_orders_rows_from_the_cache():
    section = zoo_sweep.DETECTION._replace(builders=lambda: ["b_detector", "a_detector"])
    records = [
        dict(builder="a_detector", role="student", teacher="name=small", student="name=a_detector", stage="build",
             status="fail", reason="ValueError: a | b", seconds=0.1),
        dict(builder="a_detector", role="teacher", teacher="name=a_detector", student="name=small", stage="step",
             status="ok", losses=dict(loss_ofd=2.5, loss_classifier=1.0), backbone_params=3, with_grad=3,
             nonzero_grad=2, seconds=1.5),
        dict(builder="b_detector", role="student", stage="build", status="fail", reason="TypeError: no", seconds=0.2),
    ]
    lines = zoo_sweep.task_report(section, records)
    assert lines[0] == "## Detection: every torchvision detector as teacher and as student (1/3 pass)"
    assert "Passing as teacher 1/1, as student 0/2." in lines[2]
    rows = [line for line in lines if line.startswith("| ") and "_detector |" in line]
    assert [row.split(" | ")[:2] for row in rows] == [["| b_detector", "student"], ["| a_detector", "teacher"],
                                                      ["| a_detector", "student"]]
    assert "| ok | ofd 2.5, classifier 1 | 3 (2) / 3 | 1.5 |" in rows[1]
    assert "fail at build: ValueError: a \\| b" in rows[2] and rows[2].count(" | ") == 7


def test_detection_only_runs_that_section_alone_and_the_report_keeps_each_section(tmp_path, monkeypatch):
    sections = tuple(s._replace(builders=(lambda: ["x", "y"])) for s in zoo_sweep.TASK_SECTIONS)
    monkeypatch.setattr(zoo_sweep, "TASK_SECTIONS", sections)
    calls = []

    def fake(section, builder, role, record):
        calls.append((section.name, builder, role))
        record.update(status="ok" if builder == "x" else "fail", reason="RuntimeError: y")

    monkeypatch.setattr(zoo_sweep, "check_task", fake)
    caches = {name: tmp_path / f"{name}.jsonl" for name in ("sweep", "pairs", "detection", "segmentation")}
    paths = ["--cache", str(caches["sweep"]), "--pairs-cache", str(caches["pairs"]), "--detection-cache",
             str(caches["detection"]), "--segmentation-cache", str(caches["segmentation"]), "--out", str(tmp_path / "zoo.md")]
    assert zoo_sweep.main(["--detection-only"] + paths) == 0
    assert calls == [("detection", "x", "teacher"), ("detection", "x", "student"), ("detection", "y", "teacher"),
                     ("detection", "y", "student")]
    assert [name for name, path in caches.items() if path.exists()] == ["detection"]
    text = (tmp_path / "zoo.md").read_text()
    assert "## Detection: every torchvision detector as teacher and as student (2/4 pass)" in text
    assert "--detection-only" in text and "## Segmentation" not in text

    assert zoo_sweep.main(["--segmentation-only"] + paths) == 0
    assert zoo_sweep.main(["--report-only"] + paths) == 0
    assert len(calls) == 8
    text = (tmp_path / "zoo.md").read_text()
    assert "(2/4 pass)" in text.split("## Segmentation")[0] and "(2/4 pass)" in text.split("## Segmentation")[1]


# ------------------------------------------------------------------------------------------------
# Raising --max-params: models skipped under the lower bound run again, and the report says so until then.

def test_models_skipped_under_a_lower_bound_run_again_and_are_reported_apart(tmp_path):
    cache = tmp_path / "sweep.jsonl"
    records = [dict(zoo="timm", name="small", status="ok", params=5e6, taps_ok=True, distil_ok=True),
               dict(zoo="timm", name="mid", status="skipped", params=50e6, reason="50.0M parameters > bound"),
               dict(zoo="timm", name="huge", status="skipped", params=300e6, reason="300.0M parameters > bound")]
    cache.write_text("".join(json.dumps(r) + "\n" for r in records))
    names = [("timm", "small"), ("timm", "mid"), ("timm", "huge")]
    assert zoo_sweep.sweep_todo(names, cache, 30e6) == []
    assert zoo_sweep.sweep_todo(names, cache, 100e6) == [("timm", "mid")]
    out = tmp_path / "zoo.md"
    zoo_sweep.write_report(zoo_sweep.read_cache(cache), out, 100e6)
    assert "1/1 pass" in out.read_text() and "1 skipped by size; 1 within the bound not run yet" in out.read_text()
    zoo_sweep.write_report(zoo_sweep.read_cache(cache), out, 30e6)
    assert "2 skipped by size\n" in out.read_text()


def _killed_on_second(zoo, name, max_params, cap, record):
    """A model check whose process is killed on the model named 'second', as the OOM killer does."""
    if name == "second":
        os.kill(os.getpid(), signal.SIGKILL)
    record.update(status="ok", params=1)


def test_a_worker_killed_mid_check_fails_its_model_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "tools"))
    cache = tmp_path / "sweep.jsonl"
    names = [("timm", "first"), ("timm", "second"), ("timm", "third")]
    zoo_sweep.run_sweep(names, cache, workers=1, max_params=1e9, cap=224, timeout=60, check=_killed_on_second)
    records = {r["name"]: r for r in zoo_sweep.read_cache(cache)}
    assert records["first"]["status"] == records["third"]["status"] == "ok"
    assert records["second"]["status"] == "fail"
    assert records["second"]["reason"].startswith("worker process died: SIGKILL (the kernel's out-of-memory killer")


def _reports_then_dies(todo, current, tasks, results, max_params, cap, timeout, check):
    """A worker killed right after it sent its record, before it took the next model."""
    index = tasks.get()
    current.value = index
    zoo, name = todo[index]
    results.put(dict(zoo=zoo, name=name, status="ok", params=1))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_record_sent_before_the_worker_died_is_kept_not_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo_sweep, "_worker", _reports_then_dies)
    cache = tmp_path / "sweep.jsonl"
    zoo_sweep.run_sweep([("timm", "first"), ("timm", "second")], cache, workers=1, max_params=1e9, cap=224,
                        timeout=60)
    lines = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [(r["name"], r["status"]) for r in lines] == [("first", "ok"), ("second", "ok")]
