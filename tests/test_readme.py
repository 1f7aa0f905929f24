"""README's Python example runs as written: one OFD training step of a timm pair."""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file

from overhaul_det.cli import main as cli_main
from overhaul_det.training import load_config
from overhaul_det.registry import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(section: str, language: str) -> list:
    """The ```language blocks of the README section titled ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def test_the_python_example_trains_the_student_and_its_regressors():
    (block,) = _blocks("Distil your own timm pair", "python")
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(block, str(README), "exec"), scope)
    distiller, student, teacher = scope["distiller"], scope["student"], scope["teacher"]
    assert torch.isfinite(scope["loss"]) and scope["losses"]["loss_ofd"] > 0
    assert float(distiller.alpha_auto) > 0, "alpha='auto' was not set by the first step"
    assert distiller.alpha == float(distiller.alpha_auto)  # the chosen number, no longer 'auto'
    trained = [*student.parameters(), *distiller.regressors.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert all(p.grad is None for p in teacher.parameters())


def test_the_config_example_loads_and_builds(tmp_path, monkeypatch):
    (block,) = _blocks("Via a config", "python")
    path = tmp_path / block.splitlines()[0].removeprefix("# ").split(",")[0]
    path.write_text(block)
    monkeypatch.chdir(tmp_path)
    save_file(torchvision.models.resnet50().state_dict(), "teacher.safetensors")
    cfg = load_config(str(path))
    model = MODELS.build(cfg.model)
    assert type(model.distiller.student).__name__ == "MobileNetV3"
    assert len(model.distiller.pairs) == 4


def test_the_taps_table_is_what_the_command_prints(capsys):
    (block,) = _blocks("Distil your own timm pair", "console")
    command, *printed = block.rstrip("\n").splitlines()
    assert cli_main(command.removeprefix("$ overhaul-det ").split()) == 0
    assert capsys.readouterr().out.rstrip("\n").splitlines() == printed
