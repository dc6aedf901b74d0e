"""Shared command-line plumbing: logging set-up and the flags every stage spells the same way."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepcovidxr import DISCLAIMER


def configure_logging(verbose: int = 0) -> None:
    """Log to stderr (stdout is for results); quiet TensorFlow's C++ start-up chatter."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    for noisy in ("PIL", "matplotlib", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # absl repeats Keras' advice against the HDF5 files the member contract requires.
    logging.getLogger("absl").setLevel(logging.ERROR)
    # TensorFlow counts traces across every member's own inference function and calls one trace
    # per member "excessive retracing"; each member is traced exactly once.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras warns that fit's default shuffle does not apply to tf.data, which we shuffle ourselves.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    # pydicom logs a traceback per failed decoder plugin; the stage reports the failure itself.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the script's docstring and whose epilog is the disclaimer."""
    return argparse.ArgumentParser(
        description=doc, epilog=DISCLAIMER, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeat for debug)")


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default, help=f"random seed for everything random (default {default})")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo files whose output already exists (default: skip them, so a rerun resumes)",
    )


def add_workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="parallel decode/encode threads (default: CPU cores, at most 8)",
    )


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="U-Net compute precision: auto = bfloat16 on CPUs with native bfloat16 (faster; the shipped U-Net was "
        "trained in mixed bfloat16), else float32",
    )


def add_ensemble_weight(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument(
        "-e",
        "--ensemble_weight",
        type=Path,
        default=None,
        help=f"ensemble_weights.pickle or .json{what} (default: the authors' published weights shipped here)",
    )


def add_members(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--members",
        nargs="+",
        default=(),
        help="only these members, e.g. res_224_crop dense_331_uncrop (their weights renormalised)",
    )


def add_tta(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-t",
        "--tta",
        type=int,
        nargs="?",
        const=10,
        default=0,
        help="test-time augmentation: average N augmented passes per member before weighting (bare -t: 10)",
    )


TRAINING_OPTIONS = (
    "epochs",
    "batch_size",
    "optimizer",
    "warmup_epochs",
    "class_weight",
    "oversample",
    "mixed_precision",
)


def add_training(p: argparse.ArgumentParser) -> None:
    """The member-training flags train.py and train_all.py share (TrainConfig fields of the same
    names; :func:`training_options` collects them)."""
    p.add_argument(
        "--epochs", type=int, default=50, help="most epochs per phase (default 50; early stopping ends sooner)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per step per GPU (default 16)")
    p.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="sgd: SGD with Nesterov momentum, as the original (default); adam: Adam, which trains "
        "randomly initialised backbones far more readily (momentum is then unused)",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=None,
        help="epochs before early stopping and the learning-rate plateau rule watch the validation AUC "
        "(default: 10 from random weights, 0 from pretrained ones)",
    )
    p.add_argument("--class-weight", action="store_true", help="weight the loss by inverse class frequency")
    p.add_argument("--oversample", action="store_true", help="draw training batches with balanced classes")
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="mixed_float16 on GPU, mixed_bfloat16 on CPU (weights stay float32)",
    )


def training_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in TRAINING_OPTIONS}


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def run_stage(stage: Callable[[], Any]) -> int:
    """Run a stage; print what it returns (its main output path) to stdout and map its result to
    an exit code. Expected failures (bad paths, bad options, unusable weights) become one clear
    log line and exit code 2 instead of a traceback."""
    log = logging.getLogger("deepcovidxr")
    try:
        result = stage()
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        log.error("%s", error)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished files are kept and a rerun resumes")
        return 130
    print(getattr(result, "report", result))
    return int(getattr(result, "exit_code", 0))
