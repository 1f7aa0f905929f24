"""Kill and resume: SIGKILL at a random iteration, a kill mid-write, atomic checkpoint files."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.fileio import get_file_backend

from conftest import iteration_config
from overhaul_det.cli import main as cli_main
from overhaul_det.engine.checkpoint import load_checkpoint_file
from overhaul_det.engine import install
from overhaul_det.engine.fileio import AtomicLocalBackend
from overhaul_det.engine.resume import checkpoint_candidates, find_resume_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAX_ITERS = 6  # 20 images in batches of 4: the sampler starts its second epoch at iteration 6


def _write_config(tmp_path: Path, max_iters: int = MAX_ITERS, teacher_precision: str = "float32") -> str:
    """The demo config: random-init teacher, 20 augmented 32 px images, deterministic, no validation. The
    teacher's precision is fixed: 'auto' would be float32 in this process (conftest) but follow the CPU in a
    child process, and the killed run is a child."""
    return iteration_config(tmp_path / "resume_config.py", max_iters, extra=f"""
model = dict(ofd=dict(teacher_precision={teacher_precision!r}))
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(num_samples=20))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end={max_iters})]
default_hooks = dict(checkpoint=dict(interval=1, by_epoch=False, max_keep_ckpts=3), logger=dict(interval=1))
randomness = dict(seed=0, deterministic=True)
""")


def _state(path: Path) -> dict:
    return load_checkpoint_file(path)["state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _train_until_killed(config: str, work_dir: Path, kill_at: int, progress: str = r"Iter\(train\) \[\s*(\d+)/") -> str:
    """Run `overhaul-det train` in a child process and SIGKILL it once ``progress`` (a log pattern whose group
    is the iteration or epoch) reaches ``kill_at``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "overhaul_det.cli", "train", config, "--work-dir", str(work_dir)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log, deadline = [], time.monotonic() + 180
    try:
        for line in child.stdout:
            log.append(line)
            found = re.search(progress, line)
            if found and int(found.group(1)) >= kill_at:
                os.kill(child.pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(log[-20:])
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL, "".join(log[-30:])
    return "".join(log)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
@pytest.mark.parametrize("teacher_precision", ["float32", "bfloat16"])
def test_sigkill_at_random_iteration_then_resume_matches_uninterrupted(tmp_path, teacher_precision):
    config = _write_config(tmp_path, teacher_precision=teacher_precision)
    kill_at = random.randint(1, MAX_ITERS - 2)
    killed = tmp_path / "killed"
    _train_until_killed(config, killed, kill_at)
    for path in checkpoint_candidates(killed):
        load_checkpoint_file(path)  # every checkpoint left behind by the kill loads

    assert cli_main(["train", config, "--work-dir", str(killed), "--resume"]) == 0
    assert cli_main(["train", config, "--work-dir", str(tmp_path / "uninterrupted")]) == 0
    final = f"iter_{MAX_ITERS}.pth"
    assert load_checkpoint_file(killed / final)["meta"]["iter"] == MAX_ITERS
    _assert_same_weights(_state(killed / final), _state(tmp_path / "uninterrupted" / final))
    _assert_no_teacher_in_checkpoints_nor_missing_keys(killed)


def _assert_no_teacher_in_checkpoints_nor_missing_keys(work_dir: Path) -> None:
    """The checkpoints hold the teacher's digest, not the teacher (rebuilt from its file), and the resume
    logged no missing keys nor another teacher."""
    for path in checkpoint_candidates(work_dir):
        state = _state(path)
        assert "distiller.teacher_sha256" in state and any(k.startswith("distiller.student.") for k in state)
        assert not any(k.startswith("distiller.teacher.") for k in state), path
    logs = "".join(path.read_text() for path in work_dir.glob("*/*.log"))
    assert "resumed epoch" in logs
    assert "do not match exactly" not in logs and "another teacher" not in logs


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_data")
def test_sigkill_in_epoch_3_with_two_persistent_workers_then_resume_matches_uninterrupted(tmp_path):
    config = iteration_config(tmp_path / "workers_config.py", 1, extra="""
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=3)
train_dataloader = dict(batch_size=4, num_workers=2, persistent_workers=True, dataset=dict(num_samples=20))
default_hooks = dict(checkpoint=dict(interval=1, by_epoch=True, max_keep_ckpts=3), logger=dict(interval=1))
log_processor = dict(by_epoch=True)
randomness = dict(seed=0, deterministic=True)
model = dict(ofd=dict(teacher_precision='float32'))
""")
    killed = tmp_path / "killed"
    _train_until_killed(config, killed, 3, progress=r"Epoch\(train\)\s*\[(\d+)\]")
    assert (killed / "epoch_2.pth").is_file() and not (killed / "epoch_3.pth").exists()

    assert cli_main(["train", config, "--work-dir", str(killed), "--resume"]) == 0
    assert cli_main(["train", config, "--work-dir", str(tmp_path / "uninterrupted")]) == 0
    _assert_same_weights(_state(killed / "epoch_3.pth"), _state(tmp_path / "uninterrupted" / "epoch_3.pth"))
    _assert_no_teacher_in_checkpoints_nor_missing_keys(killed)


@pytest.mark.usefixtures("fashion_data")
def test_kill_mid_write_resumes_from_last_good_checkpoint(tmp_path):
    config = _write_config(tmp_path, max_iters=3)
    work = tmp_path / "work"
    assert cli_main(["train", config, "--work-dir", str(work)]) == 0
    expected = _state(work / "iter_3.pth")
    # what a kill while writing iter_3.pth looks like without atomic writes, plus a stale temporary file
    data = (work / "iter_3.pth").read_bytes()
    (work / "iter_3.pth").write_bytes(data[: len(data) // 2])
    (work / ".iter_3.pth.x1y2.tmp").write_bytes(data[:1000])
    assert (work / "last_checkpoint").read_text().strip().endswith("iter_3.pth")

    assert find_resume_checkpoint(str(work)) == str((work / "iter_2.pth").resolve())
    assert cli_main(["train", config, "--work-dir", str(work), "--resume"]) == 0
    _assert_same_weights(_state(work / "iter_3.pth"), expected)


def _fake_checkpoint(path: Path, iteration: int, mtime: float) -> Path:
    torch.save(dict(meta=dict(iter=iteration), state_dict=dict(w=torch.full((2,), float(iteration)))), path)
    os.utime(path, (mtime, mtime))
    return path


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def three_checkpoints(tmp_path):
    now = time.time()
    return [_fake_checkpoint(tmp_path / f"iter_{i}.pth", i, now - 100 + i) for i in (1, 2, 3)]


@pytest.mark.parametrize("last_checkpoint", [None, "", "   \n", "/nowhere/iter_9.pth", "iter_3.pth"],
                         ids=["missing", "empty", "blank", "dangling", "valid"])
def test_resume_candidate_from_last_checkpoint_record(tmp_path, three_checkpoints, last_checkpoint):
    if last_checkpoint is not None:
        record = str(tmp_path / last_checkpoint) if last_checkpoint == "iter_3.pth" else last_checkpoint
        (tmp_path / "last_checkpoint").write_text(record)
    assert find_resume_checkpoint(str(tmp_path)) == str(three_checkpoints[2].resolve())


def test_resume_skips_truncated_and_unsafe_checkpoints(tmp_path, three_checkpoints):
    newest = three_checkpoints[2]
    newest.write_bytes(newest.read_bytes()[:100])
    marker = tmp_path / "code_ran"
    torch.save(dict(meta={}, state_dict={}, evil=_RunsCode(marker)), three_checkpoints[1])
    (tmp_path / "last_checkpoint").write_text(str(newest))
    assert find_resume_checkpoint(str(tmp_path)) == str(three_checkpoints[0].resolve())
    assert not marker.exists()


def test_resume_refuses_when_no_checkpoint_loads(tmp_path, three_checkpoints):
    for path in three_checkpoints:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"no checkpoint in .* loads \(iter_3\.pth: .*move them away"):
        find_resume_checkpoint(str(tmp_path))


def test_resume_with_nothing_to_resume_starts_over(tmp_path):
    assert find_resume_checkpoint(str(tmp_path)) is None


def test_resume_with_nothing_to_resume_says_so(tmp_path, caplog):
    from mmengine.config import Config

    from overhaul_det.engine.resume import prepare_resume

    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from=None))
    with caplog.at_level("WARNING", logger="overhaul_det.engine.resume"):
        prepare_resume(cfg)
    assert f"--resume: no checkpoint in {tmp_path} yet; training starts from the beginning" in caplog.text
    assert cfg.resume is False and cfg.load_from is None


@pytest.mark.usefixtures("fashion_data")
def test_sigint_stops_with_a_one_line_hint_to_resume(tmp_path):
    config = _write_config(tmp_path, max_iters=200)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "overhaul_det.cli", "train", config, "--work-dir", str(tmp_path / "work")]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in child.stdout:
        if re.search(r"Iter\(train\) \[\s*2/", line):
            child.send_signal(signal.SIGINT)
            break
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (f"overhaul-det train: interrupted; to continue from the last checkpoint in "
                                            f"{tmp_path / 'work'}, run the same command with --resume")


WRITER = """
import sys
from mmengine.fileio import get_file_backend
from overhaul_det.engine import install
install()
path, size = sys.argv[1], int(sys.argv[2])
backend = get_file_backend(path)
print(type(backend).__name__, flush=True)
while True:
    for byte in (b"A", b"B"):
        backend.put(byte * size, path)
"""


def test_checkpoint_writes_go_through_the_atomic_backend(tmp_path):
    install()
    assert isinstance(get_file_backend(str(tmp_path / "iter_1.pth")), AtomicLocalBackend)


def test_sigkill_during_put_leaves_old_or_new_file_whole(tmp_path):
    target, size = tmp_path / "iter_1.pth", 16 * 2**20
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(size)], stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert child.stdout.readline().strip() == "AtomicLocalBackend"
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(random.uniform(0.05, 0.5))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    data = target.read_bytes()
    assert len(data) == size and data in (b"A" * size, b"B" * size)


def test_failed_put_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "iter_1.pth"
    backend = AtomicLocalBackend()
    backend.put(b"old", target)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        backend.put(b"new" * 1000, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["iter_1.pth"]
