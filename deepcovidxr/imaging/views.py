"""The four views of one radiograph that the ensemble members see: {224, 331} x {uncrop, crop}.

One function makes them, for the dataset builder (written to the tree) and for prediction (kept
in memory), so a file predicted directly and the same file in a dataset tree get the same pixels.
"""

from __future__ import annotations

import numpy as np

from deepcovidxr.contract.layout import SIZES, CropMode
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.preprocess import lanczos_resize

View = tuple[int, CropMode]
ALL_VIEWS: tuple[View, ...] = tuple((size, crop) for size in SIZES for crop in (CropMode.UNCROP, CropMode.CROP))


def make_views(gray: np.ndarray, square: Box, views: tuple[View, ...] = ALL_VIEWS) -> dict[View, np.ndarray]:
    """Lanczos-resized uncropped image and square lung crop at each size (gray uint8)."""
    sources = {CropMode.UNCROP: gray, CropMode.CROP: square.crop(gray)}
    return {(size, crop): lanczos_resize(sources[crop], size) for size, crop in views}
