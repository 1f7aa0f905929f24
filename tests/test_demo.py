"""The demo's printed table: which teacher precision the OFD student trained with."""
from __future__ import annotations

from overhaul_det.demo import _table


def test_the_table_names_the_ofd_students_teacher_precision():
    results = [dict(method="baseline", top1=77.53, seconds=165.0, teacher=None),
               dict(method="ofd", top1=81.20, seconds=248.0, teacher="float32")]
    lines = _table(91.04, 6.0, results, trained=False).splitlines()
    assert lines[0].split() == ["model", "top-1", "(%)", "time", "(s)"]
    assert lines[2].split() == ["teacher", "resnet18", "(shipped,", "tested)", "91.04", "6"]
    assert lines[3].split() == ["baseline", "student", "77.53", "165"]
    assert lines[4].split() == ["ofd", "student", "(float32", "teacher)", "81.20", "248"]
