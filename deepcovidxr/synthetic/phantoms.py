"""Seeded synthetic chest-X-ray "phantoms": demo data and test fixtures for the pipeline.

Each phantom is an 8-bit frontal (PA) chest radiograph look-alike in the MONOCHROME2 convention
(air and lungs dark, bone and soft tissue bright): a rounded trunk with shoulders and neck, two
lung fields with rounded apices, costophrenic angles and diaphragm domes, a heart silhouette that
curves the medial border of the patient's left lung (image right), a mediastinum, a spine with
faint vertebrae, clavicles, posterior and anterior ribs, hilar vessels, low-frequency shading,
blur and noise. The true lung fields come back as a mask aligned with the image, so a lung
segmentation U-Net trained on real radiographs can be checked against it.

A *positive* phantom also gets one to three soft, blotchy, peripheral ground-glass/consolidation
like opacities in the lower lung zones (clipped to the lung fields); its ``opacity_mask`` marks
them. For one seed the positive and the negative phantom share the same anatomy, size and noise:
they differ only where the opacities were added (and a few pixels around them, from the blur).

A second pathology, *diffuse* (``make_phantom(..., pathology="diffuse")``), is a bilateral,
widespread hazy opacity over both lungs, upper zones included, denser towards the hila, with a
fine reticular mottle (:func:`diffuse_opacities`). :func:`write_class_set` writes a seeded
three-class set (``Diffuse``, ``LowerZone``, ``Normal``: :data:`PHANTOM_CLASSES`, sorted as the
class folders sort) for the multi-class task.

These images are synthetic. They exercise code paths; they say nothing about clinical accuracy.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr.contract.atomic import atomic_path, write_text

DEFAULT_SIZE_RANGE: tuple[int, int] = (320, 560)
ASPECT_RANGE: tuple[float, float] = (0.8, 1.25)  # width / height
MIN_SIDE = 64
LABEL_NAMES = {0: "Negative", 1: "Positive"}
PATHOLOGIES = ("lower_zone", "diffuse")
# the three-class phantom task: class folder name -> pathology (None: no opacity); sorted names
PHANTOM_CLASSES: dict[str, str | None] = {"Diffuse": "diffuse", "LowerZone": "lower_zone", "Normal": None}
_LOW = 4  # low-frequency layers are rendered at 1/_LOW resolution and upsampled


@dataclass(frozen=True)
class Phantom:
    """One synthetic radiograph with its ground truth.

    ``image`` is uint8 (H, W); ``lung_mask`` (both lung fields) and ``opacity_mask`` (the added
    opacities, a subset of the lung mask, all zero for negatives) are uint8 {0, 255} of the same
    shape and aligned with the image. ``label`` is 1 for positive, 0 for negative; ``pathology``
    names a positive's opacities (``"lower_zone"`` or ``"diffuse"``), None for a negative.
    """

    image: np.ndarray
    lung_mask: np.ndarray
    opacity_mask: np.ndarray
    label: int
    pathology: str | None = None


@dataclass(frozen=True)
class _Lung:
    """One lung field in normalised units: distances from the midline in image widths, heights in image heights."""

    side: int  # -1: image left (patient right), +1: image right (patient left)
    top: float  # apex row
    bottom: float  # costophrenic angle row
    medial_top: float
    medial_bottom: float
    apex_round: float
    width: float  # lateral reach beyond the medial border at the base
    dome: float  # height of the diaphragm dome above the costophrenic angle
    cardiophrenic_rise: float  # medial end of the diaphragm above the costophrenic angle

    def lateral_at(self, v: np.ndarray | float) -> np.ndarray:
        """Distance of the lateral border from the midline at row ``v`` (normalised)."""
        s = np.clip((np.asarray(v, dtype=np.float64) - self.top) / (self.bottom - self.top), 0.0, 1.0)
        return self._medial(s) + self.width * np.sqrt(1.0 - (1.0 - s) ** 2.5)

    def _medial(self, s: np.ndarray) -> np.ndarray:
        return (
            self.medial_top
            + (self.medial_bottom - self.medial_top) * s
            + self.apex_round * np.clip(1.0 - s / 0.14, 0.0, 1.0) ** 2
        )

    def polygon(self, cx: float, width_px: int, height_px: int) -> np.ndarray:
        """Closed outline in pixels (int32, Nx2): lateral border, diaphragm, medial border."""
        s = np.linspace(0.0, 1.0, 48)
        lateral_d = self.lateral_at(self.top + s * (self.bottom - self.top))
        lateral_v = self.top + s * (self.bottom - self.top)
        t = np.linspace(0.0, 1.0, 24)[1:]
        medial_base = float(self._medial(np.array(1.0)))
        dia_d = lateral_d[-1] + (medial_base - lateral_d[-1]) * t
        dia_v = self.bottom - self.dome * np.sin(np.pi * t**0.8) ** 0.7 - self.cardiophrenic_rise * t
        s_back = np.linspace(1.0, 0.0, 40)[1:-1]
        med_d = self._medial(s_back)
        med_v = self.top + s_back * (self.bottom - self.cardiophrenic_rise - self.top)
        d = np.concatenate([lateral_d, dia_d, med_d])
        v = np.concatenate([lateral_v, dia_v, med_v])
        x = cx + self.side * d * width_px
        y = v * height_px
        return np.round(np.stack([x, y], axis=1)).astype(np.int32)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _draw_size(
    rng: np.random.Generator, height: int | None, width: int | None, size_range: tuple[int, int]
) -> tuple[int, int]:
    low, high = int(size_range[0]), int(size_range[1])
    if low < MIN_SIDE or high < low:
        raise ValueError(f"size_range must be (low, high) with {MIN_SIDE} <= low <= high, got {size_range}")
    for name, value in (("height", height), ("width", width)):
        if value is not None and int(value) < MIN_SIDE:
            raise ValueError(f"{name} must be at least {MIN_SIDE}, got {value}")

    def pick(other: int, lo_ratio: float, hi_ratio: float) -> int:
        lo, hi = math.ceil(other * lo_ratio), math.floor(other * hi_ratio)
        lo_in, hi_in = max(lo, low), min(hi, high)
        if lo_in <= hi_in:
            lo, hi = lo_in, hi_in
        return int(rng.integers(max(lo, MIN_SIDE), max(hi, lo, MIN_SIDE) + 1))

    if height is None and width is None:
        height = int(rng.integers(low, high + 1))
    if width is None:
        width = pick(int(height), ASPECT_RANGE[0], ASPECT_RANGE[1])
    elif height is None:
        height = pick(int(width), 1.0 / ASPECT_RANGE[1], 1.0 / ASPECT_RANGE[0])
    return int(height), int(width)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with about ``cells`` bumps across the image."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _render_anatomy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the unrotated float image (about 0..1, bright = dense) and the lung mask {0, 1}."""
    cx = w * (0.5 + _uniform(rng, -0.02, 0.02))
    v_top = _uniform(rng, 0.09, 0.17)
    v_bot = _uniform(rng, 0.76, 0.87)
    lung_scale = _uniform(rng, 0.9, 1.08)
    medial_top = _uniform(rng, 0.045, 0.065)
    medial_bottom = _uniform(rng, 0.05, 0.075)
    lungs = []
    for side in (-1, 1):
        lungs.append(
            _Lung(
                side=side,
                top=v_top + _uniform(rng, -0.015, 0.015),
                bottom=v_bot + (0.025 if side > 0 else 0.0) + _uniform(rng, -0.015, 0.015),
                medial_top=medial_top + _uniform(rng, -0.006, 0.006),
                medial_bottom=medial_bottom + _uniform(rng, -0.008, 0.008),
                apex_round=_uniform(rng, 0.03, 0.05),
                width=lung_scale * _uniform(rng, 0.26, 0.31),
                dome=_uniform(rng, 0.035, 0.07),
                cardiophrenic_rise=_uniform(rng, 0.015, 0.04),
            )
        )
    left, right = lungs  # image left / image right
    lateral_max = max(float(lung.lateral_at(lung.bottom)) for lung in lungs)

    # --- body outline (rendered at low resolution: it is smooth anyway) -------------------------
    hs, ws = h // _LOW + 1, w // _LOW + 1
    neck = _uniform(rng, 0.075, 0.1)
    v_neck = _uniform(rng, 0.0, 0.05)
    v_shoulder = max(v_top + _uniform(rng, -0.02, 0.04), 0.07)
    shoulder = lateral_max + _uniform(rng, 0.07, 0.13)
    wall_mid = lateral_max + _uniform(rng, 0.045, 0.09)
    wall_bottom = wall_mid - _uniform(rng, -0.01, 0.04)
    half = [
        (neck, -0.05),
        (neck, v_neck),
        (neck + 0.025, v_neck + 0.045),
        (neck + 0.08, v_neck + 0.075),
        (shoulder - 0.16, v_shoulder - 0.035),
        (shoulder - 0.08, v_shoulder - 0.01),
        (shoulder - 0.025, v_shoulder + 0.03),
        (shoulder, v_shoulder + 0.1),
        (wall_mid + 0.01, v_shoulder + 0.25),
        (wall_mid, 0.62),
        (wall_bottom, 1.05),
    ]
    outline = [(cx / w - d, v) for d, v in half] + [(cx / w + d, v) for d, v in reversed(half)]
    pts = np.array([(u * ws, v * hs) for u, v in outline], dtype=np.float64)
    body_small = np.zeros((hs, ws), np.uint8)
    cv2.fillPoly(body_small, [np.round(pts).astype(np.int32)], 1)
    body_small = (_blur(body_small.astype(np.float32), 0.03 * ws) > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(body_small, cv2.DIST_L2, 3)
    thickness_small = 1.0 - np.exp(-dist / (0.07 * ws))
    body_soft_small = _blur(body_small.astype(np.float32), 0.006 * ws + 0.5)

    # --- lungs, heart, aortic knob ----------------------------------------------------------------
    heart_angle = _uniform(rng, 22.0, 38.0)
    heart_a = _uniform(rng, 0.16, 0.2) * w
    heart_b = _uniform(rng, 0.09, 0.115) * h
    th = math.radians(heart_angle)
    heart_extent_y = math.hypot(heart_a * math.sin(th), heart_b * math.cos(th))
    heart_cx = cx + _uniform(rng, 0.05, 0.08) * w
    heart_cy = (right.bottom - right.cardiophrenic_rise + _uniform(rng, 0.0, 0.02)) * h - heart_extent_y
    heart = np.zeros((h, w), np.uint8)
    cv2.ellipse(heart, (round(heart_cx), round(heart_cy)), (round(heart_a), round(heart_b)), heart_angle, 0, 360, 1, -1)
    knob_r = _uniform(rng, 0.018, 0.028) * w
    knob_c = (round(cx + (right.medial_top + 0.005) * w), round((right.top + _uniform(rng, 0.14, 0.19)) * h))
    lung_mask = np.zeros((h, w), np.uint8)
    raw_lungs = np.zeros((h, w), np.uint8)
    for lung in lungs:
        one = np.zeros((h, w), np.uint8)
        cv2.fillPoly(one, [lung.polygon(cx, w, h)], 1)
        raw_lungs |= one
        one &= 1 - heart
        if lung.side > 0:
            cv2.circle(one, knob_c, round(knob_r), 0, -1)
        lung_mask |= _largest_component(one)

    # --- intensity layers -------------------------------------------------------------------------
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    # centres of the low-resolution pixels: rows as fractions of the height, columns in full-resolution pixels
    ys_small = (np.arange(hs, dtype=np.float32) + 0.5) / hs
    xs_small = (np.arange(ws, dtype=np.float32) + 0.5) * (w / ws) - 0.5
    background = _uniform(rng, 0.02, 0.08)
    tissue = _uniform(rng, 0.4, 0.5)
    tissue_gain = _uniform(rng, 0.14, 0.2)
    small = background + body_soft_small * (tissue - background) + tissue_gain * thickness_small * body_soft_small
    # mediastinum, neck and heart: one dense central mass (max, so overlaps do not saturate), widening
    # towards the heart; the abdomen below the domes is about as dense, so the heart merges into it
    diaphragm_v = 0.5 * (left.bottom + right.bottom) - 0.5 * (left.dome + right.dome)
    widen = np.clip((ys_small - v_top) / (diaphragm_v - v_top), 0.0, 1.0)[:, None]
    medi_w = _uniform(rng, 0.07, 0.09) * w * (1.0 + 0.5 * widen)
    medi_y = np.clip((diaphragm_v + 0.08 - ys_small) / 0.08, 0.0, 1.0)[:, None]
    medi = medi_y * np.exp(-(((xs_small[None, :] - cx) / medi_w) ** 4))
    heart_small = _blur(cv2.resize(heart.astype(np.float32), (ws, hs), interpolation=cv2.INTER_AREA), 0.01 * ws)
    dense = np.maximum(medi, _uniform(rng, 0.85, 1.0) * heart_small)
    abdomen = np.clip((ys_small - (diaphragm_v - 0.03)) / 0.06, 0.0, 1.0)[:, None]
    dense_gain = _uniform(rng, 0.12, 0.16)
    small += np.maximum(dense_gain * dense, _uniform(rng, 0.8, 1.0) * dense_gain * abdomen) * body_soft_small
    image = _upsample(small.astype(np.float32), h, w)
    dense_full = _upsample(dense.astype(np.float32), h, w)

    # spine: a band with vertebral bodies, disc spaces and pedicles
    spine_w = _uniform(rng, 0.035, 0.045) * w
    spine_x = 0.5 - 0.5 * np.tanh((np.abs(xs - cx) - spine_w) / (0.008 * w + 1.0))
    period = (v_bot - v_top) / _uniform(rng, 9.5, 11.0) * h
    phase = _uniform(rng, 0.0, 2 * math.pi)
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * ys / period + phase)
    spine_y = np.clip((ys / h - 0.02) / 0.05, 0.0, 1.0)
    pedicle_x = np.exp(-(((np.abs(xs - cx) - 0.72 * spine_w) / (0.18 * spine_w)) ** 2))
    pedicle_y = (0.5 + 0.5 * np.cos(2 * np.pi * ys / period + phase + 0.6)) ** 6
    spine = np.outer(spine_y * (0.6 + 0.4 * wave**0.5), spine_x) + 0.5 * np.outer(spine_y * pedicle_y, pedicle_x)
    image += _uniform(rng, 0.05, 0.08) * spine.astype(np.float32)

    # trachea and main bronchi: a faint dark tube over the upper spine
    airway = np.zeros((h, w), np.uint8)
    carina = (round(cx + 0.01 * w), round((v_top + _uniform(rng, 0.18, 0.24)) * h))
    tw = max(2, round(_uniform(rng, 0.022, 0.03) * w))
    cv2.line(airway, (round(cx), 0), carina, 1, tw)
    cv2.line(airway, carina, (round(carina[0] - 0.07 * w), round(carina[1] + 0.06 * h)), 1, max(1, tw * 2 // 3))
    cv2.line(airway, carina, (round(carina[0] + 0.07 * w), round(carina[1] + 0.08 * h)), 1, max(1, tw * 2 // 3))
    image -= _uniform(rng, 0.05, 0.09) * _blur(airway.astype(np.float32), 0.006 * w + 0.5)

    # lung fields: darker towards the centre of each field and below the apex
    lung_soft = _blur(lung_mask.astype(np.float32), 0.006 * w + 0.6)
    inner = cv2.distanceTransform(lung_mask, cv2.DIST_L2, 3)
    depth_profile = 0.55 + 0.45 * (1.0 - np.exp(-inner / (0.035 * w)))
    apex_fade = np.clip((ys / h - v_top) / 0.16, 0.0, 1.0)[:, None]
    depth = _uniform(rng, 0.33, 0.42)
    image -= depth * lung_soft * depth_profile * (0.7 + 0.3 * apex_fade)

    # gastric air bubble under the left hemidiaphragm (image right), sometimes
    if rng.random() < 0.5:
        bubble = np.zeros((h, w), np.uint8)
        bc = (round(cx + _uniform(rng, 0.12, 0.2) * w), round((right.bottom + _uniform(rng, 0.03, 0.06)) * h))
        cv2.ellipse(bubble, bc, (round(0.045 * w), round(0.025 * h)), 0, 0, 360, 1, -1)
        image -= _uniform(rng, 0.08, 0.15) * _blur(bubble.astype(np.float32), 0.01 * w)

    # hilar vessels: branching lines from each hilum into the lung
    vessels = np.zeros((h, w), np.float32)
    unit = 0.006 * w
    for lung in lungs:
        hv = lung.top + _uniform(rng, 0.36, 0.44) * (lung.bottom - lung.top)
        hx = cx + lung.side * (lung.medial_top + 0.03) * w
        cv2.ellipse(vessels, (round(hx), round(hv * h)), (round(0.025 * w), round(0.05 * h)), 0, 0, 360, 0.6, -1)
        for _ in range(int(rng.integers(12, 18))):
            angle = _uniform(rng, -70.0, 80.0)  # 0 = lateral, positive = downwards
            reach = _uniform(rng, 0.45, 0.95) * float(lung.lateral_at(hv)) * w
            x0, y0 = hx, hv * h
            thick = _uniform(rng, 1.6, 2.6) * unit
            for _seg in range(3):
                angle += _uniform(rng, -18.0, 18.0)
                length = reach / 3.0
                x1 = x0 + lung.side * length * math.cos(math.radians(angle))
                y1 = y0 + length * math.sin(math.radians(angle)) * 1.1
                cv2.line(
                    vessels, (round(x0), round(y0)), (round(x1), round(y1)), 1.0, max(1, round(thick)), cv2.LINE_AA
                )
                x0, y0, thick = x1, y1, thick * 0.6
    image += _uniform(rng, 0.05, 0.08) * _blur(vessels, 0.5 * unit + 0.4) * lung_soft

    # ribs: posterior arcs from the spine out to the chest wall, fainter anterior ribs sloping medially down
    posterior = np.zeros((h, w), np.float32)
    anterior = np.zeros((h, w), np.float32)
    rib_t = max(2, round(_uniform(rng, 0.018, 0.024) * h))
    cortex_t = max(1, rib_t - max(2, rib_t // 2))
    n_ribs = int(rng.integers(9, 11))
    spacing = (v_bot - v_top) / (n_ribs - 0.8)
    t = np.linspace(0.0, 1.0, 28)
    for lung in lungs:
        start = lung.top - _uniform(rng, 0.03, 0.05)
        rise = _uniform(rng, 0.035, 0.055)
        drop = _uniform(rng, 0.1, 0.14)
        for k in range(n_ribs):
            v0 = start + k * spacing + _uniform(rng, -0.006, 0.006)
            reach = float(lung.lateral_at(v0 + 0.03)) + 0.03
            d = 0.02 + t * (reach - 0.02)
            v = v0 - rise * np.sin(np.pi * t * 0.8) + drop * t**2.6
            pts = np.round(np.stack([cx + lung.side * d * w, v * h], axis=1)).astype(np.int32)
            cv2.polylines(posterior, [pts], False, 1.0, rib_t, cv2.LINE_AA)
            cv2.polylines(posterior, [pts], False, 0.65, cortex_t, cv2.LINE_AA)
        for k in range(1, 7):
            v0 = start + (k + 0.6) * spacing
            lat = float(lung.lateral_at(v0)) + 0.01
            d = lat - t * (lat - 0.12)
            v = v0 + 0.09 * t**1.3 - 0.02 * np.sin(np.pi * t)
            pts = np.round(np.stack([cx + lung.side * d * w, v * h], axis=1)).astype(np.int32)
            cv2.polylines(anterior, [pts], False, 1.0, max(1, rib_t - 1), cv2.LINE_AA)
    cage_small = cv2.resize(raw_lungs, (ws, hs), interpolation=cv2.INTER_NEAREST)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, round(0.05 * ws)) | 1,) * 2)
    cage_small = _blur(cv2.dilate(cage_small, kernel).astype(np.float32), 0.01 * ws + 0.5)
    cage = _upsample(cage_small, h, w)
    rib_gain = _uniform(rng, 0.085, 0.11)
    image += cage * (1.0 - 0.6 * dense_full) * _blur(rib_gain * posterior + 0.4 * rib_gain * anterior, 0.0025 * w + 0.4)

    # clavicles: S-shaped bars from the sternal notch out and up to the shoulders
    clav = np.zeros((h, w), np.float32)
    clav_v = v_top + _uniform(rng, 0.05, 0.09)
    for side in (-1, 1):
        d = 0.04 + t * (lateral_max - 0.02)
        v = clav_v - (0.07 + _uniform(rng, -0.015, 0.015)) * t + 0.012 * np.sin(2 * np.pi * t)
        pts = np.round(np.stack([cx + side * d * w, v * h], axis=1)).astype(np.int32)
        ct = max(2, round(_uniform(rng, 0.028, 0.036) * h))
        cv2.polylines(clav, [pts], False, 1.0, ct, cv2.LINE_AA)
        cv2.polylines(clav, [pts], False, 0.75, max(1, ct // 2), cv2.LINE_AA)
    image += _uniform(rng, 0.12, 0.16) * _blur(clav, 0.003 * w + 0.5) * _upsample(body_soft_small, h, w)
    return image, lung_mask


def lower_zone_opacities(rng: np.random.Generator, lung_mask: np.ndarray, lung_soft: np.ndarray) -> np.ndarray:
    """Soft field in 0..1: 1-3 blotchy peripheral blobs in the lower lung zones, zero outside the lungs.

    Nothing reaches above the middle row of the box around both lungs.
    """
    h, w = lung_mask.shape
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(lung_mask, connectivity=8)
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    rows = np.flatnonzero(lung_mask.any(axis=1))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    mid = y0 + 0.5 * (y1 - y0)
    ramp = np.clip((np.arange(h, dtype=np.float32) - (mid + 0.03 * (y1 - y0))) / (0.08 * (y1 - y0)), 0.0, 1.0)
    allowed = lung_soft * (lung_mask > 0) * ramp[:, None]
    hs, ws = h // _LOW + 1, w // _LOW + 1
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        comp = int(order[int(rng.integers(0, len(order)))])
        _, by, bw, bh = (int(v) for v in stats[comp, :4])
        lateral_left = centroids[comp][0] < w / 2  # image-left lung: its lateral edge is its left edge
        for _attempt in range(8):
            y = int(by + _uniform(rng, 0.68, 0.88) * bh)
            cols = np.flatnonzero(labels[y] == comp)
            if cols.size and y > mid:
                break
        else:
            continue
        span = cols[-1] - cols[0]
        into = _uniform(rng, 0.1, 0.32) * span
        x = cols[0] + into if lateral_left else cols[-1] - into
        radius = _uniform(rng, 0.2, 0.3) * bw / _LOW
        blob = np.zeros((hs, ws), np.float32)
        for _lobe in range(int(rng.integers(4, 9))):
            ox, oy = rng.normal(0.0, 0.45 * radius, size=2)
            axes = (max(1, round(_uniform(rng, 0.3, 0.7) * radius)), max(1, round(_uniform(rng, 0.3, 0.6) * radius)))
            centre = (round(x / _LOW + ox), round(y / _LOW + oy))
            cv2.ellipse(blob, centre, axes, _uniform(rng, 0, 180), 0, 360, _uniform(rng, 0.6, 1.0), -1)
        blob = _blur(blob, 0.35 * radius)
        mottle = _blur(rng.standard_normal((hs, ws)).astype(np.float32), max(0.6, 0.16 * radius))
        mottle /= float(mottle.std()) + 1e-6
        blob *= np.clip(0.78 + 0.25 * mottle, 0.4, 1.15)
        blob = np.clip(_upsample(blob, h, w), 0.0, None) * allowed
        peak = float(blob.max())
        if peak > 1e-3:
            field = np.maximum(field, np.minimum(blob * (1.25 / peak), 1.0))
    return field


def diffuse_opacities(rng: np.random.Generator, lung_mask: np.ndarray, lung_soft: np.ndarray) -> np.ndarray:
    """Soft field in 0..1: a bilateral, widespread hazy opacity over most of both lungs (upper
    zones included), patchy at low frequency, denser towards the hila and finely mottled (an
    interstitial / ground-glass look); zero outside the lungs."""
    h, w = lung_mask.shape
    inside = lung_mask > 0
    hs, ws = h // _LOW + 1, w // _LOW + 1
    patches = _smooth_noise(rng, hs, ws, int(rng.integers(5, 9)))
    patches = np.clip(0.8 + 0.28 * patches, 0.4, 1.25)
    cols = np.flatnonzero(inside.any(axis=0))
    rows = np.flatnonzero(inside.any(axis=1))
    x0, x1, y0, y1 = cols[0] / _LOW, (cols[-1] + 1) / _LOW, rows[0] / _LOW, (rows[-1] + 1) / _LOW
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    centre_x, half = (x0 + x1) / 2, max(1.0, (x1 - x0) / 2)
    medial = np.clip(1.0 - np.abs(xx - centre_x) / half, 0.0, 1.0)  # 1 at the midline, 0 laterally
    hilar_row = y0 + _uniform(rng, 0.4, 0.55) * (y1 - y0)
    vertical = np.exp(-0.5 * ((yy - hilar_row) / (0.45 * (y1 - y0) + 1e-6)) ** 2)
    weight = (0.7 + 0.3 * medial) * (0.75 + 0.25 * vertical)
    field = _upsample((patches * weight).astype(np.float32), h, w)
    reticular = _blur(rng.standard_normal((h, w)).astype(np.float32), 0.004 * w + 0.8)
    reticular /= float(reticular.std()) + 1e-6
    field = np.clip(field * (1.0 + 0.18 * reticular), 0.0, None) * lung_soft * inside
    level = float(np.quantile(field[inside], 0.9)) if inside.any() else 0.0
    if level <= 1e-6:
        return np.zeros((h, w), np.float32)
    return np.minimum(field / level, 1.0).astype(np.float32)


def make_phantom(
    seed: int,
    positive: bool,
    height: int | None = None,
    width: int | None = None,
    *,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
    pathology: str = "lower_zone",
) -> Phantom:
    """Deterministic for a given (seed, positive, height, width); height/width None -> drawn from seed.

    With both None the height is drawn from ``size_range`` and the width from the same range with
    an aspect (width / height) in 0.8-1.25; with one given the other is drawn to match. The
    anatomy, size, rotation and noise depend on the seed only, so ``make_phantom(s, True)`` is
    ``make_phantom(s, False)`` plus opacities. ``seed`` must be a non-negative integer.
    ``pathology`` (positives only): ``"lower_zone"`` (the default: 1-3 lower-zone blobs) or
    ``"diffuse"`` (bilateral widespread haze).
    """
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if pathology not in PATHOLOGIES:
        raise ValueError(f"pathology must be one of {PATHOLOGIES}, got {pathology!r}")
    anatomy_seq, lesion_seq = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(anatomy_seq)
    h, w = _draw_size(rng, height, width, size_range)
    image, lung_mask = _render_anatomy(rng, h, w)

    # a few degrees of patient rotation; image and masks move together
    angle = _uniform(rng, -4.0, 4.0)
    centre = (w / 2 + _uniform(rng, -0.03, 0.03) * w, h / 2 + _uniform(rng, -0.03, 0.03) * h)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rotated = cv2.warpAffine(lung_mask.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    lung_mask = _largest_two(rotated > 0.5)
    lung_soft = _blur(lung_mask.astype(np.float32), 0.006 * w + 0.6)

    # acquisition: everything below comes from ``rng`` whatever ``positive`` is
    shade_mult = 1.0 + _uniform(rng, 0.04, 0.08) * _smooth_noise(rng, h, w, 4)
    shade_add = _uniform(rng, 0.02, 0.04) * _smooth_noise(rng, h, w, 6)
    mottle = _blur(rng.standard_normal((h, w), dtype=np.float32), 1.2 * w / 512)
    mottle *= _uniform(rng, 0.012, 0.02) / (float(mottle.std()) + 1e-6)
    gamma = _uniform(rng, 0.85, 1.2)
    contrast = _uniform(rng, 0.9, 1.15)
    brightness = _uniform(rng, -0.05, 0.05)
    sharpness = _uniform(rng, 0.5, 1.1) * max(h, w) / 512
    grain = _uniform(rng, 0.006, 0.012)
    noise = rng.standard_normal((h, w), dtype=np.float32)

    opacity = np.zeros((h, w), np.float32)
    if positive:
        lesion_rng = np.random.default_rng(lesion_seq)
        if pathology == "diffuse":
            opacity = diffuse_opacities(lesion_rng, lung_mask, lung_soft)
            image += _uniform(lesion_rng, 0.2, 0.27) * opacity
        else:
            opacity = lower_zone_opacities(lesion_rng, lung_mask, lung_soft)
            image += _uniform(lesion_rng, 0.26, 0.34) * opacity
    opacity_mask = (opacity >= 0.3) & (lung_mask > 0)
    if positive and not opacity_mask.any():  # cannot happen with two real lung fields; keep the contract anyway
        raise RuntimeError(f"seed {seed}: no room for an opacity ({pathology}) in the lungs")

    image = image * shade_mult + shade_add + mottle
    image = np.clip(image, 0.0, 1.0) ** gamma
    image = contrast * (image - 0.5) + 0.5 + brightness
    image = _blur(image, sharpness) + grain * noise
    image8 = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return Phantom(
        image=image8,
        lung_mask=(lung_mask > 0).astype(np.uint8) * 255,
        opacity_mask=opacity_mask.astype(np.uint8) * 255,
        label=int(bool(positive)),
        pathology=pathology if positive else None,
    )


def _largest_two(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest 8-connected components (the lungs) of a boolean mask, as uint8 {0, 1}."""
    mask = mask.astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 3:
        return mask
    keep = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    return np.isin(labels, keep).astype(np.uint8)


def _write_png(destination: Path, image: np.ndarray) -> None:
    with atomic_path(destination) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"could not write {destination}")


def write_phantom_set(
    output: Path,
    count: int,
    seed: int = 0,
    positive_fraction: float = 0.5,
    patients: int | None = None,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
) -> Path:
    """Write `count` phantoms: output/images/<name>.png, output/masks/<name>.png (lung mask 0/255),
    output/opacities/<name>.png, and output/labels.csv with columns file,label,patient_id
    (file relative to output, e.g. images/phantom_0003.png; label 'Positive'/'Negative';
    patient_id: with `patients` given, several images share a patient id (patient_0007), else one
    patient per image). Names are phantom_0000.png ... Returns output/labels.csv.
    Deterministic for a seed; writes each file atomically.

    Without ``patients`` exactly ``round(count * positive_fraction)`` images are positive. With
    ``patients`` (capped at ``count``) every patient gets at least one image, image counts per
    patient differ by at most one, and a patient's images share one label: exactly
    ``round(patients * positive_fraction)`` patients are positive, so the image fraction is only
    close to ``positive_fraction``. Each image has its own anatomy seed, also within a patient.
    """
    output = Path(output)
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    if patients is not None and int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(int(seed))
    if patients is None:
        patient_of = np.arange(count)
        labels = np.zeros(count, dtype=np.int64)
        labels[: round(count * positive_fraction)] = 1
        rng.shuffle(labels)
    else:
        n_patients = min(int(patients), count)
        patient_of = np.arange(count) % max(n_patients, 1)
        rng.shuffle(patient_of)
        patient_labels = np.zeros(n_patients, dtype=np.int64)
        patient_labels[: round(n_patients * positive_fraction)] = 1
        rng.shuffle(patient_labels)
        labels = patient_labels[patient_of] if count else np.zeros(0, dtype=np.int64)
    image_seeds = rng.integers(0, 2**63 - 1, size=count, dtype=np.int64)

    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id"])
    for i in range(count):
        name = f"phantom_{i:04d}.png"
        phantom = make_phantom(int(image_seeds[i]), bool(labels[i]), size_range=size_range)
        _write_png(output / "images" / name, phantom.image)
        _write_png(output / "masks" / name, phantom.lung_mask)
        _write_png(output / "opacities" / name, phantom.opacity_mask)
        writer.writerow([f"images/{name}", LABEL_NAMES[phantom.label], f"patient_{int(patient_of[i]):04d}"])
    labels_csv = output / "labels.csv"
    write_text(labels_csv, rows.getvalue())
    return labels_csv


def class_phantom(seed: int, name: str, **kwargs) -> Phantom:
    """The phantom of one class of :data:`PHANTOM_CLASSES` (``Normal``: a negative)."""
    if name not in PHANTOM_CLASSES:
        raise ValueError(f"unknown phantom class {name!r}; choose one of {sorted(PHANTOM_CLASSES)}")
    pathology = PHANTOM_CLASSES[name]
    return make_phantom(seed, pathology is not None, pathology=pathology or "lower_zone", **kwargs)


def write_class_set(
    output: Path,
    count: int,
    seed: int = 0,
    classes: tuple[str, ...] = tuple(PHANTOM_CLASSES),
    patients: int | None = None,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
) -> Path:
    """The multi-class :func:`write_phantom_set`: the same files and ``labels.csv`` columns
    (file,label,patient_id), ``label`` the class name (``Diffuse``, ``LowerZone``, ``Normal``).
    Classes are as balanced as ``count`` allows (counts differ by at most one), shuffled by the
    seed; with ``patients``, a patient's images share one class. Deterministic for a seed."""
    output = Path(output)
    count = int(count)
    classes = tuple(classes)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"need two or more distinct classes, got {classes}")
    for name in classes:
        if name not in PHANTOM_CLASSES:
            raise ValueError(f"unknown phantom class {name!r}; choose from {sorted(PHANTOM_CLASSES)}")
    if patients is not None and int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(int(seed))
    if patients is None:
        patient_of = np.arange(count)
        labels = np.arange(count) % len(classes)
        rng.shuffle(labels)
    else:
        n_patients = min(int(patients), count)
        patient_of = np.arange(count) % max(n_patients, 1)
        rng.shuffle(patient_of)
        patient_labels = np.arange(n_patients) % len(classes)
        rng.shuffle(patient_labels)
        labels = patient_labels[patient_of] if count else np.zeros(0, dtype=np.int64)
    image_seeds = rng.integers(0, 2**63 - 1, size=count, dtype=np.int64)

    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id"])
    for i in range(count):
        name = f"phantom_{i:04d}.png"
        label = classes[int(labels[i])]
        phantom = class_phantom(int(image_seeds[i]), label, size_range=size_range)
        _write_png(output / "images" / name, phantom.image)
        _write_png(output / "masks" / name, phantom.lung_mask)
        _write_png(output / "opacities" / name, phantom.opacity_mask)
        writer.writerow([f"images/{name}", label, f"patient_{int(patient_of[i]):04d}"])
    labels_csv = output / "labels.csv"
    write_text(labels_csv, rows.getvalue())
    return labels_csv
