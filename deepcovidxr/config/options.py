"""The options several stages share, declared once: the same flag means the same thing in every
script. Each function returns a fresh dataclass field (a field object cannot serve two classes)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from deepcovidxr.config import precision
from deepcovidxr.config.checks import at_least, exists, open_unit_interval, positive
from deepcovidxr.config.schema import option
from deepcovidxr.contract.backbones import NAMES

# The members' engines (deepcovidxr.runtime.load.ENGINES; not imported here: the runtime needs
# numpy, and --help stays instant).
ENGINES = ("keras", "onnxruntime", "openvino")
DEFAULT_ENGINE = "openvino"


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def _optional_path(*flags: str, help: str) -> Any:
    """A file or folder that must exist when given; its default (None) is said in ``help``."""
    return option(*flags, help=help, default=None, check=exists, show_default=False)


def switch(flag: str, help: str) -> Any:
    """An off-by-default flag (``--keep-flagged``): given means on."""
    return option(flag, help=help, default=False)


def choice(flag: str, help: str, choices: tuple) -> Any:
    """One of ``choices``, the first by default."""
    return option(flag, help=help, default=choices[0], choices=choices)


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
    """--precision of the stages that run the lung U-Net on Keras (crop_img, build_dataset, visSample)."""
    return option(
        "--precision",
        help="the lung U-Net's precision: auto = bf16 (Keras mixed_bfloat16) on CPUs with native bf16 "
        "(avx512_bf16/AMX: faster, and the shipped U-Net was trained in mixed bfloat16), else fp32; fp32; "
        f"bf16. {precision.flag_help(precision.UNET)}",
        default="auto",
        parse=precision.parser(precision.UNET),
        choices=precision.accepted(precision.UNET),
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
    """--precision of the stages that run the members on an engine (predict, evaluate, ensemble)."""
    return option(
        "--precision",
        help="members' precision: auto = the engine's default (openvino: bf16 on CPUs with native bf16, else "
        "fp32; onnxruntime and keras: fp32), fp32, bf16 (openvino on avx512_bf16/AMX CPUs), int8 (onnxruntime "
        "or openvino, calibrated on --calibration images). The lung U-Net follows at fp32 or bf16 (auto and "
        f"int8: its own auto). {precision.flag_help(precision.ENGINE)}",
        default="auto",
        parse=precision.parser(precision.ENGINE),
        choices=precision.accepted(precision.ENGINE),
    )


def calibration(
    what: str = "folder of chest X-rays (not the ones predicted: refused if it is or overlaps the input) on which "
    "int8 members are calibrated; each is cropped and viewed like an input",
) -> Any:
    return _optional_path("--calibration", help=f"{what}. Needed by --precision int8")


def engine_cache() -> Any:
    return option(
        "--engine-cache",
        help="folder for the exported members and U-Net (default: <members folder>/.engine_cache); entries are "
        "keyed by the model file's sha256, engine, precision and versions, and rebuilt when stale",
        default=None,
        show_default=False,
    )


def training_precision(default: str = "fp32") -> Any:
    """--precision of the training stages (train, train_all, pretrain, train_unet)."""
    return option(
        "--precision",
        help="compute precision (weights stay float32): auto = fp16 on a GPU, bf16 on a CPU with native "
        "bf16 (avx512_bf16/AMX), else fp32 (emulated bf16 is slower than fp32); fp32; bf16 (Keras "
        f"mixed_bfloat16); fp16 (mixed_float16 with loss scaling: for GPUs). {precision.flag_help(precision.TRAINING)}",
        default=default,
        parse=precision.parser(precision.TRAINING),
        choices=precision.accepted(precision.TRAINING),
    )


def unet() -> Any:
    return _optional_path(
        "-U",
        "--Unet",
        help="U-Net weights: our lung_unet.weights.h5 or the original imlab trained_model.hdf5 "
        "(default: the U-Net shipped with the package)",
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
    return _optional_path(
        "-e",
        "--ensemble_weight",
        help=f"ensemble_weights.pickle or .json{what} (default: the authors' published weights shipped here)",
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


def dataset_root(*flags: str, splits: str) -> Any:
    """The dataset tree the ensemble stages read: the splits they score, in every view."""
    return option(
        *flags,
        help=f"dataset root holding {{224,331}}/{{crop,uncrop}}/{splits}/<class folders> (Negative, Positive)",
        required=True,
        check=exists,
    )


def size(what: str = "input side in pixels (224 or 331)") -> Any:
    return option("-s", "--size", help=what, required=True, check=positive)


def initial_weights(long: str, help: str, default: str | None = None) -> Any:
    """``-w``: the weights a training stage starts from (its long spelling is the original script's)."""
    return option("-w", long, help=help, default=default)


def held_out(flag: str, what: str, default: float) -> Any:
    """The fraction of the data a training stage holds out for validation."""
    return option(flag, help=f"{what} held out for validation", default=default, check=open_unit_interval)


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


# ---- --backend ray (docs/distributed.md) ---------------------------------------------------------

BACKENDS = ("local", "ray")


def backend() -> Any:
    return option(
        "--backend",
        help="where the work runs: local (this process; default) or ray (a Ray cluster, docs/distributed.md; "
        "needs the extra: pip install deepcovidxr[ray])",
        default=BACKENDS[0],
        choices=BACKENDS,
    )


def ray_address() -> Any:
    return option(
        "--ray-address",
        help="--backend ray: the cluster to join: auto (the one `ray start` began on this machine) or HOST:PORT "
        "(default: start a local Ray on this machine, listening on 127.0.0.1 only)",
        default=None,
        show_default=False,
    )


def ray_dashboard() -> Any:
    return switch("--ray-dashboard", help="--backend ray: turn on the dashboard of the local Ray (on 127.0.0.1)")


def ray_workers() -> Any:
    return option(
        "--ray-workers",
        help="--backend ray: scoring actors, each holding every member (--workers keeps its meaning: "
        "decode threads per process)",
        default=1,
        check=at_least(1),
    )


def gpus(flag: str, what: str) -> Any:
    return option(
        flag,
        help=f"--backend ray: GPUs per {what} (default: 1 when the Ray cluster has GPUs, else 0)",
        default=None,
        check=at_least(0),
        show_default=False,
    )
