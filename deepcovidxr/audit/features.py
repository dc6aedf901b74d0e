"""The members' pooled features (the global-average-pooled backbone output every head reads), for
the probe that asks whether the site can be read from them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepcovidxr.contract.file_report import chunked
from deepcovidxr.imaging.preprocess import to_model_input
from deepcovidxr.networks.members import POOLED_LAYER


def pooled_features(model, images: np.ndarray, indices: Sequence[int], batch_size: int) -> np.ndarray:
    """(len(indices), features) float32: ``model``'s pooled layer over ``images[indices]`` (gray
    uint8 views at the member's size)."""
    import keras

    pooled = keras.Model(model.inputs, model.get_layer(POOLED_LAYER).output)
    batches = [
        np.asarray(pooled.predict_on_batch(np.stack([to_model_input(images[i]) for i in batch])), np.float32)
        for batch in chunked(indices, batch_size)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, pooled.output.shape[-1]), np.float32)
