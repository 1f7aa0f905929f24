"""mmengine hooks: data-margin calibration before training."""
from __future__ import annotations

import logging
from typing import Optional

from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..distiller import FeatureDistiller
from ..registry import HOOKS

__all__ = ["DataMarginHook", "find_distiller"]

logger = logging.getLogger(__name__)


def find_distiller(model) -> Optional[FeatureDistiller]:
    """The FeatureDistiller inside a (possibly DDP-wrapped) task model, or None."""
    model = model.module if is_model_wrapper(model) else model
    return next((m for m in model.modules() if isinstance(m, FeatureDistiller)), None)


@HOOKS.register_module()
class DataMarginHook(Hook):
    """Before training, estimate data margins (taps with no BN) over ``num_batches`` train batches, each as the
    task model feeds the teacher (``teacher_batch``: a detector's transformed, teacher-normalised images).

    The margins are buffers, so they are saved in checkpoints; on resume they are not redone.
    """

    priority = "VERY_HIGH"

    def __init__(self, num_batches: int = 8) -> None:
        self.num_batches = num_batches

    def before_train(self, runner) -> None:
        distiller = find_distiller(runner.model)
        if distiller is None or bool(distiller.margins_calibrated):
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        preprocess = model.data_preprocessor
        teacher_batch = getattr(model, "teacher_batch", lambda inputs: inputs)

        def batches():
            for data in runner.train_dataloader:
                yield teacher_batch(preprocess(data, False)["inputs"])

        distiller.calibrate_margins(batches(), max_batches=self.num_batches)
        if get_world_size() > 1:
            for margin in distiller.margins:
                all_reduce(margin, op="mean")
        runner.logger.info(f"OFD data margins estimated from {self.num_batches} training batches per rank")
