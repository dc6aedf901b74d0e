"""Read weights out of Keras 2 / TF 2.0-era HDF5 files without deserialising their models.

Keras 3's ``load_model`` rejects these files (layer names such as ``conv1/conv``) and
``load_weights(by_name=True)`` silently skips layers, so we rebuild the architecture ourselves
and copy arrays layer by layer, checking every shape and naming the file and layer on mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np


class LegacyWeightsError(ValueError):
    """A legacy weight file that does not fit the architecture it is loaded into."""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_layer_weights(path: Path) -> Iterator[tuple[str, list[np.ndarray]]]:
    """Yield (layer name, arrays) for every layer that holds weights, in the file's layer order.

    Works for full-model files (weights under ``model_weights``) and weights-only files.
    """
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise LegacyWeightsError(f"{path}: not a readable HDF5 file ({error})") from error
    with handle:
        group = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in group.attrs:
            raise LegacyWeightsError(f"{path}: no Keras 2 layer list (attribute layer_names) in this HDF5 file")
        for layer_name in (_text(n) for n in group.attrs["layer_names"]):
            layer_group = group[layer_name]
            weight_names = [_text(n) for n in layer_group.attrs.get("weight_names", [])]
            if weight_names:
                yield layer_name, [np.asarray(layer_group[w]) for w in weight_names]


def copy_weights_in_order(path: Path, model, targets: list | None = None, swap_head: bool = False) -> list[str]:
    """Copy a legacy file's weights into ``model``: the n-th weighted layer of the file into the
    n-th of ``targets`` (default: every layer of ``model`` that has weights), after checking that
    the counts and every shape agree.

    With ``swap_head``, a last layer whose shapes differ (a 14-finding NIH head loaded into a
    1-output member) keeps its fresh initialisation instead of failing. Returns the names of the
    model layers left untouched that way.
    """
    source = list(read_layer_weights(path))
    targets = targets if targets is not None else [layer for layer in model.layers if layer.weights]
    if len(source) != len(targets):
        raise LegacyWeightsError(
            f"{path}: the file has {len(source)} layers with weights, the {model.name} architecture has {len(targets)}"
        )
    skipped = []
    pairs = list(zip(source, targets, strict=True))
    for index, ((name, arrays), layer) in enumerate(pairs):
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays]
        if expected != found:
            if swap_head and index == len(pairs) - 1:
                skipped.append(layer.name)
                continue
            raise LegacyWeightsError(f"{path}: layer {name!r} holds shapes {found}, {layer.name!r} expects {expected}")
    for (_, arrays), layer in pairs:
        if layer.name not in skipped:
            layer.set_weights(arrays)
    return skipped
