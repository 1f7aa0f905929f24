"""What each task runs: its config and metric, the methods and ablations as config overrides, and the names
of runs with a fixed teacher precision ('ofd, float32 teacher')."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from overhaul_det.teacher_mode import PRECISIONS

REPO = Path(__file__).resolve().parents[2]

# Methods a task runs only when --methods names them (in METHODS below).
CHANNELS_LAST_STUDENT = ["baseline, channels-last student", "ofd, channels-last student"]


def _epochs(epochs: int) -> Dict[str, object]:
    """Overrides that train the segmentation scenes schedule for ``epochs``: the loop, the poly decay's end and the
    checkpoint interval together."""
    return {"train_cfg.max_epochs": epochs, "param_scheduler.1.end": epochs,
            "default_hooks.checkpoint.interval": epochs}


# The baseline sweep of the segmentation recipe: each variant changes one thing of the shipped baseline (lr 0.05,
# head at 10x, background weight 0.1, 24 epochs over 2000 scenes).
SEGMENTATION_BASELINE_SWEEP: Dict[str, Dict] = {
    "baseline, lr 0.1": {"model.ofd.alpha": 0, "optim_wrapper.optimizer.lr": 0.1},
    "baseline, lr 0.02": {"model.ofd.alpha": 0, "optim_wrapper.optimizer.lr": 0.02},
    "baseline, head lr x1": {"model.ofd.alpha": 0, "optim_wrapper.paramwise_cfg.custom_keys.classifier.lr_mult": 1},
    "baseline, background weight 1": {"model.ofd.alpha": 0, "model.class_weight": None},
    "baseline, 16 epochs": {"model.ofd.alpha": 0, **_epochs(16)},
    "baseline, 32 epochs": {"model.ofd.alpha": 0, **_epochs(32)},
    "baseline, 48 epochs": {"model.ofd.alpha": 0, **_epochs(48)},
}

TASKS = {
    "classification": dict(
        config="configs/classification/ofd_resnet18-to-mobilenetv3_fashionmnist.py",
        metric="accuracy/top1", teacher_config="configs/classification/teacher_resnet18_fashionmnist.py",
        methods=["baseline", "kd", "ofd", "ofd+kd"], optional=CHANNELS_LAST_STUDENT),
    "detection": dict(
        config="configs/detection/ofd_frcnn_fashion_scenes.py", metric="coco/bbox_mAP",
        methods=["baseline", "ofd", "ofd, body+fpn"], optional=CHANNELS_LAST_STUDENT),
    "segmentation": dict(
        config="configs/segmentation/ofd_deeplabv3_fashion_scenes_pretrained.py", metric="seg/mIoU",
        methods=["baseline", "ofd"], optional=CHANNELS_LAST_STUDENT + list(SEGMENTATION_BASELINE_SWEEP)),
}


METHODS: Dict[str, Dict] = {
    "baseline": {"model.ofd.alpha": 0},
    "kd": {"model.ofd.alpha": 0, "model.kd_weight": 1.0},
    "ofd": {},
    "ofd+kd": {"model.kd_weight": 1.0},
    # detection: the teacher's FPN outputs tapped besides its body's stage ends, alpha chosen against the task loss
    "ofd, body+fpn": {"model.feature_levels": "body+fpn", "model.ofd.alpha": "auto"},
    # run only when named in --methods: the student's weights channels-last (faster on CPUs, other rounding)
    "baseline, channels-last student": {"model.ofd.alpha": 0, "model.student_channels_last": True},
    "ofd, channels-last student": {"model.student_channels_last": True},
    **SEGMENTATION_BASELINE_SWEEP,
}


ABLATIONS: Dict[str, Dict] = {
    "teacher BN eval": {"model.ofd.teacher_bn": "eval"},
    "post-ReLU position": {"model.ofd.position": "post"},
    "full L2 (not partial)": {"model.ofd.distance": "l2"},
    "no margin (identity teacher)": {"model.ofd.margin": "none"},
}


# Per task, the switches that --ablations runs: the paper's four on classification; on detection, the
# detector teacher's BN on batch statistics (as the classifier teacher needed on the scenes) and margins
# measured on the scenes instead of derived from the teacher's BN.
TASK_ABLATIONS: Dict[str, Dict[str, Dict]] = {
    "classification": ABLATIONS,
    "detection": {"teacher BN train": {"model.ofd.teacher_bn": "train"}, "data margins": {"model.ofd.margin": "data"}},
    "segmentation": {},
}


def distils_features(overrides: Dict) -> bool:
    """Whether a run with ``overrides`` has an OFD teacher (alpha 0 has none; KD's teacher is not OFD's)."""
    return overrides.get("model.ofd.alpha") != 0


def config_alpha(task: str) -> float:
    """The alpha of the task's config: the 'ofd' method's."""
    from mmengine.config import Config

    return Config.fromfile(str(REPO / TASKS[task]["config"])).model.ofd.alpha


def with_teacher_precision(name: str, overrides: Dict, precision: str) -> Tuple[str, Dict]:
    """Run ``name`` with its OFD teacher in ``precision``: renamed '<name>, <precision> teacher', the override
    added. 'auto', and a run without OFD (alpha 0; KD's teacher runs as it is), leave the run as it is."""
    if precision == "auto" or not distils_features(overrides):
        return name, overrides
    fixed = overrides.get("model.ofd.teacher_precision")
    if fixed is not None:
        if fixed != precision:
            raise ValueError(f"method {name!r} runs its teacher in {fixed}; drop it from --methods or use "
                             f"--teacher-precision {fixed}")
        return name, overrides
    return f"{name}, {precision} teacher", {**overrides, "model.ofd.teacher_precision": precision}


def split_teacher_precision(method: str) -> Tuple[str, str]:
    """('ofd+kd', 'float32') for 'ofd+kd, float32 teacher'; (method, 'auto') for a name without a precision."""
    for precision in PRECISIONS:
        suffix = f", {precision} teacher"
        if method.endswith(suffix):
            return method[: -len(suffix)], precision
    return method, "auto"


def is_alpha_run(method: str) -> bool:
    """Whether ``method`` is a run of the alpha sweep ('alpha 1e-3', 'alpha auto, bfloat16 teacher')."""
    return split_teacher_precision(method)[0].startswith("alpha ")


def check_methods(task: str, methods: Sequence[str]) -> None:
    """Refuse a method the task does not run (by default or when named), or a teacher precision spelled out for one without an OFD teacher."""
    known = TASKS[task]["methods"] + TASKS[task].get("optional", [])
    named = {m: split_teacher_precision(m) for m in methods}
    unknown = [m for m, (base, _) in named.items() if base not in known]
    if unknown:
        raise ValueError(f"methods {unknown} are not run for {task}; choose from {known}, each with an OFD teacher "
                         f"also as '<method>, <precision> teacher' (precisions: {', '.join(PRECISIONS[1:])})")
    no_teacher = [m for m, (base, precision) in named.items() if precision != "auto"
                  and not distils_features(METHODS[base])]
    if no_teacher:
        raise ValueError(f"methods {no_teacher} distil no features, so they have no OFD teacher to set the precision "
                         f"of; drop the precision from their names")


def alpha_runs(task: str, alphas: Sequence[str]) -> List:
    """('alpha A', overrides) per alpha in ``alphas`` ('auto' or a number); the config's own alpha is
    the 'ofd' method's run, so it is not trained twice."""
    own = config_alpha(task)
    runs = []
    for text in alphas:
        value = text if text == "auto" else float(text)
        if value != own:
            runs.append((f"alpha {text}", {"model.ofd.alpha": value}))
    return runs


def alpha_order(method: str) -> float:
    """Runs of the alpha sweep by alpha, 'auto' last; 0 for every other method."""
    if not method.startswith("alpha "):
        return 0.0
    value = method.split(" ", 1)[1]
    return float("inf") if value == "auto" else float(value)
