"""The one image path into the CNN members, shared by training, evaluation, prediction and
Grad-CAM: Lanczos resize with Pillow's (antialiased) semantics, gray -> RGB, /255, then ImageNet
mean/std, as the original fed every backbone.

OpenCV's INTER_LANCZOS4 is not used: it does not antialias, so 5-10x downscales alias badly and
differ from what the published weights were trained on.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def lanczos_resize(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a uint8 gray (H, W) or RGB (H, W, 3) array to size x size (or (width, height))."""
    width, height = (size, size) if isinstance(size, int) else size
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


def normalise(rgb):
    """0..255 RGB values -> ImageNet-standardised floats. Plain arithmetic, so the same function
    serves numpy arrays (prediction, Grad-CAM) and TensorFlow tensors (the tf.data pipelines)."""
    return (rgb / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def to_model_input(gray: np.ndarray) -> np.ndarray:
    """Gray uint8 (H, W) at the member's size -> float32 (H, W, 3), ImageNet-standardised."""
    return normalise(np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)).astype(np.float32)
