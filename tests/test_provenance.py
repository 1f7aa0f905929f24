"""Run stamps: code, config and weights hashes change with what a run executes, and nothing else; a record made
before fingerprints finds its fingerprint through the file of a checkout with its code hash."""
from __future__ import annotations

import subprocess

import torch

from overhaul_det import cpuinfo
from tools import provenance
from tools.provenance import (code_hash, config_hash, recorded_code_hash, recorded_fingerprint, stale_fields, stamp,
                              weights_hash)


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
    (tmp_path / "checkpoints" / "teacher.safetensors").write_bytes(b"weights")  # weights_hash's business
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "another_task.py").write_text("model = dict(alpha=1)\n")  # config_hash's business
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "plots.py").write_text("style = 'dashed'\n")  # the lab, outside the package
    assert code_hash(tmp_path) == before
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 2\n")
    assert code_hash(tmp_path) != before


def test_recorded_code_hash_leaves_out_what_older_checkouts_kept_in_the_package(tmp_path):
    """The hash older result files recorded skipped the lab those checkouts held in the package: an edit there
    keeps it, an edit of the library moves it (and ``code_hash`` sees both)."""
    (tmp_path / "overhaul_det" / "reproduce").mkdir(parents=True)
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 1\n")
    (tmp_path / "overhaul_det" / "reproduce" / "plots.py").write_text("style = 'solid'\n")
    recorded, full = recorded_code_hash(tmp_path), code_hash(tmp_path)
    (tmp_path / "overhaul_det" / "reproduce" / "plots.py").write_text("style = 'dashed'\n")
    assert recorded_code_hash(tmp_path) == recorded and code_hash(tmp_path) != full
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 2\n")
    assert recorded_code_hash(tmp_path) != recorded


def test_git_commit_is_modified_by_the_code_only(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "overhaul_det").mkdir()
    (tmp_path / "tools").mkdir()
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 1\n")
    (tmp_path / "tools" / "plots.py").write_text("style = 'solid'\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    clean = provenance.git_commit(tmp_path)
    assert len(clean) >= 7 and not clean.endswith("+modified")
    (tmp_path / "tools" / "plots.py").write_text("style = 'dashed'\n")
    (tmp_path / "README.md").write_text("a new table\n")
    assert provenance.git_commit(tmp_path) == clean
    (tmp_path / "overhaul_det" / "ofd.py").write_text("alpha = 2\n")
    assert provenance.git_commit(tmp_path) == clean + "+modified"


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
    record = stamp(tmp_path, config, options, threads=2, fingerprint="f1n6")
    assert record["config"] == config_hash(config, options)
    assert record["weights"] == weights_hash(tmp_path, config, options)
    assert (record["fingerprint"], record["threads"]) == ("f1n6", 2) and "code" not in record


def test_stale_fields_name_what_changed():
    recorded = dict(commit="a", fingerprint="x", config="y", weights="w", threads=1, torch="2.14", cpu="CPU A")
    assert stale_fields(recorded, dict(recorded, commit="b")) == []  # a commit that keeps the fingerprint
    assert stale_fields(recorded, dict(recorded, fingerprint="z")) == ["fingerprint"]
    assert stale_fields(recorded, dict(recorded, threads=2, torch="2.15")) == ["threads", "torch"]
    assert stale_fields(recorded, dict(recorded, cpu="CPU B")) == ["cpu"]  # another CPU rounds differently
    assert stale_fields(recorded, dict(recorded, weights="v")) == ["weights"]  # a retrained teacher
    assert stale_fields({}, recorded) == ["fingerprint", "config", "weights", "threads", "torch", "cpu"]


def test_a_record_made_before_fingerprints_takes_the_fingerprint_of_its_code():
    older = dict(format=1, recorded_code="c0de", fingerprints=dict(detection=dict(ofd=dict(hash="h-ofd"))))
    other = dict(format=1, recorded_code="beef", fingerprints=dict(detection=dict(ofd=dict(hash="h-other"))))
    legacy = dict(commit="a", code="c0de", config="y")
    assert recorded_fingerprint(legacy, "detection", "ofd", [other, older]) == "h-ofd"
    assert recorded_fingerprint(legacy, "detection", "baseline", [older]) is None  # not fingerprinted there
    assert recorded_fingerprint(legacy, "detection", "ofd", [other]) is None  # no file of its code: rerun
    assert recorded_fingerprint(dict(legacy, fingerprint="h-new"), "detection", "ofd", [older]) == "h-new"


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
