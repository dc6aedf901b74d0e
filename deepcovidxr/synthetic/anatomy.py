"""The normal chest of a phantom (:mod:`deepcovidxr.synthetic.phantoms`), and the drawing helpers
its opacities also use.

:func:`render_anatomy` draws a rounded trunk with shoulders and neck, two lung fields with rounded
apices, costophrenic angles and diaphragm domes, a heart silhouette that curves the medial border
of the patient's left lung (image right), a mediastinum, a spine with faint vertebrae, trachea and
bronchi, hilar vessels, posterior and anterior ribs and clavicles, and returns the true lung mask
with it. Every random choice comes from the generator it is given, in a fixed order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

LOW = 4  # low-frequency layers are rendered at 1/LOW resolution and upsampled


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Zero-mean, roughly unit-variance noise with about ``cells`` bumps across the image."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == best).astype(np.uint8)


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


def render_anatomy(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the unrotated float image (about 0..1, bright = dense) and the lung mask {0, 1}."""
    cx = w * (0.5 + uniform(rng, -0.02, 0.02))
    v_top = uniform(rng, 0.09, 0.17)
    v_bot = uniform(rng, 0.76, 0.87)
    lung_scale = uniform(rng, 0.9, 1.08)
    medial_top = uniform(rng, 0.045, 0.065)
    medial_bottom = uniform(rng, 0.05, 0.075)
    lungs = []
    for side in (-1, 1):
        lungs.append(
            _Lung(
                side=side,
                top=v_top + uniform(rng, -0.015, 0.015),
                bottom=v_bot + (0.025 if side > 0 else 0.0) + uniform(rng, -0.015, 0.015),
                medial_top=medial_top + uniform(rng, -0.006, 0.006),
                medial_bottom=medial_bottom + uniform(rng, -0.008, 0.008),
                apex_round=uniform(rng, 0.03, 0.05),
                width=lung_scale * uniform(rng, 0.26, 0.31),
                dome=uniform(rng, 0.035, 0.07),
                cardiophrenic_rise=uniform(rng, 0.015, 0.04),
            )
        )
    left, right = lungs  # image left / image right
    lateral_max = max(float(lung.lateral_at(lung.bottom)) for lung in lungs)

    # --- body outline (rendered at low resolution: it is smooth anyway) -------------------------
    hs, ws = h // LOW + 1, w // LOW + 1
    neck = uniform(rng, 0.075, 0.1)
    v_neck = uniform(rng, 0.0, 0.05)
    v_shoulder = max(v_top + uniform(rng, -0.02, 0.04), 0.07)
    shoulder = lateral_max + uniform(rng, 0.07, 0.13)
    wall_mid = lateral_max + uniform(rng, 0.045, 0.09)
    wall_bottom = wall_mid - uniform(rng, -0.01, 0.04)
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
    body_small = (blur(body_small.astype(np.float32), 0.03 * ws) > 0.5).astype(np.uint8)
    dist = cv2.distanceTransform(body_small, cv2.DIST_L2, 3)
    thickness_small = 1.0 - np.exp(-dist / (0.07 * ws))
    body_soft_small = blur(body_small.astype(np.float32), 0.006 * ws + 0.5)

    # --- lungs, heart, aortic knob ----------------------------------------------------------------
    heart_angle = uniform(rng, 22.0, 38.0)
    heart_a = uniform(rng, 0.16, 0.2) * w
    heart_b = uniform(rng, 0.09, 0.115) * h
    th = math.radians(heart_angle)
    heart_extent_y = math.hypot(heart_a * math.sin(th), heart_b * math.cos(th))
    heart_cx = cx + uniform(rng, 0.05, 0.08) * w
    heart_cy = (right.bottom - right.cardiophrenic_rise + uniform(rng, 0.0, 0.02)) * h - heart_extent_y
    heart = np.zeros((h, w), np.uint8)
    cv2.ellipse(heart, (round(heart_cx), round(heart_cy)), (round(heart_a), round(heart_b)), heart_angle, 0, 360, 1, -1)
    knob_r = uniform(rng, 0.018, 0.028) * w
    knob_c = (round(cx + (right.medial_top + 0.005) * w), round((right.top + uniform(rng, 0.14, 0.19)) * h))
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
    background = uniform(rng, 0.02, 0.08)
    tissue = uniform(rng, 0.4, 0.5)
    tissue_gain = uniform(rng, 0.14, 0.2)
    small = background + body_soft_small * (tissue - background) + tissue_gain * thickness_small * body_soft_small
    # mediastinum, neck and heart: one dense central mass (max, so overlaps do not saturate), widening
    # towards the heart; the abdomen below the domes is about as dense, so the heart merges into it
    diaphragm_v = 0.5 * (left.bottom + right.bottom) - 0.5 * (left.dome + right.dome)
    widen = np.clip((ys_small - v_top) / (diaphragm_v - v_top), 0.0, 1.0)[:, None]
    medi_w = uniform(rng, 0.07, 0.09) * w * (1.0 + 0.5 * widen)
    medi_y = np.clip((diaphragm_v + 0.08 - ys_small) / 0.08, 0.0, 1.0)[:, None]
    medi = medi_y * np.exp(-(((xs_small[None, :] - cx) / medi_w) ** 4))
    heart_small = blur(cv2.resize(heart.astype(np.float32), (ws, hs), interpolation=cv2.INTER_AREA), 0.01 * ws)
    dense = np.maximum(medi, uniform(rng, 0.85, 1.0) * heart_small)
    abdomen = np.clip((ys_small - (diaphragm_v - 0.03)) / 0.06, 0.0, 1.0)[:, None]
    dense_gain = uniform(rng, 0.12, 0.16)
    small += np.maximum(dense_gain * dense, uniform(rng, 0.8, 1.0) * dense_gain * abdomen) * body_soft_small
    image = upsample(small.astype(np.float32), h, w)
    dense_full = upsample(dense.astype(np.float32), h, w)

    # spine: a band with vertebral bodies, disc spaces and pedicles
    spine_w = uniform(rng, 0.035, 0.045) * w
    spine_x = 0.5 - 0.5 * np.tanh((np.abs(xs - cx) - spine_w) / (0.008 * w + 1.0))
    period = (v_bot - v_top) / uniform(rng, 9.5, 11.0) * h
    phase = uniform(rng, 0.0, 2 * math.pi)
    wave = 0.5 + 0.5 * np.cos(2 * np.pi * ys / period + phase)
    spine_y = np.clip((ys / h - 0.02) / 0.05, 0.0, 1.0)
    pedicle_x = np.exp(-(((np.abs(xs - cx) - 0.72 * spine_w) / (0.18 * spine_w)) ** 2))
    pedicle_y = (0.5 + 0.5 * np.cos(2 * np.pi * ys / period + phase + 0.6)) ** 6
    spine = np.outer(spine_y * (0.6 + 0.4 * wave**0.5), spine_x) + 0.5 * np.outer(spine_y * pedicle_y, pedicle_x)
    image += uniform(rng, 0.05, 0.08) * spine.astype(np.float32)

    # trachea and main bronchi: a faint dark tube over the upper spine
    airway = np.zeros((h, w), np.uint8)
    carina = (round(cx + 0.01 * w), round((v_top + uniform(rng, 0.18, 0.24)) * h))
    tw = max(2, round(uniform(rng, 0.022, 0.03) * w))
    cv2.line(airway, (round(cx), 0), carina, 1, tw)
    cv2.line(airway, carina, (round(carina[0] - 0.07 * w), round(carina[1] + 0.06 * h)), 1, max(1, tw * 2 // 3))
    cv2.line(airway, carina, (round(carina[0] + 0.07 * w), round(carina[1] + 0.08 * h)), 1, max(1, tw * 2 // 3))
    image -= uniform(rng, 0.05, 0.09) * blur(airway.astype(np.float32), 0.006 * w + 0.5)

    # lung fields: darker towards the centre of each field and below the apex
    lung_soft = blur(lung_mask.astype(np.float32), 0.006 * w + 0.6)
    inner = cv2.distanceTransform(lung_mask, cv2.DIST_L2, 3)
    depth_profile = 0.55 + 0.45 * (1.0 - np.exp(-inner / (0.035 * w)))
    apex_fade = np.clip((ys / h - v_top) / 0.16, 0.0, 1.0)[:, None]
    depth = uniform(rng, 0.33, 0.42)
    image -= depth * lung_soft * depth_profile * (0.7 + 0.3 * apex_fade)

    # gastric air bubble under the left hemidiaphragm (image right), sometimes
    if rng.random() < 0.5:
        bubble = np.zeros((h, w), np.uint8)
        bc = (round(cx + uniform(rng, 0.12, 0.2) * w), round((right.bottom + uniform(rng, 0.03, 0.06)) * h))
        cv2.ellipse(bubble, bc, (round(0.045 * w), round(0.025 * h)), 0, 0, 360, 1, -1)
        image -= uniform(rng, 0.08, 0.15) * blur(bubble.astype(np.float32), 0.01 * w)

    # hilar vessels: branching lines from each hilum into the lung
    vessels = np.zeros((h, w), np.float32)
    unit = 0.006 * w
    for lung in lungs:
        hv = lung.top + uniform(rng, 0.36, 0.44) * (lung.bottom - lung.top)
        hx = cx + lung.side * (lung.medial_top + 0.03) * w
        cv2.ellipse(vessels, (round(hx), round(hv * h)), (round(0.025 * w), round(0.05 * h)), 0, 0, 360, 0.6, -1)
        for _ in range(int(rng.integers(12, 18))):
            angle = uniform(rng, -70.0, 80.0)  # 0 = lateral, positive = downwards
            reach = uniform(rng, 0.45, 0.95) * float(lung.lateral_at(hv)) * w
            x0, y0 = hx, hv * h
            thick = uniform(rng, 1.6, 2.6) * unit
            for _seg in range(3):
                angle += uniform(rng, -18.0, 18.0)
                length = reach / 3.0
                x1 = x0 + lung.side * length * math.cos(math.radians(angle))
                y1 = y0 + length * math.sin(math.radians(angle)) * 1.1
                cv2.line(
                    vessels, (round(x0), round(y0)), (round(x1), round(y1)), 1.0, max(1, round(thick)), cv2.LINE_AA
                )
                x0, y0, thick = x1, y1, thick * 0.6
    image += uniform(rng, 0.05, 0.08) * blur(vessels, 0.5 * unit + 0.4) * lung_soft

    # ribs: posterior arcs from the spine out to the chest wall, fainter anterior ribs sloping medially down
    posterior = np.zeros((h, w), np.float32)
    anterior = np.zeros((h, w), np.float32)
    rib_t = max(2, round(uniform(rng, 0.018, 0.024) * h))
    cortex_t = max(1, rib_t - max(2, rib_t // 2))
    n_ribs = int(rng.integers(9, 11))
    spacing = (v_bot - v_top) / (n_ribs - 0.8)
    t = np.linspace(0.0, 1.0, 28)
    for lung in lungs:
        start = lung.top - uniform(rng, 0.03, 0.05)
        rise = uniform(rng, 0.035, 0.055)
        drop = uniform(rng, 0.1, 0.14)
        for k in range(n_ribs):
            v0 = start + k * spacing + uniform(rng, -0.006, 0.006)
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
    cage_small = blur(cv2.dilate(cage_small, kernel).astype(np.float32), 0.01 * ws + 0.5)
    cage = upsample(cage_small, h, w)
    rib_gain = uniform(rng, 0.085, 0.11)
    image += cage * (1.0 - 0.6 * dense_full) * blur(rib_gain * posterior + 0.4 * rib_gain * anterior, 0.0025 * w + 0.4)

    # clavicles: S-shaped bars from the sternal notch out and up to the shoulders
    clav = np.zeros((h, w), np.float32)
    clav_v = v_top + uniform(rng, 0.05, 0.09)
    for side in (-1, 1):
        d = 0.04 + t * (lateral_max - 0.02)
        v = clav_v - (0.07 + uniform(rng, -0.015, 0.015)) * t + 0.012 * np.sin(2 * np.pi * t)
        pts = np.round(np.stack([cx + side * d * w, v * h], axis=1)).astype(np.int32)
        ct = max(2, round(uniform(rng, 0.028, 0.036) * h))
        cv2.polylines(clav, [pts], False, 1.0, ct, cv2.LINE_AA)
        cv2.polylines(clav, [pts], False, 0.75, max(1, ct // 2), cv2.LINE_AA)
    image += uniform(rng, 0.12, 0.16) * blur(clav, 0.003 * w + 0.5) * upsample(body_soft_small, h, w)
    return image, lung_mask
