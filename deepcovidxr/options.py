"""The options several stages share, declared once: the same flag means the same thing in every
script. Each function returns a fresh dataclass field (a field object cannot serve two classes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deepcovidxr.backbones import NAMES
from deepcovidxr.config import at_least, exists, option

INFERENCE_PRECISIONS = ("auto", "float32", "mixed")
TRAINING_PRECISIONS = ("float32", "mixed")


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _precision(text: str) -> str:
    # "bfloat16" was this flag's spelling of mixed precision before the flags were merged.
    return "mixed" if text == "bfloat16" else text


def seed(default: int = 0) -> Any:
    return option("--seed", help="random seed for everything random", default=default)


def overwrite() -> Any:
    return option(
        "--overwrite",
        help="redo files whose output already exists (default: skip them, so a rerun resumes)",
        default=False,
    )


def workers() -> Any:
    return option(
        "--workers",
        help="parallel decode/encode threads (default: CPU cores, at most 8)",
        default_factory=default_workers,
        check=at_least(1),
    )


def batch_size(default: int = 16, what: str = "images per forward pass") -> Any:
    return option("--batch-size", help=what, default=default, check=at_least(1))


def inference_precision() -> Any:
    return option(
        "--precision",
        help="compute precision: auto = mixed bfloat16 on CPUs with native bfloat16 (faster; the shipped U-Net "
        "was trained in mixed bfloat16), else float32",
        default="auto",
        parse=_precision,
        choices=INFERENCE_PRECISIONS,
    )


def training_precision(default: str = "float32") -> Any:
    return option(
        "--precision",
        help="compute precision: mixed = mixed_float16 on GPU, mixed_bfloat16 on CPU (weights stay float32)",
        default=default,
        parse=_precision,
        choices=TRAINING_PRECISIONS,
    )


def unet() -> Any:
    return option(
        "-U",
        "--Unet",
        help="U-Net weights: our lung_unet.weights.h5 or the original imlab trained_model.hdf5 "
        "(default: the U-Net shipped with the package)",
        default=None,
        check=exists,
        show_default=False,
    )


def member_folder(required: bool = True) -> Any:
    return option(
        "-w",
        "--weight",
        help="folder holding the member files <Prefix>_<size>_up_<crop>.h5",
        required=required,
        default=None,
        check=exists,
        show_default=False,
    )


def ensemble_weight(what: str = "") -> Any:
    return option(
        "-e",
        "--ensemble_weight",
        help=f"ensemble_weights.pickle or .json{what} (default: the authors' published weights shipped here)",
        default=None,
        check=exists,
        show_default=False,
    )


def members(what: str = "only these members, e.g. res_224_crop dense_331_uncrop (their weights renormalised)") -> Any:
    return option("--members", help=what, default=(), show_default=False)


def tta() -> Any:
    return option(
        "-t",
        "--tta",
        help="test-time augmentation: average N augmented passes per member before weighting (bare -t: 10)",
        default=0,
        const=10,
        check=at_least(0),
    )


def shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N), 1 <= K <= N."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes K/N, e.g. 3/8, not {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def output(help: str = "output folder (created; must lie outside the input)", default: Path | None = None) -> Any:
    if default is None:
        return option("-o", "--output", help=help, required=True)
    return option("-o", "--output", help="output folder", default=default)


def model(*aliases: str) -> Any:
    return option("-m", *aliases, "--model", help="backbone", required=True, choices=NAMES)


def view_folder() -> Any:
    return option(
        "-p",
        "--path",
        help="folder holding Train/ and Validation/ (e.g. dataset/224/crop)",
        required=True,
        check=exists,
    )


def no_cache() -> Any:
    return option("--no-cache", help="do not cache decoded images in memory", default=True)
