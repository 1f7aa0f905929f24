"""Run stamps: code and config hashes change with what a run executes, and nothing else."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import iteration_config
from overhaul_det import cpuinfo, provenance
from overhaul_det.provenance import code_hash, config_hash, stale_fields, stamp, weights_hash

REPO = Path(__file__).resolve().parents[1]


def test_code_hash_follows_the_code_only(tmp_path):
    (tmp_path / "overhaul_det").mkdir()
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 1\n")
    (tmp_path / "docs").mkdir()
    before = code_hash(tmp_path)
    (tmp_path / "docs" / "results.md").write_text("a new table\n")
    (tmp_path / "overhaul_det" / "__pycache__").mkdir()
    (tmp_path / "overhaul_det" / "__pycache__" / "ofd.cpython-311.pyc").write_bytes(b"\0")
    assert code_hash(tmp_path) == before
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "README.md").write_text("how the teacher was trained\n")
    assert code_hash(tmp_path) == before
    (tmp_path / "checkpoints" / "teacher.safetensors").write_bytes(b"weights")  # weights_hash's business
    assert code_hash(tmp_path) == before
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "another_task.py").write_text("model = dict(alpha=1)\n")  # config_hash's business
    assert code_hash(tmp_path) == before
    (tmp_path / "overhaul_det" / "reproduce").mkdir()
    (tmp_path / "overhaul_det" / "reproduce" / "plots.py").write_text("style = 'dashed'\n")  # starts and reports runs
    (tmp_path / "overhaul_det" / "bench").mkdir()
    (tmp_path / "overhaul_det" / "bench" / "run.py").write_text("repeats = 7\n")
    assert code_hash(tmp_path) == before
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 2\n")
    assert code_hash(tmp_path) != before


def test_git_commit_is_modified_by_the_hashed_code_only(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "overhaul_det" / "reproduce").mkdir(parents=True)
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 1\n")
    (tmp_path / "overhaul_det" / "reproduce" / "plots.py").write_text("style = 'solid'\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    clean = provenance.git_commit(tmp_path)
    assert len(clean) >= 7 and not clean.endswith("+modified")
    (tmp_path / "overhaul_det" / "reproduce" / "plots.py").write_text("style = 'dashed'\n")
    (tmp_path / "README.md").write_text("a new table\n")
    assert provenance.git_commit(tmp_path) == clean
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 2\n")
    assert provenance.git_commit(tmp_path) == clean + "+modified"


def _imported_package_modules(path: Path) -> set:
    """The package's modules that ``path`` imports anywhere in it (inside functions too), as file paths."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            parts = (*base, *(node.module or "").split(".")) if node.module else base
            found |= {(*parts, alias.name) for alias in node.names} | {tuple(parts)}
        elif isinstance(node, ast.Import):
            found |= {tuple(alias.name.split(".")) for alias in node.names}
    return {Path(*parts) for parts in found if parts and parts[0] == "overhaul_det"}


def _left_out(module: Path) -> bool:
    """Whether the module at ``module`` (a path without suffix: a package or a .py file) is outside the hash."""
    return provenance._outside_training(module) or provenance._outside_training(module.with_suffix(".py"))


def test_no_module_a_training_may_import_imports_one_left_out_of_the_code_hash():
    """Only the command line reaches reproduce, bench, demo and the taps report, from their own subcommands."""
    hashed = [f for f in provenance._code_files(REPO) if f.suffix == ".py" and f.name != "cli.py"]
    reaching = {f.relative_to(REPO).as_posix(): sorted(str(m) for m in _imported_package_modules(f) if _left_out(m))
                for f in hashed}
    assert not {f: m for f, m in reaching.items() if m}
    assert len(hashed) > 40  # the scan saw the package


def _modules_a_training_loads(config: str, work: Path) -> list:
    """The package's modules that ``overhaul-det train CONFIG`` has loaded when it exits, from a child process."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('MODULES', *sorted(m for m in sys.modules if m.startswith('overhaul_det'))))\n"
             "from overhaul_det.cli import main\n"
             f"sys.exit(main(['train', {config!r}, '--work-dir', {str(work)!r}]))\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next(line for line in done.stdout.splitlines() if line.startswith("MODULES")).split()[1:]


@pytest.mark.usefixtures("fashion_data")
def test_a_training_imports_nothing_left_out_of_the_code_hash(tmp_path):
    config = iteration_config(tmp_path / "one_iteration.py", max_iters=1,
                              extra="train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(num_samples=8))")
    modules = _modules_a_training_loads(config, tmp_path / "work")
    assert "overhaul_det.training" in modules
    assert not [m for m in modules if _left_out(Path(*m.split(".")))]


@pytest.mark.usefixtures("fashion_data")
def test_a_detection_training_imports_nothing_left_out_of_the_code_hash(tmp_path):
    from overhaul_det.datasets.scenes import make_scenes

    make_scenes(tmp_path / "scenes", "train", 4, 64, seed=0, fmt=("coco",))
    loader = f"batch_size=4, num_workers=0, persistent_workers=False, dataset=dict(data_root={str(tmp_path / 'scenes')!r}"
    config = tmp_path / "one_iteration.py"
    config.write_text(f"""_base_ = [{str(REPO / 'configs/detection/ofd_frcnn_fashion_scenes.py')!r}]
model = dict(min_size=64, max_size=64, ofd=dict(input_size=(3, 64, 64)), student=dict(box_batch_size_per_image=64))
train_dataloader = dict({loader}))
val_dataloader = dict({loader}, ann_file='annotations/instances_train.json', img_prefix='images/train'))
val_evaluator = dict(ann_file={str(tmp_path / 'scenes/annotations/instances_train.json')!r})
train_cfg = dict(max_epochs=1, val_begin=2)
""")
    modules = _modules_a_training_loads(str(config), tmp_path / "work")
    assert {"overhaul_det.tasks.detection", "overhaul_det.evaluation.coco_metric"} <= set(modules)
    assert not [m for m in modules if _left_out(Path(*m.split(".")))]


def test_weights_hash_follows_the_files_the_config_names(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    teacher = tmp_path / "checkpoints" / "teacher.safetensors"
    config = tmp_path / "run.py"
    config.write_text("model = dict(teacher=dict(checkpoint='checkpoints/teacher.safetensors'), layers=[1, 2])\n")
    missing = weights_hash(tmp_path, config, {})
    teacher.write_bytes(b"weights")
    present = weights_hash(tmp_path, config, {})
    (tmp_path / "checkpoints" / "other_task.safetensors").write_bytes(b"another teacher")
    assert weights_hash(tmp_path, config, {}) == present != missing
    teacher.write_bytes(b"retrained")
    assert weights_hash(tmp_path, config, {}) != present
    assert weights_hash(tmp_path, config, {"model.teacher.checkpoint": None}) == weights_hash(
        tmp_path, config, {"model.teacher.checkpoint": "x.txt"})


def test_config_hash_sees_bases_and_options(tmp_path):
    (tmp_path / "base.py").write_text("lr = 0.1\n")
    config = tmp_path / "run.py"
    config.write_text("_base_ = ['base.py']\nmodel = dict(alpha=1)\n")
    plain = config_hash(config, {})
    assert config_hash(config, {}) == plain
    assert config_hash(config, {"model.alpha": 2}) != plain
    (tmp_path / "base.py").write_text("lr = 0.2\n")
    assert config_hash(config, {}) != plain


def test_stamp_hashes_the_config_and_weights_as_the_single_functions_do(tmp_path):
    config = tmp_path / "run.py"
    config.write_text("model = dict(teacher=dict(checkpoint='t.safetensors'))\n")
    (tmp_path / "t.safetensors").write_bytes(b"weights")
    options = {"model.alpha": 3}
    record = stamp(tmp_path, config, options, threads=2, code="c0de")
    assert record["config"] == config_hash(config, options)
    assert record["weights"] == weights_hash(tmp_path, config, options)
    assert (record["code"], record["threads"]) == ("c0de", 2)


def test_stale_fields_name_what_changed():
    recorded = dict(commit="a", code="x", config="y", weights="w", threads=1, torch="2.14", cpu="CPU A")
    assert stale_fields(recorded, dict(recorded, commit="b")) == []  # a docs-only commit reruns nothing
    assert stale_fields(recorded, dict(recorded, threads=2, torch="2.15")) == ["threads", "torch"]
    assert stale_fields(recorded, dict(recorded, cpu="CPU B")) == ["cpu"]  # another CPU rounds differently
    assert stale_fields(recorded, dict(recorded, weights="v")) == ["weights"]  # a retrained teacher
    assert stale_fields({}, recorded) == ["code", "config", "weights", "threads", "torch", "cpu"]


def test_cpu_model_tells_apart_generations_that_share_a_name(monkeypatch):
    """Two "AMD EPYC" machines, AVX2 and AVX512, give other digits for one seed: the stamp must differ."""
    zen3 = {"model name": "AMD EPYC", "cpu family": "25", "model": "1"}
    monkeypatch.setattr(cpuinfo, "cpu_fields", lambda: zen3)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    older = provenance.cpu_model()
    monkeypatch.setattr(cpuinfo, "cpu_fields", lambda: dict(zen3, model="17"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    newer = provenance.cpu_model()
    assert older == "AMD EPYC (family 25, model 1; torch AVX2)"
    assert newer == "AMD EPYC (family 25, model 17; torch AVX512)"


def test_cpu_model_without_cpuinfo_still_names_the_kernels(monkeypatch):
    monkeypatch.setattr(cpuinfo, "cpu_fields", dict)
    monkeypatch.setattr(cpuinfo.platform, "processor", lambda: "arm")
    assert provenance.cpu_model() == f"arm (torch {torch.backends.cpu.get_cpu_capability()})"
