"""Lung U-Net architectures and weight loading.

Two architectures share one input contract (256x256x1, per-image histogram equalisation then
per-image standardisation, see :mod:`deepcovidxr.lungs.segment`):

* ``imlab``: the 4-level U-Net of imlab-uiip/lung-segmentation-2d that DeepCOVID-XR used
  (5.5 M parameters, no batch-norm). Kept so that a user's ``trained_model.hdf5`` loads.
* ``light``: the same encoder with a narrower decoder and batch-norm (about 2 M parameters). It
  trains about six times faster on a CPU and is what we ship in ``unet/``.

Weights we write are Keras 3 ``.weights.h5`` files with a JSON sidecar naming the architecture;
imlab's legacy Keras 2 HDF5 is read by :func:`deepcovidxr.networks.legacy_h5.copy_weights_in_order`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
from keras import layers

from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.runtime import precision

log = logging.getLogger(__name__)

UNET_INPUT = 256
ARCHITECTURES = ("imlab", "light")


def _conv(x, filters: int, name: str, batch_norm: bool, dtype: str | None, folded: bool = False):
    if folded:  # inference form of a conv + batch-norm pair: the scale and shift live in the conv
        x = layers.Conv2D(filters, 3, padding="same", name=name, dtype=dtype)(x)
        return layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    if batch_norm:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name, dtype=dtype)(x)
        x = layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
        return layers.Activation("relu", name=f"{name}_relu", dtype=dtype)(x)
    return layers.Conv2D(filters, 3, padding="same", activation="relu", name=name, dtype=dtype)(x)


def build_unet(architecture: str = "light", dtype: str | None = None, folded: bool = False) -> keras.Model:
    """Return an uncompiled U-Net mapping (N, 256, 256, 1) to a lung probability map.

    ``dtype``: a Keras dtype policy for every layer but the output (None: the global policy).
    ``folded``: the ``light`` architecture with its batch-norms folded into the convolutions
    (inference only; see :func:`fold_batch_norm`).
    """
    if architecture not in ARCHITECTURES:
        raise UsageError(f"unknown U-Net architecture {architecture!r}; choose one of {ARCHITECTURES}")
    light = architecture == "light"
    if folded and not light:
        raise ValueError("only the light U-Net has batch-norms to fold")
    inputs = keras.Input((UNET_INPUT, UNET_INPUT, 1), name="image")
    skips = []
    x = inputs
    for level, width in enumerate((32, 64, 64, 128), start=1):
        x = _conv(x, width, f"enc{level}a", light, dtype, folded)
        x = _conv(x, width, f"enc{level}b", light, dtype, folded)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}", dtype=dtype)(x)
    x = _conv(x, 256, "bottleneck", light, dtype, folded)
    # imlab's decoder: upsample -> conv -> conv -> concat(skip) -> conv, widths 256,256,128,64.
    # Ours keeps the order but halves the widths; the expensive full-resolution convolutions
    # are where the time goes on a CPU.
    widths = (128, 64, 64, 32) if light else (256, 256, 128, 64)
    for level, (width, skip) in enumerate(zip(widths, reversed(skips), strict=True), start=1):
        x = layers.UpSampling2D(2, name=f"up{level}", dtype=dtype)(x)
        x = _conv(x, width, f"dec{level}a", light, dtype, folded)
        x = _conv(x, width, f"dec{level}b", light, dtype, folded)
        x = layers.Concatenate(name=f"merge{level}", dtype=dtype)([skip, x])
        x = _conv(x, width, f"dec{level}c", light, dtype, folded)
    outputs = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="mask", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"unet_{architecture}")


def fold_batch_norm(model: keras.Model, dtype: str | None = None) -> keras.Model:
    """The same function with each inference-mode batch-norm folded into the convolution before
    it: w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps). It saves two passes over
    every feature map (about 1.3x faster here); outputs agree to float32 rounding."""
    import numpy as np

    folded = build_unet("light", dtype, folded=True)
    for layer in folded.layers:
        if not isinstance(layer, layers.Conv2D):
            continue
        source = model.get_layer(layer.name)
        if not source.use_bias:
            norm = model.get_layer(f"{layer.name}_bn")
            gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())
            scale = gamma / np.sqrt(variance + norm.epsilon)
            kernel = np.asarray(source.get_weights()[0], np.float64) * scale
            layer.set_weights([kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)])
        else:
            layer.set_weights(source.get_weights())
    return folded


def sidecar_path(weights: Path) -> Path:
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")


def load_unet(path: Path, dtype: str | None = None, fold: bool = True) -> tuple[keras.Model, dict]:
    """Load our weights (``*.weights.h5`` + JSON sidecar) or imlab's legacy ``.hdf5`` file.

    ``dtype``: the Keras compute policy (None: the U-Net's ``auto`` of :mod:`deepcovidxr.runtime.precision`,
    mixed bfloat16 where the CPU has native bf16, about 1.5x faster, else float32). ``fold``: return
    the light architecture with its batch-norms folded (inference only). Returns the model and a
    metadata dict (at least ``architecture``).
    """
    dtype = dtype or precision.for_unet("auto").unet_dtype
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"U-Net weights not found: {path} (pass -U/--Unet with a valid file)")
    if path.name.endswith(".weights.h5"):
        meta_file = sidecar_path(path)
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {"architecture": "light"}
        model = build_unet(meta["architecture"], dtype)
        model.load_weights(path)
        if fold and meta["architecture"] == "light":
            return fold_batch_norm(model, dtype), {**meta, "inference_dtype": dtype, "batch_norm_folded": True}
        return model, {**meta, "inference_dtype": dtype}
    from deepcovidxr.networks.legacy_h5 import copy_weights_in_order

    model = build_unet("imlab", dtype)
    copy_weights_in_order(path, model)
    return model, {"architecture": "imlab", "source": str(path), "inference_dtype": dtype}
