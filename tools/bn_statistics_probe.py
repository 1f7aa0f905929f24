"""Train one run of a classification config and, after every epoch, also test two copies of its student: one with
its BN running statistics re-estimated on training batches (as a "precise BN" step would), one that normalises each
test batch with that batch's own statistics.

The run itself trains and evaluates as without the probe: the copy is made, used and dropped between epochs, and
the RNG states are restored after it, so the run's own per-epoch metric equals that of a plain ``overhaul-det
train``. One line per epoch: the re-estimated copy's top-1 (mmengine logs the run's own), and the top-1 of a copy
that normalises each test batch with that batch's own statistics, as in training. For asking whether a fall of test
accuracy comes from stale running statistics (it would vanish in the first copy), from population statistics as
such (it would vanish in the second only) or from the network on unseen images (it would stay in both).

    OMP_NUM_THREADS=2 python tools/bn_statistics_probe.py \
        configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py --seed 10 --work-dir work_dirs/bn_probe
"""
from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.hooks import Hook
from torch.utils.data import DataLoader

from overhaul_det.training import build_runner, load_config


def _top1(model, loader) -> float:
    outputs = [out for batch in loader for out in model.val_step(batch)]
    return 100 * sum(int(o["pred_score"].argmax() == o["gt_label"]) for o in outputs) / len(outputs)


def _batch_norms(model) -> list:
    return [m for m in model.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


class ReestimatedBNProbe(Hook):
    """After each training epoch: top-1 of a student copy with BN statistics re-estimated on ``batches`` batches,
    and of one that normalises each test batch with its own statistics."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.top1: list = []
        self.batch_stats_top1: list = []

    def after_train_epoch(self, runner) -> None:
        rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
        model = copy.deepcopy(runner.model)
        for module in _batch_norms(model):
            # The traced training graph keeps the momentum it was traced with (0.1), so after 40 batches the start
            # weighs 0.9^40 = 1.5% and the last ~20 batches most.
            module.reset_running_stats()
        train = runner.train_dataloader
        loader = DataLoader(train.dataset, batch_size=train.batch_size, shuffle=False, collate_fn=train.collate_fn)
        model.train()
        with torch.no_grad():
            for _, batch in zip(range(self.batches), loader):
                model.student(model.data_preprocessor(batch, True)["inputs"])
        with torch.no_grad():
            self.top1.append(_top1(model.eval(), runner.val_dataloader))
            # the training graph: each test batch normalised with its own statistics
            self.batch_stats_top1.append(_top1(model.train(), runner.val_dataloader))
        runner.logger.info(f"epoch {runner.epoch + 1}: top-1 with BN statistics re-estimated on {self.batches} "
                           f"training batches {self.top1[-1]:.2f}; with each test batch's own statistics "
                           f"{self.batch_stats_top1[-1]:.2f}")
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batches", type=int, default=40, help="training batches the statistics are estimated on")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="config overrides, as overhaul-det train takes them: model.ofd.teacher_precision=float32")
    args = parser.parse_args()
    options = dict(args.cfg_options)
    cfg = load_config(args.config, {**options, "randomness.seed": args.seed})
    runner = build_runner(cfg, args.config, args.work_dir)
    probe = ReestimatedBNProbe(args.batches)
    runner.register_hook(probe, "LOWEST")
    runner.train()
    result = dict(seed=args.seed, options=options, reestimated_top1=[round(v, 2) for v in probe.top1],
                  batch_statistics_top1=[round(v, 2) for v in probe.batch_stats_top1])
    (Path(args.work_dir) / "bn_statistics_probe.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
