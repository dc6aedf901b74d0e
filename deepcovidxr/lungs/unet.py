"""Lung U-Net architectures and weight loading.

Two architectures share one input contract (256x256x1, per-image histogram equalisation then
per-image standardisation, see :mod:`deepcovidxr.lungs.segment`):

* ``imlab``: the 4-level U-Net of imlab-uiip/lung-segmentation-2d that DeepCOVID-XR used
  (5.5 M parameters, no batch-norm). Kept so that a user's ``trained_model.hdf5`` loads.
* ``light``: the same encoder with a narrower decoder and batch-norm (about 2 M parameters). It
  trains about six times faster on a CPU and is what we ship in ``unet/``.

Weights we write are Keras 3 ``.weights.h5`` files with a JSON sidecar naming the architecture;
imlab's legacy Keras 2 HDF5 is read by :func:`deepcovidxr.legacy_h5.copy_weights_in_order`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
from keras import layers

log = logging.getLogger(__name__)

UNET_INPUT = 256
ARCHITECTURES = ("imlab", "light")


def _conv(x, filters: int, name: str, batch_norm: bool, dtype: str | None):
    if batch_norm:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name, dtype=dtype)(x)
        x = layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
        return layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=name, dtype=dtype)(x)


def inference_policy() -> str:
    """bfloat16 compute where the CPU has native bfloat16 (AVX512-BF16 or AMX): about 1.5x faster
    here, and the shipped U-Net was trained in mixed bfloat16. float32 elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


def build_unet(architecture: str = "light", dtype: str | None = None) -> keras.Model:
    """Return an uncompiled U-Net mapping (N, 256, 256, 1) to a lung probability map.

    ``dtype``: a Keras dtype policy for every layer but the output (None: the global policy).
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown U-Net architecture {architecture!r}; choose one of {ARCHITECTURES}")
    light = architecture == "light"
    inputs = keras.Input((UNET_INPUT, UNET_INPUT, 1), name="image")
    skips = []
    x = inputs
    for level, width in enumerate((32, 64, 64, 128), start=1):
        x = _conv(x, width, f"enc{level}a", light, dtype)
        x = _conv(x, width, f"enc{level}b", light, dtype)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}", dtype=dtype)(x)
    x = _conv(x, 256, "bottleneck", light, dtype)
    # imlab's decoder: upsample -> conv -> conv -> concat(skip) -> conv, widths 256,256,128,64.
    # Ours keeps the order but halves the widths; the expensive full-resolution convolutions
    # are where the time goes on a CPU.
    widths = (128, 64, 64, 32) if light else (256, 256, 128, 64)
    for level, (width, skip) in enumerate(zip(widths, reversed(skips), strict=True), start=1):
        x = layers.UpSampling2D(2, name=f"up{level}", dtype=dtype)(x)
        x = _conv(x, width, f"dec{level}a", light, dtype)
        x = _conv(x, width, f"dec{level}b", light, dtype)
        x = layers.Concatenate(name=f"merge{level}", dtype=dtype)([skip, x])
        x = _conv(x, width, f"dec{level}c", light, dtype)
    outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet_{architecture}")


def sidecar_path(weights: Path) -> Path:
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")


def load_unet(path: Path, dtype: str | None = None) -> tuple[keras.Model, dict]:
    """Load our weights (``*.weights.h5`` + JSON sidecar) or imlab's legacy ``.hdf5`` file.

    ``dtype``: the compute policy (None: :func:`inference_policy`). Returns the model and a
    metadata dict (at least ``architecture``).
    """
    dtype = dtype or inference_policy()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"U-Net weights not found: {path} (pass -U/--Unet with a valid file)")
    if path.name.endswith(".weights.h5"):
        meta_file = sidecar_path(path)
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"architecture": "light"}
        model = build_unet(meta["architecture"], dtype)
        model.load_weights(path)
        return model, {**meta, "inference_dtype": dtype}
    from deepcovidxr.legacy_h5 import copy_weights_in_order

    model = build_unet("imlab", dtype)
    copy_weights_in_order(path, model)
    return model, {"architecture": "imlab", "source": str(path), "inference_dtype": dtype}
