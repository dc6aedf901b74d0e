"""Seeded synthetic chest-X-ray "phantoms": demo data and test fixtures for the pipeline.

Each phantom is an 8-bit frontal (PA) chest radiograph look-alike in the MONOCHROME2 convention
(air and lungs dark, bone and soft tissue bright): a rounded trunk with shoulders and neck, two
lung fields with rounded apices, costophrenic angles and diaphragm domes, a heart silhouette that
curves the medial border of the patient's left lung (image right), a mediastinum, a spine with
faint vertebrae, clavicles, posterior and anterior ribs, hilar vessels, low-frequency shading,
blur and noise. The true lung fields come back as a mask aligned with the image, so a lung
segmentation U-Net trained on real radiographs can be checked against it. The normal chest is drawn
by :mod:`deepcovidxr.synthetic.anatomy`; the opacities, acquisition and the written sets are here.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr.contract.atomic import atomic_path, write_text
from deepcovidxr.synthetic.anatomy import LOW, blur, render_anatomy, smooth_noise, uniform, upsample

DEFAULT_SIZE_RANGE: tuple[int, int] = (320, 560)
ASPECT_RANGE: tuple[float, float] = (0.8, 1.25)  # width / height
MIN_SIDE = 64
LABEL_NAMES = {0: "Negative", 1: "Positive"}
PATHOLOGIES = ("lower_zone", "diffuse")
# the three-class phantom task: class folder name -> pathology (None: no opacity); sorted names
PHANTOM_CLASSES: dict[str, str | None] = {"Diffuse": "diffuse", "LowerZone": "lower_zone", "Normal": None}


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
    hs, ws = h // LOW + 1, w // LOW + 1
    field = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        comp = int(order[int(rng.integers(0, len(order)))])
        _, by, bw, bh = (int(v) for v in stats[comp, :4])
        lateral_left = centroids[comp][0] < w / 2  # image-left lung: its lateral edge is its left edge
        for _attempt in range(8):
            y = int(by + uniform(rng, 0.68, 0.88) * bh)
            cols = np.flatnonzero(labels[y] == comp)
            if cols.size and y > mid:
                break
        else:
            continue
        span = cols[-1] - cols[0]
        into = uniform(rng, 0.1, 0.32) * span
        x = cols[0] + into if lateral_left else cols[-1] - into
        radius = uniform(rng, 0.2, 0.3) * bw / LOW
        blob = np.zeros((hs, ws), np.float32)
        for _lobe in range(int(rng.integers(4, 9))):
            ox, oy = rng.normal(0.0, 0.45 * radius, size=2)
            axes = (max(1, round(uniform(rng, 0.3, 0.7) * radius)), max(1, round(uniform(rng, 0.3, 0.6) * radius)))
            centre = (round(x / LOW + ox), round(y / LOW + oy))
            cv2.ellipse(blob, centre, axes, uniform(rng, 0, 180), 0, 360, uniform(rng, 0.6, 1.0), -1)
        blob = blur(blob, 0.35 * radius)
        mottle = blur(rng.standard_normal((hs, ws)).astype(np.float32), max(0.6, 0.16 * radius))
        mottle /= float(mottle.std()) + 1e-6
        blob *= np.clip(0.78 + 0.25 * mottle, 0.4, 1.15)
        blob = np.clip(upsample(blob, h, w), 0.0, None) * allowed
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
    hs, ws = h // LOW + 1, w // LOW + 1
    patches = smooth_noise(rng, hs, ws, int(rng.integers(5, 9)))
    patches = np.clip(0.8 + 0.28 * patches, 0.4, 1.25)
    cols = np.flatnonzero(inside.any(axis=0))
    rows = np.flatnonzero(inside.any(axis=1))
    x0, x1, y0, y1 = cols[0] / LOW, (cols[-1] + 1) / LOW, rows[0] / LOW, (rows[-1] + 1) / LOW
    yy, xx = np.mgrid[0:hs, 0:ws].astype(np.float32)
    centre_x, half = (x0 + x1) / 2, max(1.0, (x1 - x0) / 2)
    medial = np.clip(1.0 - np.abs(xx - centre_x) / half, 0.0, 1.0)  # 1 at the midline, 0 laterally
    hilar_row = y0 + uniform(rng, 0.4, 0.55) * (y1 - y0)
    vertical = np.exp(-0.5 * ((yy - hilar_row) / (0.45 * (y1 - y0) + 1e-6)) ** 2)
    weight = (0.7 + 0.3 * medial) * (0.75 + 0.25 * vertical)
    field = upsample((patches * weight).astype(np.float32), h, w)
    reticular = blur(rng.standard_normal((h, w)).astype(np.float32), 0.004 * w + 0.8)
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
    image, lung_mask = render_anatomy(rng, h, w)

    # a few degrees of patient rotation; image and masks move together
    angle = uniform(rng, -4.0, 4.0)
    centre = (w / 2 + uniform(rng, -0.03, 0.03) * w, h / 2 + uniform(rng, -0.03, 0.03) * h)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    rotated = cv2.warpAffine(lung_mask.astype(np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    lung_mask = _largest_two(rotated > 0.5)
    lung_soft = blur(lung_mask.astype(np.float32), 0.006 * w + 0.6)

    # acquisition: everything below comes from ``rng`` whatever ``positive`` is
    shade_mult = 1.0 + uniform(rng, 0.04, 0.08) * smooth_noise(rng, h, w, 4)
    shade_add = uniform(rng, 0.02, 0.04) * smooth_noise(rng, h, w, 6)
    mottle = blur(rng.standard_normal((h, w), dtype=np.float32), 1.2 * w / 512)
    mottle *= uniform(rng, 0.012, 0.02) / (float(mottle.std()) + 1e-6)
    gamma = uniform(rng, 0.85, 1.2)
    contrast = uniform(rng, 0.9, 1.15)
    brightness = uniform(rng, -0.05, 0.05)
    sharpness = uniform(rng, 0.5, 1.1) * max(h, w) / 512
    grain = uniform(rng, 0.006, 0.012)
    noise = rng.standard_normal((h, w), dtype=np.float32)

    opacity = np.zeros((h, w), np.float32)
    if positive:
        lesion_rng = np.random.default_rng(lesion_seq)
        if pathology == "diffuse":
            opacity = diffuse_opacities(lesion_rng, lung_mask, lung_soft)
            image += uniform(lesion_rng, 0.2, 0.27) * opacity
        else:
            opacity = lower_zone_opacities(lesion_rng, lung_mask, lung_soft)
            image += uniform(lesion_rng, 0.26, 0.34) * opacity
    opacity_mask = (opacity >= 0.3) & (lung_mask > 0)
    if positive and not opacity_mask.any():  # cannot happen with two real lung fields; keep the contract anyway
        raise RuntimeError(f"seed {seed}: no room for an opacity ({pathology}) in the lungs")

    image = image * shade_mult + shade_add + mottle
    image = np.clip(image, 0.0, 1.0) ** gamma
    image = contrast * (image - 0.5) + 0.5 + brightness
    image = blur(image, sharpness) + grain * noise
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


def _check_patients_and_seed(patients: int | None, seed: int) -> None:
    if patients is not None and int(patients) < 1:
        raise ValueError(f"patients must be >= 1, got {patients}")
    if int(seed) < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def _write_set(
    output: Path,
    count: int,
    seed: int,
    patients: int | None,
    labels_for: Callable[[int], np.ndarray],
    phantom_of: Callable[[int, int], tuple[Phantom, str]],
) -> Path:
    """Draw each image's patient and label (``labels_for(n)``: the unshuffled labels of ``n``
    images or patients) and its anatomy seed from ``seed``, write each phantom
    (``phantom_of(image_seed, label)`` -> the phantom and its label's name) and ``labels.csv``."""
    rng = np.random.default_rng(int(seed))
    if patients is None:
        patient_of = np.arange(count)
        labels = labels_for(count)
        rng.shuffle(labels)
    else:
        n_patients = min(int(patients), count)
        patient_of = np.arange(count) % max(n_patients, 1)
        rng.shuffle(patient_of)
        patient_labels = labels_for(n_patients)
        rng.shuffle(patient_labels)
        labels = patient_labels[patient_of] if count else np.zeros(0, dtype=np.int64)
    image_seeds = rng.integers(0, 2**63 - 1, size=count, dtype=np.int64)

    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id"])
    for i in range(count):
        name = f"phantom_{i:04d}.png"
        phantom, label = phantom_of(int(image_seeds[i]), int(labels[i]))
        _write_png(output / "images" / name, phantom.image)
        _write_png(output / "masks" / name, phantom.lung_mask)
        _write_png(output / "opacities" / name, phantom.opacity_mask)
        writer.writerow([f"images/{name}", label, f"patient_{int(patient_of[i]):04d}"])
    labels_csv = output / "labels.csv"
    write_text(labels_csv, rows.getvalue())
    return labels_csv


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
    _check_patients_and_seed(patients, seed)

    def positives(n: int) -> np.ndarray:
        labels = np.zeros(n, dtype=np.int64)
        labels[: round(n * positive_fraction)] = 1
        return labels

    def phantom(image_seed: int, label: int) -> tuple[Phantom, str]:
        drawn = make_phantom(image_seed, bool(label), size_range=size_range)
        return drawn, LABEL_NAMES[drawn.label]

    return _write_set(output, count, seed, patients, positives, phantom)


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
    _check_patients_and_seed(patients, seed)

    def balanced(n: int) -> np.ndarray:
        return np.arange(n) % len(classes)

    def phantom(image_seed: int, label: int) -> tuple[Phantom, str]:
        name = classes[label]
        return class_phantom(image_seed, name, size_range=size_range), name

    return _write_set(output, count, seed, patients, balanced, phantom)
