"""Reproduce the comparison of methods over seeds, per task (``python tools/reproduce.py``; see ``cli.py``):
``methods`` (what runs), ``runs`` (training them), ``report`` (tables), ``plots``."""
from .cli import main
from .methods import ABLATIONS, METHODS, TASK_ABLATIONS, TASKS, split_teacher_precision, with_teacher_precision
from .report import collect_task
from .runs import run_task

__all__ = ["TASKS", "METHODS", "ABLATIONS", "TASK_ABLATIONS", "collect_task", "main", "run_task",
           "split_teacher_precision", "with_teacher_precision"]
