"""Grad-CAM plumbing: gradients point at what drives the logit; maps land in original coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from deepcovidxr.gradcam import fuse, member_cams, to_original


def _bright_spot_model(size: int = 32):
    """A tiny member-shaped model whose logit grows with the brightness of the image's top-left
    quarter: its positive Grad-CAM must peak there."""
    import keras

    inputs = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(
        1, 1, activation="relu", name="features", kernel_initializer="ones", bias_initializer="zeros"
    )(inputs)
    mask = np.zeros((1, size, size, 1), np.float32)
    mask[:, : size // 2, : size // 2] = 1.0
    masked = keras.layers.Lambda(lambda t: t * mask)(conv)
    pooled = keras.layers.GlobalAveragePooling2D()(masked)
    dropped = keras.layers.Dropout(0.0, name="dropout")(pooled)
    output = keras.layers.Dense(1, activation="sigmoid", name="last", kernel_initializer="ones")(dropped)
    return keras.Model(inputs, output)


def test_positive_map_peaks_where_the_evidence_is() -> None:
    model = _bright_spot_model()
    x = np.zeros((2, 32, 32, 3), np.float32)
    x[:, :16, :16] = 1.0  # evidence in the top-left quarter
    x[:, 20:, 20:] = 1.0  # bright but irrelevant bottom-right
    positive, negative, scores = member_cams(model, "features", x)
    assert positive.shape == (2, 32, 32) and positive.max() == pytest.approx(1.0)
    peak = np.unravel_index(np.argmax(positive[0]), positive[0].shape)
    assert peak[0] < 16 and peak[1] < 16
    assert positive[0][24:, 24:].max() < 0.05
    assert np.allclose(negative, 0)  # nothing argues for the negative class here
    assert np.all(scores > 0.5)


def test_crop_maps_go_back_into_their_box() -> None:
    cam = np.ones((8, 8), np.float32)
    placed = to_original(cam, (100, 80), (10, 20, 50, 60))
    assert placed.shape == (100, 80)
    assert placed[20:60, 10:50].min() == pytest.approx(1.0) and placed.sum() == pytest.approx(40 * 40)
    whole = to_original(cam, (100, 80), None)
    assert whole.shape == (100, 80) and whole.min() == pytest.approx(1.0)


def test_fusion_is_ensemble_weighted() -> None:
    a, b = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    a[0, 0], b[3, 3] = 1.0, 1.0
    fused = fuse([a, b], [0.75, 0.25])
    assert fused[0, 0] == pytest.approx(1.0) and fused[3, 3] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="positive weight"):
        fuse([a], [0.0])
