"""Two fingerprint files side by side: which (task, method) moved, and the first tensor that differs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

from .spec import FORMAT

__all__ = ["read_fingerprints", "compare", "moved_pairs"]


def read_fingerprints(path: Path) -> Dict:
    """A fingerprint file, checked to be one (of this format).

    Args:
        path: a JSON file written by ``python tools/fingerprint.py``.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable fingerprint file ({error}); write one with "
                         "`python tools/fingerprint.py --out FILE`") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT or "fingerprints" not in data:
        raise ValueError(f"{path}: not a fingerprint file of format {FORMAT} (no 'format': {FORMAT} and "
                         "'fingerprints'); write it again with `python tools/fingerprint.py --out FILE`")
    return data


def _first_difference(a: Mapping[str, str], b: Mapping[str, str]) -> str:
    """The first tensor name (sorted) whose digest differs or that one side lacks."""
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            side = "" if name in a and name in b else f" (only in {'the first' if name in a else 'the second'})"
            return name + side
    return ""


def _same_metrics(a: Mapping, b: Mapping) -> bool:
    """Whether two runs' metrics agree, a NaN (a class no image shows) equal to a NaN."""
    return json.dumps(a.get("metrics"), sort_keys=True) == json.dumps(b.get("metrics"), sort_keys=True)


def _pairs(a: Mapping, b: Mapping) -> List[Tuple[str, str]]:
    return sorted({(t, m) for data in (a, b) for t, methods in data["fingerprints"].items() for m in methods})


def compare(a: Mapping, b: Mapping) -> List[Dict[str, object]]:
    """One row per (task, method) in either file: 'identical', 'moved' (with the first differing tensor and the
    count of those that moved), 'metrics moved' (the same weights, another evaluation), or 'missing' from one side.

    Args:
        a: a fingerprint file's content (``read_fingerprints``).
        b: another.
    """
    rows = []
    for task, method in _pairs(a, b):
        left = a["fingerprints"].get(task, {}).get(method)
        right = b["fingerprints"].get(task, {}).get(method)
        row: Dict[str, object] = dict(task=task, method=method)
        if left is None or right is None:
            row.update(status="missing", detail=f"only in the {'second' if left is None else 'first'} file")
        elif left["hash"] == right["hash"]:
            agree = _same_metrics(left, right)
            row.update(status="identical" if agree else "metrics moved", metrics_agree=agree)
        else:
            moved = sum(left["tensors"].get(k) != right["tensors"].get(k)
                        for k in set(left["tensors"]) | set(right["tensors"]))
            row.update(status="moved", first_tensor=_first_difference(left["tensors"], right["tensors"]),
                       tensors_moved=moved, tensors=len(set(left["tensors"]) | set(right["tensors"])),
                       metrics_agree=_same_metrics(left, right))
        rows.append(row)
    return rows


def moved_pairs(rows: List[Dict[str, object]]) -> List[Tuple[str, str]]:
    """The (task, method) rows of ``compare`` that are not identical."""
    return [(r["task"], r["method"]) for r in rows if r["status"] != "identical"]


def format_rows(rows: List[Dict[str, object]]) -> str:
    """``compare``'s rows as text, one line each."""
    lines = []
    for r in rows:
        line = f"{r['task']:<15} {r['method']:<9} {r['status']}"
        if r["status"] == "moved":
            line += f": {r['tensors_moved']}/{r['tensors']} tensors, first {r['first_tensor']}"
        elif r["status"] == "missing":
            line += f": {r['detail']}"
        if r.get("metrics_agree") is False:
            line += "; the last validation's metrics differ"
        lines.append(line)
    return "\n".join(lines)
