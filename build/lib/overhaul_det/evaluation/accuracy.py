"""Top-k accuracy of class scores as an mmengine metric."""
from __future__ import annotations

from typing import Dict, List, Sequence

from mmengine.evaluator import BaseMetric

from ..registry import METRICS

__all__ = ["Accuracy"]


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent (``top1``, ``top5``) from ``pred_score``/``gt_label`` samples."""

    default_prefix = "accuracy"

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = "cpu", prefix=None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            score = sample["pred_score"].float().cpu()
            ranked = score.topk(min(max(self.topk), score.numel())).indices.tolist()
            self.results.append((ranked, int(sample["gt_label"])))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        total = len(results)
        return {f"top{k}": 100.0 * sum(label in ranked[:k] for ranked, label in results) / max(total, 1)
                for k in self.topk}
