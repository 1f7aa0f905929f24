"""Bad input stops `overhaul-det train` with one line naming the file/key/value and the fix.

Each case writes a config over the demo config, runs the CLI in a work dir that already holds a
previous run's checkpoint, and checks the error line and that nothing already there changed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, NamedTuple

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import iteration_config
from overhaul_det.cli import main as cli_main


def _image_folder(root: Path, classes: int, per_class: int = 1, broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")
    if broken:
        (root / "class00" / "broken.jpg").write_bytes(b"not a jpeg at all " * 20)
    return root


def _folder_dataset(root: Path, num_classes: str = "num_classes=10", batch_size: int = 2) -> Dict[str, str]:
    return dict(data=f"batch_size={batch_size}, dataset=dict(_delete_=True, type='ImageFolderDataset', "
                     f"data_root={str(root)!r}, resize=32, crop=32, train=True, {num_classes})")


def _corrupt_image(tmp: Path) -> Dict[str, str]:
    return _folder_dataset(_image_folder(tmp / "data", classes=1, broken=True))


def _empty_class_folder(tmp: Path) -> Dict[str, str]:
    (tmp / "data" / "class00").mkdir(parents=True)
    return _folder_dataset(tmp / "data")


def _no_class_folders(tmp: Path) -> Dict[str, str]:
    (tmp / "data").mkdir()
    return _folder_dataset(tmp / "data")


def _zero_samples(tmp: Path) -> Dict[str, str]:
    return dict(data="batch_size=4, dataset=dict(num_samples=0)")


def _more_folders_than_classes(tmp: Path) -> Dict[str, str]:
    return _folder_dataset(_image_folder(tmp / "data", classes=12))


def _label_outside_num_classes(tmp: Path) -> Dict[str, str]:
    return _folder_dataset(_image_folder(tmp / "data", classes=12), num_classes="", batch_size=12)


def _teacher_keys_mismatch(tmp: Path) -> Dict[str, str]:
    """A DDP-saved teacher: every key carries a ``module.`` prefix."""
    path = tmp / "teacher.safetensors"
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    save_file({f"module.{k}": v for k, v in state.items()}, str(path))
    return dict(teacher=f"checkpoint={str(path)!r}")


def _teacher_of_another_architecture(tmp: Path) -> Dict[str, str]:
    path = tmp / "teacher.safetensors"
    save_file(timm.create_model("mobilenetv3_small_050", num_classes=10).state_dict(), str(path))
    return dict(teacher=f"checkpoint={str(path)!r}")


def _teacher_checkpoint_missing(tmp: Path) -> Dict[str, str]:
    return dict(teacher=f"checkpoint={str(tmp / 'nowhere.pth')!r}")


def _input_smaller_than_stride(tmp: Path) -> Dict[str, str]:
    return dict(model="ofd=dict(input_size=(3, 16, 16), teacher_input_size=(3, 64, 64))",
                data="batch_size=4, dataset=dict(resize=16, num_samples=8)")


def _data_smaller_than_stride(tmp: Path) -> Dict[str, str]:
    return dict(data="batch_size=4, dataset=dict(resize=16, num_samples=8)")


class Case(NamedTuple):
    setup: Callable[[Path], Dict[str, str]]  # config fragments: teacher=..., model=..., data=...
    message: str  # regex on the error line, after "overhaul-det train: error: "


CASES: Dict[str, Case] = {
    "corrupt image": Case(_corrupt_image,
                          r"cannot decode image \S+/class00/broken\.jpg: .*; remove or replace the file$"),
    "empty class folder": Case(_empty_class_folder,
                               r"ImageFolder \S+/data: Found no valid file for the classes class00\..*"
                               r"expected \S+/data/<class>/<image>$"),
    "no class folders": Case(_no_class_folders, r"ImageFolder \S+/data: Couldn't find any class folder in \S+/data"),
    "Fashion-MNIST num_samples=0": Case(_zero_samples,  # fashion_data's training split holds 300 images
                                        r"^num_samples=0; Fashion-MNIST has 300 images in this split$"),
    "more class folders than num_classes": Case(_more_folders_than_classes,
                                                r"\S+/data has 12 class folders but num_classes=10; raise num_classes"),
    "label >= num_classes": Case(_label_outside_num_classes,
                                 r"^label 1[01] is outside the model's 10 classes \(0\.\.9\); set model\.num_classes"),
    "teacher checkpoint keys mismatch": Case(_teacher_keys_mismatch,
                                             r"checkpoint \S+/teacher\.safetensors does not match resnet18: "
                                             r"\d+ missing keys \(e\.g\. .*\), \d+ unexpected keys .*checkpoint_prefix$"),
    "teacher checkpoint of another architecture": Case(_teacher_of_another_architecture,
                                                       r"checkpoint \S+/teacher\.safetensors does not match resnet18"),
    "teacher checkpoint missing": Case(_teacher_checkpoint_missing, r"checkpoint \S+/nowhere\.pth does not exist$"),
    "student input smaller than its stride": Case(_input_smaller_than_stride,
                                                  r"input size 16 px is smaller than the deepest stage stride \(32\) "
                                                  r"of MobileNetV3: .* Use an input of at least 32x32"),
    "data smaller than the stride, no ofd.input_size": Case(
        _data_smaller_than_stride, r"the student \(MobileNetV3\) got a batch of 16x16 px, smaller than the stride of "
                                   r"its deepest tap \(32\): resize the data to at least 32x32 px"),
}


def write_config(tmp: Path, teacher: str = "", model: str = "",
                 data: str = "batch_size=4, dataset=dict(num_samples=8)") -> str:
    """The demo config with a random-init teacher, 2 iterations, no validation, and the fragments."""
    return iteration_config(tmp / "bad_input_config.py", max_iters=2, extra=f"""
model = dict(teacher=dict(_delete_=True, name='resnet18', {teacher}), {model})
train_dataloader = dict({data})
default_hooks = dict(checkpoint=dict(interval=1, by_epoch=False), logger=dict(interval=1))
""")


def run_case(tmp: Path, case: Case, capsys) -> str:
    """Run the CLI on the case; return its one error line (without the command prefix)."""
    config = write_config(tmp, **case.setup(tmp))
    code = cli_main(["train", config, "--work-dir", str(tmp / "work")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-5:]
    prefix = "overhaul-det train: error: "
    assert err and err[-1].startswith(prefix), err[-5:]
    return err[-1][len(prefix):]


def _snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.usefixtures("fashion_data")
def test_bad_input_stops_with_one_clear_line(tmp_path, capsys, name):
    work = tmp_path / "work"
    work.mkdir()
    torch.save(dict(meta=dict(iter=3), state_dict={}), work / "iter_3.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_3.pth"))
    before = _snapshot(work)

    line = run_case(tmp_path, CASES[name], capsys)
    assert re.search(CASES[name].message, line), line
    after = _snapshot(work)
    assert {k: after.get(k) for k in before} == before, "a file already in the work dir changed"
