"""Read a run's per-epoch validation metric back from mmengine's LocalVisBackend scalar log."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

__all__ = ["read_val_history"]


def read_val_history(work_dir: Path, key: str) -> List[float]:
    """Values of ``key`` after each validation, from the newest ``*/vis_data/scalars.json`` in ``work_dir``."""
    logs = sorted(Path(work_dir).glob("*/vis_data/scalars.json"))
    if not logs:
        raise FileNotFoundError(f"no */vis_data/scalars.json under {work_dir}; did the run validate?")
    values = [json.loads(line)[key] for line in logs[-1].read_text().splitlines() if key in json.loads(line)]
    if not values:
        raise KeyError(f"metric '{key}' not found in {logs[-1]}; check the evaluator's prefix")
    return values
