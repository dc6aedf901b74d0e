"""Ensemble members: build, freeze, save and load.

A member is ``backbone -> GlobalAveragePooling2D -> Dropout(p) -> Dense(1, sigmoid, name 'last')``
(the binary task; ``Dense(n, softmax)`` for n >= 3 classes, see :mod:`deepcovidxr.contract.classes`)
as one flat Keras graph (the layout of the authors' files, and what Grad-CAM needs). Every
backbone is fed the original's input (see :mod:`deepcovidxr.imaging.preprocess`); a backbone's own
built-in rescaling/normalisation (EfficientNet's) is turned into the identity so it never
applies twice.

Member files are Keras full-model HDF5 (``<Prefix>_<size>_up_<crop>.h5``) with a JSON sidecar
(its ``classes`` name the head's outputs; the authors' files have none and are binary).
Loading never deserialises a file's model config: the architecture is rebuilt from the backbone
table and the weights are copied layer by layer with shape checks, which is how the authors'
Keras 2.3 / TF 2.0 files, NIH checkpoints and our own files all load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from deepcovidxr import __version__
from deepcovidxr.contract import backbones
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import MissingInputError
from deepcovidxr.networks.legacy_h5 import LegacyWeightsError, copy_weights_in_order, read_layer_weights
from deepcovidxr.scoring.task import task_for

log = logging.getLogger(__name__)

# The pooled backbone features every member's head reads (audit.py's site probe reads them too).
POOLED_LAYER = "gap"
HEAD_LAYERS = (POOLED_LAYER, "dropout", "last")
ACTIVATIONS = ("sigmoid", "softmax")


def head_for(classes) -> tuple[int, str]:
    """(units, activation) of a member's head for a task: (1, sigmoid) for Negative/Positive,
    (n, softmax) for n >= 3 classes."""
    task = task_for(classes)
    return task.units, task.activation


class WeightsUnavailableError(MissingInputError):
    """Initial weights that cannot be had here (offline ImageNet, a missing file)."""


def _neutralise_preprocessing(model) -> None:
    """Make built-in Rescaling/Normalization layers the identity: inputs arrive standardised."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Rescaling):
            layer.scale, layer.offset = 1.0, 0.0
        elif isinstance(layer, keras.layers.Normalization):
            layer.set_weights(
                [
                    np.zeros_like(w) if i == 0 else np.ones_like(w) if i == 1 else w
                    for i, w in enumerate(layer.get_weights())
                ]
            )


def build_member(
    backbone: str,
    size: int,
    dropout: float = 0.3,
    weights: str | Path | None = None,
    outputs: int = 1,
    activation: str = "sigmoid",
):
    """A member with ``outputs`` units: sigmoid (1 for COVID, 14 for NIH pretraining) or
    ``activation="softmax"`` (one unit per class of a multi-class task; :func:`head_for`).

    ``weights``: None or ``"none"`` (random), ``"imagenet"`` (downloaded by Keras, or found in
    ``~/.keras/models``), or a file: a keras.applications ImageNet no-top weights file, an NIH
    checkpoint from pretrain.py, or any member file (ours or the authors'). A file whose head
    does not fit (14 findings vs 1) keeps only its backbone.
    """
    import keras

    if activation not in ACTIVATIONS:
        raise ValueError(f"head activation {activation!r} is not one of {ACTIVATIONS}")
    spec = backbones.get(backbone)
    weights = None if weights is None or str(weights).lower() == "none" else weights
    keras_weights = "imagenet" if weights == "imagenet" else None
    file_weights: Path | None = None
    if weights is not None and weights != "imagenet":
        file_weights = Path(weights)
        if not file_weights.is_file():
            raise WeightsUnavailableError(f"initial weights file not found: {file_weights}")
        if _is_backbone_weights_file(file_weights):
            keras_weights, file_weights = str(file_weights), None
    inputs = keras.Input((size, size, 3), name="input")
    try:
        base = spec.build(size, weights=keras_weights, input_tensor=inputs)
    except Exception as error:
        if keras_weights == "imagenet":
            raise WeightsUnavailableError(
                f"ImageNet weights for {spec.name} could not be loaded ({type(error).__name__}: {error}). "
                f"Offline, pass -w with a local file (the keras.applications {spec.constructor} no-top .h5 "
                "from ~/.keras/models on a connected machine, an NIH checkpoint from pretrain.py, or a member "
                ".h5), or -w none for random initialisation."
            ) from error
        raise
    _neutralise_preprocessing(base)
    if weights is None:
        settle_batchnorm_faster(base)
    x = keras.layers.GlobalAveragePooling2D(name=POOLED_LAYER)(base.output)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    output = keras.layers.Dense(outputs, activation=activation, name="last", dtype="float32")(x)
    model = keras.Model(inputs, output, name=f"{spec.short}_{size}")
    if file_weights is not None:
        swapped = load_weights_file(model, file_weights, swap_head=True)
        if swapped:
            log.info(
                "%s: backbone weights loaded; new %d-output head (the file's head has another shape)",
                file_weights,
                outputs,
            )
    return model


# With random initial weights, batch-norm statistics start from nothing: at Keras' default
# momentum (0.99) they need hundreds of steps to settle, and until then validation predictions are
# garbage and learning-rate/early-stopping decisions go wrong. Pretrained backbones keep 0.99.
FROM_SCRATCH_BN_MOMENTUM = 0.9


def settle_batchnorm_faster(model) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = FROM_SCRATCH_BN_MOMENTUM


def _is_backbone_weights_file(path: Path) -> bool:
    """A keras.applications no-top weights file (layer list at the root, no 'last' layer)."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "model_weights" not in handle and "layer_names" in handle.attrs and "last" not in handle
    except OSError:
        return False


def weighted_layers(model, skip_normalization: bool = False) -> list:
    import keras

    return [
        layer
        for layer in model.layers
        if layer.weights and not (skip_normalization and isinstance(layer, keras.layers.Normalization))
    ]


def load_weights_file(model, path: Path, swap_head: bool = False) -> list[str]:
    """Copy a full-model HDF5 file's weights into ``model`` layer by layer.

    Files from Keras' own EfficientNet carry its Normalization layer; the authors' (the qubvel
    ``efficientnet`` package) have none, so a count mismatch is retried without it.
    """
    count = sum(1 for _ in read_layer_weights(path))
    skip_normalization = count == len(weighted_layers(model, skip_normalization=True)) != len(weighted_layers(model))
    skipped = copy_weights_in_order(path, model, weighted_layers(model, skip_normalization), swap_head=swap_head)
    if skip_normalization:
        _neutralise_preprocessing(model)
    return skipped


def backbone_layers(model) -> list:
    """Every layer of the member except its input and head: the backbone as a whole."""
    return [layer for layer in model.layers if layer.name not in HEAD_LAYERS and layer.name != "input"]


def set_backbone_trainable(model, trainable: bool) -> None:
    """Freeze or unfreeze the whole backbone (never by layer index: the original's index 428 left
    most of Inception-ResNet-V2 trainable). Frozen batch-norm runs in inference mode."""
    for layer in backbone_layers(model):
        layer.trainable = trainable


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_member(model, path: Path, member: Member | None = None, info: dict | None = None, classes=None) -> Path:
    """Write a full-model HDF5 atomically, plus a JSON sidecar describing it. ``classes`` (the
    head's outputs in order) are recorded as ``"classes"``; a one-output member given none is
    the binary task (Negative, Positive)."""
    import keras

    path = Path(path)
    with atomic_path(path) as tmp:
        model.save(tmp, include_optimizer=False)
    meta = {
        "member": member.short_name if member else None,
        "backbone": member.backbone if member else None,
        "size": member.size if member else int(model.input_shape[1]),
        "crop": member.crop.value if member else None,
        "outputs": int(model.output_shape[-1]),
        "input": "RGB (gray replicated), Lanczos-resized, /255, ImageNet mean/std",
        "deepcovidxr_version": __version__,
        "keras_version": keras.__version__,
        **(info or {}),
    }
    if classes is None and meta["outputs"] == 1:
        classes = class_names.BINARY
    if classes is not None:
        classes = [str(c) for c in classes]
        if task_for(classes).units != meta["outputs"]:
            raise ValueError(f"{path.name}: {meta['outputs']} outputs cannot name the classes {classes}")
        meta["classes"] = classes
    write_json(sidecar(path), meta)
    return path


def load_member(path: Path, member: Member | None = None):
    """Rebuild the member named by the file (``ResNet50_331_up_crop.h5``) or its sidecar, with the
    head its sidecar's classes call for (:func:`deepcovidxr.contract.classes.member_classes`: none recorded
    is the binary sigmoid head), and copy the file's weights into it. Raises
    :class:`LegacyWeightsError` naming file and layer."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"member weights not found: {path}")
    if member is None:
        meta_path = sidecar(path)
        recorded = json.loads(meta_path.read_text(encoding="utf-8")).get("member") if meta_path.is_file() else None
        member = Member.parse(recorded or path.name)
    outputs, activation = head_for(class_names.member_classes(path))
    model = build_member(member.backbone, member.size, dropout=0.0, outputs=outputs, activation=activation)
    load_weights_file(model, path)
    return model


__all__ = [
    "LegacyWeightsError",
    "WeightsUnavailableError",
    "build_member",
    "head_for",
    "load_member",
    "save_member",
    "set_backbone_trainable",
]
