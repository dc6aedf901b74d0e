"""Pixel geometry every stage shares: a half-open box, growing a box to a square, mapping a
box between scales, and the resize the montages and masks use."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """Half-open pixel box: columns x0..x1-1, rows y0..y1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y1, self.x0 : self.x1]


def resize_gray(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize with area averaging when shrinking (antialiased) and bilinear when enlarging."""
    shrinking = width * height < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def scale_box(box: Box, from_size: int, width: int, height: int) -> Box:
    """Map a box at ``from_size`` x ``from_size`` scale onto a width x height image."""
    sx, sy = width / from_size, height / from_size
    return Box(
        round(box.x0 * sx),
        round(box.y0 * sy),
        min(width, round(box.x1 * sx)),
        min(height, round(box.y1 * sy)),
    )


def _grow(lo: int, hi: int, target: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to ``target`` length inside [0, limit): half each side, the odd pixel at
    the end, and whatever an edge blocks pushed to the other side."""
    extra = target - (hi - lo)
    if extra <= 0:
        return lo, hi
    before = extra // 2
    after = extra - before
    lo, hi = lo - before, hi + after
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def square_box(box: Box, width: int, height: int) -> Box:
    """Grow the shorter side to the longer one; never shrink. Stays non-square only when the
    image itself is too small in that direction."""
    side = max(box.width, box.height)
    x0, x1 = _grow(box.x0, box.x1, side, width)
    y0, y1 = _grow(box.y0, box.y1, side, height)
    return Box(x0, y0, x1, y1)
