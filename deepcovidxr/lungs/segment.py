"""From a chest X-ray to a square lung box: U-Net input, mask clean-up and the box rules.

The rules follow the original ``crop_img.py`` (SPEC s.2) with its bugs fixed:

* the U-Net input is standardised per image, never per batch (bug 10);
* the background is cv2's label 0, not "the largest component" (a lung field larger than the
  background no longer gets dropped);
* the "both lungs on one side of the spine" test looks at the two components the box is built
  from, not at labels 1 and 2 in scan order (bug 9);
* a failed segmentation is reported as ``fallback`` instead of silently cropping nothing (bug 11).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import cv2
import numpy as np
from skimage import exposure

from deepcovidxr.imaging.geometry import Box, resize_gray

UNET_SIZE = 256
THRESHOLD = 0.5
OPENING_KERNEL = 5
MIN_AREA_FRACTION = 0.02
PAD = 8  # pixels at 256 scale, on every side


class CropStatus(enum.StrEnum):
    OK = "ok"
    ONE_LUNG = "one_lung"  # one lung field found; the box was mirrored about the spine
    FALLBACK = "fallback"  # no lung found; the whole image is used
    ERROR = "error"  # the image could not be read or processed


@dataclass(frozen=True)
class LungBox:
    """The result of segmenting one image at U-Net scale."""

    box256: Box
    status: CropStatus
    lung_mask256: np.ndarray  # uint8 {0,1}, the selected lung components
    lung_fraction: float  # selected lung pixels / image pixels


def unet_input(gray: np.ndarray) -> np.ndarray:
    """Gray uint8 image of any size -> float32 (256, 256, 1) U-Net input.

    Histogram equalisation then standardisation with this image's own mean and std, so a
    score never depends on which other images share the batch.
    """
    small = resize_gray(gray, UNET_SIZE, UNET_SIZE).astype(np.float32) / 255.0
    equalised = exposure.equalize_hist(small).astype(np.float32)
    std = float(equalised.std())
    standardised = (equalised - equalised.mean()) / (std if std > 1e-6 else 1.0)
    return standardised[..., None]


def spine_column(gray256: np.ndarray) -> int:
    """Brightest column of the middle third: the spine on a frontal radiograph."""
    width = gray256.shape[1]
    lo, hi = width // 3, 2 * width // 3
    column_sums = gray256[:, lo:hi].astype(np.float64).sum(axis=0)
    return lo + int(np.argmax(column_sums))


def _mirror_about(spine: int, x0: int, x1: int) -> tuple[int, int]:
    """Widen columns [x0, x1) to cover their mirror image about the spine column: column c maps
    to 2 * spine - c, so [x0, x1) maps to [2 * spine - x1 + 1, 2 * spine - x0 + 1)."""
    return min(x0, 2 * spine - x1 + 1), max(x1, 2 * spine - x0 + 1)


def lung_box(probability256: np.ndarray, gray256: np.ndarray) -> LungBox:
    """Apply the box rules to a 256x256 lung probability map."""
    size = probability256.shape[0]
    binary = (probability256 > THRESHOLD).astype(np.uint8)
    kernel = np.ones((OPENING_KERNEL, OPENING_KERNEL), np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    min_area = MIN_AREA_FRACTION * size * size
    candidates = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] > min_area]
    lungs = sorted(candidates, key=lambda i: stats[i, cv2.CC_STAT_AREA], reverse=True)[:2]
    if not lungs:
        empty = np.zeros_like(binary)
        return LungBox(Box(0, 0, size, size), CropStatus.FALLBACK, empty, 0.0)

    mask = np.isin(labels, lungs).astype(np.uint8)
    x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in lungs)
    y0 = min(stats[i, cv2.CC_STAT_TOP] for i in lungs)
    x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in lungs)
    y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in lungs)
    spine = spine_column(gray256)
    sides = {bool(centroids[i][0] < spine) for i in lungs}
    status = CropStatus.OK if len(lungs) == 2 else CropStatus.ONE_LUNG
    if len(sides) == 1:  # one lung, or two components on the same side: mirror about the spine
        x0, x1 = _mirror_about(spine, x0, x1)
    box = Box(
        max(0, x0 - PAD),
        max(0, y0 - PAD),
        min(size, x1 + PAD),
        min(size, y1 + PAD),
    )
    return LungBox(box, status, mask, float(mask.mean()))


def full_resolution_mask(probability256: np.ndarray, lung: LungBox, width: int, height: int) -> np.ndarray:
    """Binary (0/255) lung mask at the original resolution.

    The probability map is upsampled (smooth edges) and kept only where the selected lung
    components are, so debris removed at 256 scale does not come back.
    """
    # The kept components come from the opened binary map, whose staircase edge would cut the
    # smooth probability boundary; grow them by the opening kernel first (held-out Dice +0.001).
    grown = cv2.dilate(lung.lung_mask256.astype(np.uint8), np.ones((OPENING_KERNEL, OPENING_KERNEL), np.uint8))
    keep = probability256 * grown.astype(np.float32)
    upsampled = cv2.resize(keep.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.where(upsampled > THRESHOLD, 255, 0).astype(np.uint8)
