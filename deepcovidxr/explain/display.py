"""The display size of the explanation stages (Grad-CAM and LIME): maps and figures are made at a
longest side of DISPLAY_SIDE, never upscaled; boxes follow the scale."""

from __future__ import annotations

import numpy as np

from deepcovidxr.imaging.geometry import resize_gray

DISPLAY_SIDE = 512  # maps and figures are made at this longest side


def fit_scale(shape: tuple[int, int], side: int) -> float:
    """The scale that brings an image's longest side down to ``side`` (never up)."""
    return min(1.0, side / max(shape))


def scaled_box(shape: tuple[int, int], box: tuple[int, int, int, int], scale: float):
    height, width = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    x0, y0 = min(width - 1, int(box[0] * scale)), min(height - 1, int(box[1] * scale))
    x1, y1 = max(x0 + 1, min(width, round(box[2] * scale))), max(y0 + 1, min(height, round(box[3] * scale)))
    return (height, width), (x0, y0, x1, y1)


def display_image(gray: np.ndarray) -> np.ndarray:
    scale = fit_scale(gray.shape, DISPLAY_SIDE)
    if scale >= 1:
        return gray
    return resize_gray(gray, round(gray.shape[1] * scale), round(gray.shape[0] * scale))
