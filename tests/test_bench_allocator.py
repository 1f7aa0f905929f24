"""Freed memory kept by the benchmark process: the same allocation no longer faults its pages in again."""
import subprocess
import sys

import pytest

from tools.bench import BenchConfig, format_table, run_benchmark
from tools.bench import run as bench_run

TINY = dict(teacher="resnet18", student="mobilenet_v3_small", batch_size=2, input_size=32, repeats=2, warmup=0,
            loss_shape=(2, 8, 4, 4), rewrite_model="resnet18", measure_memory=False)

# Allocates and frees a 64 MiB tensor twelve times; prints the page faults of the last four allocations.
# (A kept heap can take a few rounds to hold a free block that size: Python's small objects split some.)
_LAST_ALLOCATION_FAULTS = """
import sys, torch
from tools.bench.allocator import keep_freed_memory, minor_faults
kept = sys.argv[1] == "keep" and keep_freed_memory()
faults = []
for _ in range(12):
    before = minor_faults()
    x = torch.ones(16 << 20)
    faults.append(minor_faults() - before)
    del x
print(int(kept), sum(faults[-4:]))
"""


def _last_allocations_faults(mode: str):
    out = subprocess.run([sys.executable, "-c", _LAST_ALLOCATION_FAULTS, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_freed_memory_is_reused_without_page_faults():
    kept, faults_kept = _last_allocations_faults("keep")
    returned, faults_returned = _last_allocations_faults("return")
    assert kept and not returned
    pages = (64 << 20) // 4096
    assert faults_returned >= 4 * pages * 0.9  # glibc's default: the block is mapped in afresh each time
    assert faults_kept < pages // 10


@pytest.mark.parametrize("mode", ["keep", "return"])
def test_the_run_records_its_freed_memory_and_the_page_faults_of_every_step(monkeypatch, mode):
    calls = []
    monkeypatch.setattr(bench_run, "keep_freed_memory", lambda: calls.append(1) or True)
    result = run_benchmark(BenchConfig(**TINY, freed_memory=mode))
    assert calls == ([1] if mode == "keep" else [])
    assert result["environment"]["freed_memory"] == mode
    for name in result["order"]:
        assert len(result["page_faults"][name]) == 2 and min(result["page_faults"][name]) >= 0
        assert result["median_page_faults"][name] == sum(result["page_faults"][name]) / 2
    table = format_table(result)
    assert "page faults" in table and ("kept by the process" if mode == "keep" else "glibc's default") in table


def test_an_unknown_freed_memory_mode_is_a_clear_error():
    from tools.bench.config import validate

    with pytest.raises(ValueError, match="freed_memory='free'; choose one of"):
        validate(BenchConfig(**TINY, freed_memory="free"))


def test_off_linux_freed_memory_is_left_to_the_platform(monkeypatch):
    from tools.bench import allocator

    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
