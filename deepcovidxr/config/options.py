"""The options several stages share, declared once: the same flag means the same thing in every
script. Each function returns a fresh dataclass field (a field object cannot serve two classes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deepcovidxr.config.schema import at_least, exists, option
from deepcovidxr.contract.backbones import NAMES

INFERENCE_PRECISIONS = ("auto", "float32", "mixed")
TRAINING_PRECISIONS = ("auto", "float32", "mixed")
# The members' engines and precisions (deepcovidxr.runtime.engines.ENGINES / PRECISIONS; not imported here:
# engines needs numpy, and --help stays instant). "auto": the engine's default (engines.default_precision).
ENGINES = ("keras", "onnxruntime", "openvino")
DEFAULT_ENGINE = "openvino"
ENGINE_PRECISIONS = ("auto", "fp32", "bf16", "int8")
# predict.py's --precision before the engines (the U-Net's Keras compute policy): old spellings keep working.
PRECISION_ALIASES = {"float32": "fp32", "mixed": "bf16", "bfloat16": "bf16"}


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _precision(text: str) -> str:
    # "bfloat16" was this flag's spelling of mixed precision before the flags were merged.
    return "mixed" if text == "bfloat16" else text


def _engine_precision(text: str) -> str:
    return PRECISION_ALIASES.get(str(text), str(text))


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


def engine(default: str = DEFAULT_ENGINE) -> Any:
    return option(
        "--engine",
        help="what runs the members (and, on onnxruntime/openvino, the lung U-Net): openvino (default: fastest "
        "measured on CPU, bf16 on CPUs with avx512_bf16/AMX), onnxruntime, or keras (TensorFlow, as trained). "
        "Exports are built on first use and cached (--engine-cache)",
        default=default,
        choices=ENGINES,
    )


def engine_precision() -> Any:
    return option(
        "--precision",
        help="members' precision: auto = the engine's default (openvino: bf16 on CPUs with native bf16, else "
        "fp32; onnxruntime and keras: fp32), fp32, bf16 (openvino on avx512_bf16/AMX CPUs), int8 (onnxruntime "
        "or openvino, calibrated on --calibration images). The U-Net runs at fp32 or bf16 alike (int8: the "
        "engine's default). Older spellings: float32 = fp32, mixed or bfloat16 = bf16",
        default="auto",
        parse=_engine_precision,
        choices=ENGINE_PRECISIONS,
    )


def calibration(
    what: str = "folder of chest X-rays (not the ones predicted: refused if it is or overlaps the input) on which "
    "int8 members are calibrated; each is cropped and viewed like an input",
) -> Any:
    return option(
        "--calibration",
        help=f"{what}. Needed by --precision int8",
        default=None,
        check=exists,
        show_default=False,
    )


def engine_cache() -> Any:
    return option(
        "--engine-cache",
        help="folder for the exported members and U-Net (default: <members folder>/.engine_cache); entries are "
        "keyed by the model file's sha256, engine, precision and versions, and rebuilt when stale",
        default=None,
        show_default=False,
    )


def training_precision(default: str = "float32") -> Any:
    return option(
        "--precision",
        help="compute precision: mixed = mixed_float16 on GPU, mixed_bfloat16 on CPU (weights stay float32); "
        "auto = mixed on a GPU or a CPU with native bfloat16 (avx512_bf16/AMX), else float32 (emulated "
        "bfloat16 is slower than float32)",
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
