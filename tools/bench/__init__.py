"""Performance benchmark of OFD: what distillation adds to a student's training step.

Times, in one process and interleaved (each repeat runs every measurement once, in a fixed
order, so drifts hit all of them alike), after warm-up, as medians:
(a) the plain student's train step, (b) the teacher's forward to its last tap (no_grad),
(c) regressors + OFD loss forward/backward/step on captured features, (d) the full OFD step;
for classification also ``ofd_loss`` against ``ofd_loss_reference`` on the same tensors, a
plain model's eval forward against the same model with taps attached, (b) and (d) with a teacher
in each reduced precision asked for, the original OFD code's step, and on request (a) and (d)
with a channels-last or a ``torch.compile``'d student (compile time reported apart). Detection and
segmentation pairs (``task``) run (a)-(d) through their task adapters.
Steps named with ``--profile`` run a few more calls under ``torch.profiler``: their ops by self time.
Peak memory of (a) and (d) comes from a fresh subprocess per configuration on CPU (peak RSS)
or ``torch.cuda.max_memory_allocated``.

Modules, each importing only those listed before it: ``config`` (BenchConfig, defaults,
targets, validation), ``runtime`` (Runtime and the step builders), ``tasks`` (detection and
segmentation adapters), ``workload`` (models, data and steps of a configuration), ``memory``
(activation sizes, peak memory), ``profile`` (a step's ops under ``torch.profiler``), ``run`` (run_benchmark),
``report`` (format_table), ``cli``
(``python tools/benchmark.py``; also ``python -m tools.bench``).
"""
from .cli import main
from .config import BenchConfig, build_model
from .report import format_table
from .run import run_benchmark

__all__ = ["BenchConfig", "build_model", "run_benchmark", "format_table", "main"]
