"""A gray image seen through a lung mask: the lungs alone, the image without its lungs, the lungs'
share of the image, and how much of a saliency map falls inside them (numpy only).

The mask is the U-Net's lung mask at the image's own size, ``bool`` or integer (any non-zero pixel
is lung: 0/1 and 0/255 masks read the same). Replacing a region needs a value; the **neutral fill
is the mean grey of the region kept** (``fill="kept"``, the default): the edited image is then a
function of the kept pixels only, so nothing of the removed region, not even its mean brightness,
reaches the network. The original quick check filled with the whole image's mean (``fill="image"``,
offered for comparison); that value mixes in the removed region's brightness, a small but real leak
when the question is whether the ensemble reads the lungs or the hospital. A number may be given
instead. When nothing is kept (an empty mask for ``lungs_only``, a full one for ``lungs_removed``)
there is no kept mean, and :data:`EMPTY_FILL` (mid-grey of 8 bits) is used, so the result still
carries nothing of the removed pixels.
"""

from __future__ import annotations

import numpy as np

# Mid-grey of the 8-bit range: the fill when no pixel is kept, so no removed pixel decides it.
EMPTY_FILL = 128.0

FILLS = ("kept", "image")


def _as_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The mask as bool, refused unless it has exactly the image's shape (a mask at another size
    would silently mark the wrong pixels)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from the image's {tuple(shape)}")
    return mask.astype(bool)


def _fill_value(gray: np.ndarray, keep: np.ndarray, fill: str | float) -> float:
    if not isinstance(fill, str):
        return float(fill)
    if fill not in FILLS:
        raise ValueError(f"fill must be a number or one of {FILLS}, got {fill!r}")
    region = gray[keep] if fill == "kept" else gray
    return float(region.mean()) if region.size else EMPTY_FILL


def _replace(gray: np.ndarray, keep: np.ndarray, fill: str | float) -> np.ndarray:
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D gray image, got shape {gray.shape}")
    value = _fill_value(gray, keep, fill)
    if np.issubdtype(gray.dtype, np.integer):
        # round, then clip to the dtype so a given number outside the range cannot wrap around
        info = np.iinfo(gray.dtype)
        value = float(np.clip(np.rint(value), info.min, info.max))
    out = gray.copy()
    out[~keep] = value
    return out


def lungs_only(gray: np.ndarray, mask: np.ndarray, fill: str | float = "kept") -> np.ndarray:
    """The image with every pixel outside the lung mask replaced by the neutral fill (same shape
    and dtype; the input is not modified)."""
    return _replace(gray, _as_mask(mask, np.shape(gray)), fill)


def lungs_removed(gray: np.ndarray, mask: np.ndarray, fill: str | float = "kept") -> np.ndarray:
    """The image with every pixel inside the lung mask replaced by the neutral fill (same shape
    and dtype; the input is not modified)."""
    return _replace(gray, ~_as_mask(mask, np.shape(gray)), fill)


def mask_share(mask: np.ndarray) -> float:
    """The fraction of the image's pixels inside the mask: the chance level of
    :func:`mass_inside` (a map spread evenly puts exactly this share inside)."""
    mask = np.asarray(mask)
    if mask.size == 0:
        raise ValueError("empty mask")
    return float(np.count_nonzero(mask) / mask.size)


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """The share of a non-negative map's total mass (e.g. a Grad-CAM heatmap at the image's size)
    that lies inside the mask, in [0, 1].

    An all-zero map has no mass to share out: the result is NaN (undefined), not 0 or the chance
    level, so a caller averaging over images must skip it rather than count it as evidence either
    way. Negative or non-finite values are refused: a share of signed mass means nothing.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    inside = _as_mask(mask, heatmap.shape)
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds non-finite values")
    if np.any(heatmap < 0):
        raise ValueError("heatmap holds negative values; pass a non-negative map (e.g. ReLU'd Grad-CAM)")
    total = float(heatmap.sum())
    if total == 0.0:
        return float("nan")
    return float(heatmap[inside].sum() / total)
