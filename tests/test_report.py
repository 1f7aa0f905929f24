"""The tap report: the picture shows one panel per tap, with the block around it and its margins."""
from __future__ import annotations

import matplotlib.image
import pytest

from overhaul_det.cli import main as cli_main
from overhaul_det.report import _tap_context
from overhaul_det.taps import find_taps


def test_taps_png_has_one_panel_per_tap(tmp_path, capsys):
    path = tmp_path / "taps.png"
    assert cli_main(["taps", "resnet18", "--input-size", "64", "--png", str(path)]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == (round(3.4 * 4 * 120), round(3.4 * 120))


@pytest.mark.parametrize("source, name, expected", [
    ("tv", "resnet18", "layer1.1.bn2 -> [tap] -> ReLU"),
    ("timm", "vit_tiny_patch16_224", "block output (tokens), no activation after it"),
])
def test_tap_context_names_what_surrounds_the_tap(make_model, source, name, expected):
    size = (3, 64, 64) if source == "tv" else (3, 224, 224)
    assert _tap_context(find_taps(make_model(source, name), input_size=size)[0]) == expected
