"""Training augmentation for the lung U-Net, at U-Net scale (256 x 256 uint8 image + {0,1} mask).

Montgomery and Shenzhen are mostly PA films of clear or TB lungs. The images the U-Net meets in
DeepCOVID-XR are often AP bedside films with consolidation or ground glass in the lower zones and
lines and wires across the chest. A U-Net that never saw opacified lung learns "lung = dark" and
cuts the opacified part out of its mask, and with it the evidence the classifiers need. So we
paint opacities into the lung fields while the mask stays the whole lung (opacified lung is still
lung), and draw tubes and wires across the image (they are not lung).

The opacity shapes here are deliberately unlike the phantoms' lesions
(:func:`deepcovidxr.synthetic.phantoms.lower_zone_opacities`), which the robustness benchmark uses, so
the benchmark does not test the model on the pattern it was trained on.
"""

from __future__ import annotations

import cv2
import numpy as np


def random_affine(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """imlab's augmentation: rotation +-10 deg, shifts +-10 %, zoom 0.8-1.2."""
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.8, 1.2)
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.1, 0.1, size=2) * size
    return matrix


def _low_frequency_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def opacity_field(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A soft 0..1 field inside the lung: patchy airspace disease (thresholded low-frequency noise)
    weighted towards the lower zones, or, one time in four, a basal white-out rising from the
    bottom of one lung (dense consolidation, or effusion obscuring the base)."""
    size = mask.shape[0]
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros(mask.shape, np.float32)
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    height = bottom - top
    y = np.arange(size, dtype=np.float32)[:, None]
    if rng.random() < 0.25:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        if len(stats) > 1:
            lung = 1 + int(rng.integers(0, len(stats) - 1))
            lung_top = stats[lung, cv2.CC_STAT_TOP]
            lung_bottom = lung_top + stats[lung, cv2.CC_STAT_HEIGHT]
            level = lung_bottom - rng.uniform(0.15, 0.5) * (lung_bottom - lung_top)
            # a meniscus: the edge rises towards the lateral chest wall
            x = np.arange(size, dtype=np.float32)[None, :]
            half_width = stats[lung, cv2.CC_STAT_WIDTH] / 2
            centre = stats[lung, cv2.CC_STAT_LEFT] + half_width
            level = level - rng.uniform(0.0, 0.12) * height * np.abs(x - centre) / max(1.0, half_width)
            field = np.clip((y - level) / rng.uniform(3.0, 12.0), 0.0, 1.0) * (labels == lung)
            return cv2.GaussianBlur(field.astype(np.float32), (0, 0), 2.0)
    noise = _low_frequency_field(rng, size, int(rng.integers(4, 9)))
    noise /= float(noise.std()) + 1e-6
    # lower zones favoured: the threshold falls from the apex to the base
    threshold = rng.uniform(0.3, 1.3) - rng.uniform(0.5, 1.5) * np.clip((y - top) / max(height, 1), 0.0, 1.0)
    field = np.clip((noise - threshold) / rng.uniform(0.3, 1.0), 0.0, 1.0)
    mottle = _low_frequency_field(rng, size, int(rng.integers(16, 40)))
    field *= np.clip(0.8 + 0.25 * mottle / (float(mottle.std()) + 1e-6), 0.3, 1.2)
    return np.clip(field, 0.0, 1.0) * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5)


def add_opacities(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pull the lung towards soft-tissue brightness where :func:`opacity_field` is high: from
    faint ground glass (strength 0.3) to near white-out (0.95). The mask is left unchanged."""
    field = opacity_field(rng, mask)
    if not field.any():
        return image
    soft_tissue = float(np.percentile(image, rng.uniform(80, 95)))
    strength = rng.uniform(0.3, 0.95)
    pixels = image.astype(np.float32)
    opacified = pixels + strength * field * np.maximum(soft_tissue - pixels, 0.0)
    return np.clip(np.rint(opacified), 0, 255).astype(np.uint8)


def add_lines(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to four bright curves (tubes, ECG leads, wires) anywhere on the film."""
    size = image.shape[0]
    out = image.copy()
    for _ in range(int(rng.integers(1, 5))):
        # a quadratic Bezier curve through three random points
        p0, p1, p2 = rng.uniform(-0.1, 1.1, size=(3, 2)) * size
        t = np.linspace(0.0, 1.0, 64)[:, None]
        points = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        brightness = int(rng.integers(170, 256))
        thickness = int(rng.integers(1, 3))
        cv2.polylines(out, [np.rint(points).astype(np.int32)], False, brightness, thickness, cv2.LINE_AA)
    return out


def augment_pair(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, pathology_probability: float
) -> tuple[np.ndarray, np.ndarray]:
    """Geometry (affine, left-right flip) on both; then, each with ``pathology_probability``,
    opacities and lines on the image only. ``image`` uint8, ``mask`` float32 {0,1}, both
    256 x 256; returns the image (uint8) and the mask (float32 {0,1})."""
    size = image.shape[0]
    matrix = random_affine(rng, size)
    image = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:  # radiographs are stored both ways round
        image, mask = image[:, ::-1], mask[:, ::-1]
    image, mask = np.ascontiguousarray(image), (mask > 0.5).astype(np.float32)
    if rng.random() < pathology_probability:
        image = add_opacities(image, mask, rng)
    if rng.random() < pathology_probability / 2:
        image = add_lines(image, rng)
    return image, mask
