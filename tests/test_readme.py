"""README's Python example runs as written: one OFD training step of a timm pair."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list:
    """The ```python blocks of the README section titled ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_the_python_example_trains_the_student_and_its_regressors():
    (block,) = _python_blocks("Distil your own timm pair")
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    distiller, student, teacher = scope["distiller"], scope["student"], scope["teacher"]
    assert torch.isfinite(scope["loss"]) and scope["losses"]["loss_ofd"] > 0
    assert float(distiller.alpha_auto) > 0, "alpha='auto' was not set by the first step"
    trained = [*student.parameters(), *distiller.regressors.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad is None for p in teacher.parameters())
