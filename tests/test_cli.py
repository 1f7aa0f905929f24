"""The ``overhaul-det`` command: one parser whose subcommands are the library's; the lab runs from tools/."""
from __future__ import annotations

import pytest

from overhaul_det import cli


def test_the_parser_has_the_librarys_subcommands_only():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(choices) == ["demo", "export", "make-scenes", "taps", "test", "train"]


@pytest.mark.parametrize("command", ["bench", "reproduce"])
def test_the_lab_is_no_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 2 and f"invalid choice: '{command}'" in capsys.readouterr().err


def test_make_scenes_options_reach_make_scenes(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("overhaul_det.datasets.scenes.make_scenes", lambda out, **kw: calls.append((out, kw)) or {})
    assert cli.main(["make-scenes", str(tmp_path), "--split", "val", "--num-images", "3", "--image-size", "64",
                     "--scale-range", "1", "1.5", "--format", "voc"]) == 0
    out, options = calls[0]
    assert out == str(tmp_path) and options == dict(split="val", num_images=3, image_size=64, min_objects=1,
                                                    max_objects=6, scale_range=(1.0, 1.5), seed=0, fmt=("voc",))


@pytest.mark.usefixtures("fashion_data")
def test_make_scenes_writes_the_split(tmp_path):
    assert cli.main(["make-scenes", str(tmp_path), "--split", "val", "--num-images", "2", "--image-size", "64",
                     "--format", "coco"]) == 0
    assert (tmp_path / "annotations" / "instances_val.json").is_file()
    assert len(list((tmp_path / "images" / "val").iterdir())) == 2


def test_a_bad_value_is_one_line_naming_the_subcommand(tmp_path, capsys):
    assert cli.main(["make-scenes", str(tmp_path), "--num-images", "0"]) == 2
    assert capsys.readouterr().err.startswith("overhaul-det make-scenes: error: ")


@pytest.mark.parametrize("interrupt_inside_formatter, status", [(True, 130), (False, 2)])
def test_ctrl_c_inside_mmengines_config_formatter_is_still_an_interrupt(monkeypatch, capsys, tmp_path,
                                                                         interrupt_inside_formatter, status):
    from overhaul_det import training

    class Runner:
        work_dir = str(tmp_path)

        def train(self):
            try:
                raise KeyboardInterrupt if interrupt_inside_formatter else ValueError("bad")
            except BaseException:  # as mmengine's Config.pretty_text does around yapf
                raise SyntaxError("Failed to format the config file, please check the syntax of: ...")

    monkeypatch.setattr(training, "load_config", lambda *args, **kwargs: None)
    monkeypatch.setattr(training, "build_runner", lambda *args, **kwargs: Runner())
    assert cli.main(["train", "any_config.py"]) == status
    err = capsys.readouterr().err
    assert ("interrupted; to continue from the last checkpoint" in err) == interrupt_inside_formatter
