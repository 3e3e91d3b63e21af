"""``python -m training {preview,train,evaluate,predict,profile} ...``"""

from __future__ import annotations

import argparse
import os
import sys

from inference.registry import ARCHITECTURES
from inference.cards import PREPROCESSING_CHOICES, RESIZE_CHOICES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _threshold(value: str) -> str:
    if value.lower() == "youden":
        return "youden"
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError("use youden or a number between 0 and 1")
    return value


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _dataset_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("dataset")
    group.add_argument("--data", required=True,
                       help="dataset folder: one subfolder per class (COVID, non-COVID, "
                            "Normal, COVID/images, ...)")
    group.add_argument("--limit-per-class", type=_positive, default=None, metavar="N",
                       help="keep the first N images of each class folder (natural order)")
    group.add_argument("--map-class", action="append", default=None,
                       metavar="FOLDER=CLASS",
                       help="also use FOLDER as COVID or NonCOVID, e.g. "
                            "'Lung_Opacity=NonCOVID' (repeatable)")
    return parent


def _split_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("split")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--val-fraction", type=float, default=0.15)
    group.add_argument("--test-fraction", type=float, default=0.15)
    group.add_argument("--group-regex", default=None, metavar="REGEX",
                       help="keep images whose relative path gives the same match "
                            "(first group, or whole match) on one side of the split, "
                            "e.g. a patient id")
    return parent


def _add_preview(commands, data) -> None:
    preview = commands.add_parser("preview", parents=[data],
                                  help="count images per class and draw a sample grid")
    preview.add_argument("--output", default="preview.png", help="grid PNG to write")
    preview.add_argument("--samples", type=_positive, default=8, help="images per class")
    preview.add_argument("--seed", type=int, default=0)


def _add_train(commands, data, split, archs: list[str]) -> None:
    train = commands.add_parser("train", parents=[data, split],
                                help="fine-tune an ImageNet CNN and write model + card")
    train.add_argument("--modality", required=True, choices=["ct", "xray", "cxr"])
    train.add_argument("--arch", required=True, choices=archs)
    train.add_argument("--weights", default="imagenet",
                       help="imagenet (downloaded by Keras), none, or a local weights file "
                            "for the base without its top")
    train.add_argument("--epochs", type=_positive, default=20,
                       help="epochs in all, both phases (default 20)")
    train.add_argument("--head-epochs", type=_positive, default=5,
                       help="of which the first train the head only (default 5)")
    train.add_argument("--batch-size", type=_positive, default=32)
    train.add_argument("--learning-rate", type=float, default=1e-3, help="head phase")
    train.add_argument("--fine-tune-learning-rate", type=float, default=1e-5)
    train.add_argument("--fine-tune", choices=["top", "all"], default="top",
                       help="thaw the base's top blocks (default) or all of it in phase 2")
    train.add_argument("--patience", type=_positive, default=3,
                       help="early stopping on validation loss, best weights kept")
    train.add_argument("--threshold", type=_threshold, default="0.5",
                       help="decision threshold: a number, or youden (chosen on validation)")
    train.add_argument("--deterministic", action="store_true",
                       help="same seed, data and machine give the same weights, bit for "
                            "bit (TensorFlow's op determinism; slower on a GPU)")
    _add_train_outputs(train)


def _add_train_outputs(train) -> None:
    """What ``train`` feeds the model and where it writes."""
    train.add_argument("--input-size", type=_positive, default=None, metavar="PIXELS",
                       help="square input side (default: the architecture's, 224)")
    train.add_argument("--preprocessing", choices=PREPROCESSING_CHOICES, default="rescale",
                       help="rescale = RGB / 255 as published; imagenet = the "
                            "architecture's preprocess_input")
    train.add_argument("--resize", choices=RESIZE_CHOICES, default="bilinear")
    train.add_argument("--cache", default="memory",
                       help="memory, none, or a folder for tf.data cache files")
    train.add_argument("--output", default="models", metavar="MODEL_DIR",
                       help="model folder; writes <arch>/<ARCH>_<CT|CXR>_model.h5 + .json")
    train.add_argument("--report", default=None, metavar="DIR",
                       help="also write the test-set report and plots here")
    train.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                       help="Keras progress output")
    train.add_argument("--no-quantize", dest="quantize", action="store_false",
                       help="skip the INT8 graph (NNCF, calibrated and judged on the "
                            "validation split; written beside the model when it agrees)")


def _add_evaluate(commands, data, archs: list[str]) -> None:
    evaluate = commands.add_parser("evaluate", parents=[data],
                                   help="write report.json and plots for a model file")
    evaluate.add_argument("--model", required=True, help="the .h5 file (card read beside it)")
    evaluate.add_argument("--report", required=True, metavar="DIR")
    evaluate.add_argument("--arch", choices=archs, default=None,
                          help="when the file name does not say")
    evaluate.add_argument("--modality", choices=["ct", "xray", "cxr"], default=None)
    evaluate.add_argument("--subset", choices=["auto", "all", "test"], default="auto",
                          help="test: the held-out split recorded in the card; auto: test "
                               "when the card records one, else all images")
    evaluate.add_argument("--threshold", type=float, default=None,
                          help="override the card's threshold")
    evaluate.add_argument("--batch-size", type=_positive, default=32)


def _add_predict(commands, archs: list[str]) -> None:
    predict = commands.add_parser("predict", help="score files and folders like the app")
    predict.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR")
    predict.add_argument("--modality", required=True)
    predict.add_argument("--model", default="all",
                         help=f"{', '.join(archs)} or all (default)")
    predict.add_argument("--model-dir", default=os.environ.get("FLASK_MODEL_DIR", "models"))
    predict.add_argument("--csv", default=None, help="write rows here instead of stdout")
    predict.add_argument("--batch-size", type=_positive, default=16)
    predict.add_argument("--no-progress", action="store_true")


def _add_profile(commands, data, archs: list[str]) -> None:
    profile = commands.add_parser(
        "profile", parents=[data],
        help="write the feature profile the app's out-of-distribution check reads")
    profile.add_argument("--model", required=True, help="the .h5 file (card read beside it)")
    profile.add_argument("--arch", choices=archs, default=None,
                         help="when the file name does not say")
    profile.add_argument("--modality", choices=["ct", "xray", "cxr"], default=None)
    profile.add_argument("--held-out", type=float, default=0.25, metavar="SHARE",
                         help="share of the images held out to set the warning threshold "
                              "(default 0.25)")
    profile.add_argument("--seed", type=int, default=42)
    profile.add_argument("--batch-size", type=_positive, default=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate and batch-score the COVID / Non-COVID models.")
    commands = parser.add_subparsers(dest="command", required=True)
    data, split = _dataset_options(), _split_options()
    archs = sorted(ARCHITECTURES)
    _add_preview(commands, data)
    _add_train(commands, data, split, archs)
    _add_evaluate(commands, data, archs)
    _add_predict(commands, archs)
    _add_profile(commands, data, archs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "modality", None) == "cxr":
        args.modality = "xray"
    from inference.errors import ServiceError
    from inference.runners import ModelLoadError

    from .datasets import DatasetError

    try:
        if args.command == "preview":
            from .preview import run_preview

            run_preview(args)
        elif args.command == "train":
            from .train import run_training

            run_training(args)
        elif args.command == "evaluate":
            from .evaluate import run_evaluate

            run_evaluate(args)
        elif args.command == "profile":
            from .profile import run_profile

            run_profile(args)
        else:
            from .predict import run_predict

            run_predict(args)
    except (DatasetError, FileNotFoundError, ValueError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
