"""The ``overhaul-det`` command: train, test, export, taps, make-scenes, demo (one parser, one subcommand each)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

__all__ = ["main"]

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
DATA_ROOT_HELP = "the dataset folder: the config's top-level data_root, which every dataset and evaluator takes"


def _train(args: argparse.Namespace) -> int:
    from .training import build_runner, load_config

    cfg = load_config(args.config, args.cfg_options, args.data_root)
    runner = build_runner(cfg, args.config, args.work_dir, args.resume, args.amp, args.launcher, args.auto_scale_lr)
    try:
        runner.train()
    except (KeyboardInterrupt, SyntaxError) as error:
        if not _interrupted(error):
            raise
        sys.stderr.write(f"overhaul-det train: interrupted; to continue from the last checkpoint in {runner.work_dir}, "
                         "run the same command with --resume\n")
        return 130
    return 0


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` is Ctrl-C, or was raised while handling it: mmengine's ``Config.pretty_text`` (called to
    save a checkpoint) turns any exception in its formatter, Ctrl-C included, into a SyntaxError."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False


def _test(args: argparse.Namespace) -> int:
    from .training import build_test_runner, load_config

    cfg = load_config(args.config, args.cfg_options, args.data_root)
    runner = build_test_runner(cfg, args.config, args.checkpoint, args.work_dir, args.launcher)
    metrics = runner.test()
    for key, value in metrics.items():
        sys.stdout.write(f"{key}: {value}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_student

    out = export_student(args.checkpoint, args.out, prefix=args.prefix, dtype=args.dtype)
    sys.stdout.write(f"wrote {out}\n")
    return 0


def _taps(args: argparse.Namespace) -> int:
    from .report import taps_main

    return taps_main(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(work_dir=args.work_dir, epochs=args.epochs, retrain_teacher=args.retrain_teacher,
                    threads=args.threads)


def _make_scenes(args: argparse.Namespace) -> int:
    from .datasets.scenes import make_scenes

    written = make_scenes(args.out, split=args.split, num_images=args.num_images, image_size=args.image_size,
                          min_objects=args.min_objects, max_objects=args.max_objects,
                          scale_range=tuple(args.scale_range), seed=args.seed, fmt=tuple(args.fmt))
    for name, path in written.items():
        logging.getLogger(__name__).info("%s: %s", name, path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``overhaul-det`` parser: one subparser per command, each naming its handler in ``func``."""
    parser = argparse.ArgumentParser(prog="overhaul-det", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_test, _add_export, _add_taps, _add_make_scenes, _add_demo):
        add(sub)
    return parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    from mmengine.config import DictAction

    train = sub.add_parser("train", help="train from a config with mmengine's Runner")
    train.add_argument("config")
    train.add_argument("--work-dir")
    train.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config keys: a.b=1")
    train.add_argument("--data-root", help=DATA_ROOT_HELP)
    train.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    train.add_argument("--amp", action="store_true", help="mixed precision (bf16 autocast on CPU)")
    train.add_argument("--launcher", choices=LAUNCHERS, default="none")
    train.add_argument("--auto-scale-lr", action="store_true",
                       help="scale the learning rate by total batch / the config's auto_scale_lr.base_batch_size")
    train.set_defaults(func=_train)


def _add_test(sub: argparse._SubParsersAction) -> None:
    from mmengine.config import DictAction

    test = sub.add_parser("test", help="evaluate a checkpoint")
    test.add_argument("config")
    test.add_argument("checkpoint", help="a training checkpoint, or a student exported by `overhaul-det export`")
    test.add_argument("--work-dir")
    test.add_argument("--cfg-options", nargs="+", action=DictAction)
    test.add_argument("--data-root", help=DATA_ROOT_HELP)
    test.add_argument("--launcher", choices=LAUNCHERS, default="none")
    test.set_defaults(func=_test)


def _add_export(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write the student alone as a plain state_dict")
    export.add_argument("checkpoint")
    export.add_argument("--out", required=True, help="student.safetensors or student.pth")
    export.add_argument("--prefix", help="key prefix of the student in the checkpoint (detected if omitted)")
    export.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="store floating-point weights in this dtype (default: as trained)")
    export.set_defaults(func=_export)


def _add_taps(sub: argparse._SubParsersAction) -> None:
    taps = sub.add_parser("taps", help="print the OFD tap points of a timm/torchvision model")
    taps.add_argument("model")
    taps.add_argument("--input-size", type=int, default=224)
    taps.add_argument("--min-stride", type=int, default=4)
    taps.add_argument("--png", help="also draw the stages with the taps marked into this PNG (needs matplotlib)")
    taps.set_defaults(func=_taps)


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (``--threads``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1; give 1 or more")
    return value


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="teacher, baseline and OFD student on Fashion-MNIST")
    demo.add_argument("--work-dir", default="work_dirs/demo")
    demo.add_argument("--epochs", type=int, default=None)
    demo.add_argument("--retrain-teacher", action="store_true")
    demo.add_argument("--threads", type=_positive_int, default=None,
                      help="torch threads for the demo's trainings (default: torch's, all cores); "
                           "fewer on a shared machine")
    demo.set_defaults(func=_demo)


def _add_make_scenes(sub: argparse._SubParsersAction) -> None:
    from .datasets.scenes import CLI_SPLITS, FORMATS

    scenes = sub.add_parser("make-scenes", help="write Fashion-MNIST scenes as COCO/VOC datasets")
    scenes.add_argument("out", help="output folder (created if missing)")
    scenes.add_argument("--split", default="train", choices=CLI_SPLITS,
                        help="'train' uses Fashion-MNIST training items, the others its test items")
    scenes.add_argument("--num-images", type=int, default=200)
    scenes.add_argument("--image-size", type=int, default=128)
    scenes.add_argument("--min-objects", type=int, default=1)
    scenes.add_argument("--max-objects", type=int, default=6)
    scenes.add_argument("--scale-range", type=float, nargs=2, default=(0.8, 2.0), metavar=("LOW", "HIGH"))
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS), dest="fmt")
    scenes.set_defaults(func=_make_scenes)


def main(argv: Optional[List[str]] = None) -> int:
    """Run one ``overhaul-det`` subcommand; returns the exit status (2 for bad input, with its message).

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError, OSError, FloatingPointError, SyntaxError) as error:
        from .training import error_message

        sys.stderr.write(f"overhaul-det {args.command}: error: {error_message(error)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
