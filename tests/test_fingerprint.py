"""The training fingerprint's hash and comparison: exact bytes decide, the teacher does not count, a moved tensor is
named; fingerprint files are checked before they are read. (The trainings themselves: docs/fingerprints.md.)"""
from __future__ import annotations

import json

import pytest
import torch

from tools.fingerprints import compare, fingerprint_method, hash_state, main, moved_pairs
from tools.fingerprints.compare import read_fingerprints
from tools.fingerprints.spec import FORMAT


def _state():
    generator = torch.Generator().manual_seed(0)
    return {"student_model.conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
            "student_model.bn.num_batches_tracked": torch.tensor(6),
            "distiller.regressors.0.conv.weight": torch.randn(8, 4, 1, 1, generator=generator),
            "distiller.student.head.weight": torch.randn(2, 4, generator=generator),
            "teacher_model.conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "distiller.teacher.conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
            "distiller.margin_0": torch.randn(8, generator=generator)}


def _file(entries, **checkout):
    return {"format": FORMAT, **checkout, "fingerprints": entries}


def _entry(state, metrics=None):
    digest, tensors = hash_state(state)
    return {"hash": digest, "tensors": tensors, "metrics": metrics or {"accuracy/top1": 50.0}}


def test_the_hash_reads_the_student_and_regressors_in_key_order():
    state = _state()
    digest, tensors = hash_state(state)
    assert sorted(tensors) == ["distiller.regressors.0.conv.weight", "distiller.student.head.weight",
                               "student_model.bn.num_batches_tracked", "student_model.conv.weight"]
    assert hash_state(dict(reversed(list(state.items()))))[0] == digest  # insertion order does not count
    state["teacher_model.conv.weight"] += 1  # the teacher and the margins are not hashed
    state["distiller.teacher.conv.weight"] += 1
    state["distiller.margin_0"] += 1
    assert hash_state(state)[0] == digest


def test_one_ulp_in_one_tensor_moves_the_hash_and_names_the_tensor():
    before = _state()
    after = {k: v.clone() for k, v in before.items()}
    weight = after["distiller.regressors.0.conv.weight"].view(-1)
    weight[3] = torch.nextafter(weight[3], torch.tensor(float("inf")))
    rows = compare(_file({"classification": {"ofd": _entry(before)}}),
                   _file({"classification": {"ofd": _entry(after)}}))
    assert rows[0]["status"] == "moved" and rows[0]["tensors_moved"] == 1
    assert rows[0]["first_tensor"] == "distiller.regressors.0.conv.weight"
    assert moved_pairs(rows) == [("classification", "ofd")]


def test_dtype_and_shape_count_besides_the_bytes():
    state = {"student.w": torch.zeros(4)}
    assert hash_state(state)[0] != hash_state({"student.w": torch.zeros(2, 2)})[0]
    assert hash_state({"student.w": torch.zeros(4, dtype=torch.bfloat16)})[0] != hash_state(
        {"student.w": torch.zeros(4, dtype=torch.float16)})[0]


def test_compare_tells_identical_metrics_moved_and_missing():
    same = _entry(_state())
    first = _file({"detection": {"baseline": same, "ofd": same}, "segmentation": {"ofd": same}})
    second = _file({"detection": {"baseline": same, "ofd": dict(same, metrics={"coco/bbox_mAP": 0.1})}})
    status = {(r["task"], r["method"]): r["status"] for r in compare(first, second)}
    assert status == {("detection", "baseline"): "identical", ("detection", "ofd"): "metrics moved",
                      ("segmentation", "ofd"): "missing"}


def test_a_nan_metric_agrees_with_itself():
    """A class no validation image shows has a NaN IoU; the same NaN on both sides is no change."""
    entry = _entry(_state(), {"seg/IoU.Dress": float("nan"), "seg/mIoU": 0.25})
    written = json.loads(json.dumps(_file({"segmentation": {"ofd": entry}})))
    assert compare(written, _file({"segmentation": {"ofd": entry}}))[0]["status"] == "identical"
    other = dict(entry, metrics={"seg/IoU.Dress": 0.0, "seg/mIoU": 0.25})
    assert compare(written, _file({"segmentation": {"ofd": other}}))[0]["status"] == "metrics moved"


def test_a_file_that_is_no_fingerprint_file_is_refused_by_name(tmp_path):
    path = tmp_path / "results_classification.json"
    path.write_text(json.dumps({"task": "classification", "results": []}))
    with pytest.raises(ValueError, match="results_classification.json: not a fingerprint file"):
        read_fingerprints(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable fingerprint file"):
        read_fingerprints(path)


def test_compare_on_the_command_line_exits_1_when_a_fingerprint_moved(tmp_path, capsys):
    entry = _entry(_state())
    moved = _state()
    moved["student_model.conv.weight"][0, 0, 0, 0] += 1e-3
    paths = {}
    for name, ofd in (("before", entry), ("same", entry), ("after", _entry(moved))):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(_file({"classification": {"baseline": entry, "ofd": ofd}})))
    assert main(["--compare", str(paths["before"]), str(paths["same"])]) == 0
    assert "identical: every fingerprint agrees" in capsys.readouterr().out
    assert main(["--compare", str(paths["before"]), str(paths["after"])]) == 1
    out = capsys.readouterr().out
    assert "classification  ofd       moved: 1/4 tensors, first student_model.conv.weight" in out
    assert "classification  baseline  identical" in out


@pytest.mark.parametrize("overrides, method", [({}, "ofd"), ({"model.ofd.alpha": 0}, "baseline"),
                                               ({"model.ofd.alpha": 0, "model.kd_weight": 1.0}, "baseline"),
                                               ({"model.ofd.alpha": "auto"}, "ofd")])
def test_a_run_is_matched_to_the_fingerprinted_method_of_its_code_path(overrides, method):
    assert fingerprint_method(overrides) == method
