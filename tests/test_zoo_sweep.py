"""tools/zoo_sweep.py's teacher -> student pairs section on timm's tiny test models: one OFD step
per pair, cached and resumed, failures kept with a reason, and the report section."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("zoo_sweep", Path(__file__).parents[1] / "tools" / "zoo_sweep.py")
zoo_sweep = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(zoo_sweep)

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
