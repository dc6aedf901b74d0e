"""Is this a frontal chest radiograph? One cheap check per image, on what the crop already has.

API (for every stage that reads raw images; crop_img.py and build_dataset.py use it, predict and
visSample are meant to call it the same way)::

    from deepcovidxr.lungs import input_check
    value = input_check.check(gray, probability, info)   # "ok" or a reason, the report's input_check
    if value != input_check.OK: ...                       # leave the image out, or keep and flag it

* ``gray``: the image as read (``imageio.read_gray_info``), uint8 H x W, any size.
* ``probability``: the lung U-Net's output for it, the 256 x 256 map ``LungCropper.probabilities``
  returns and ``lungs.cropper.locate`` takes (so the check costs no extra U-Net pass).
* ``info``: the reader's ``ReadInfo`` (optional): it tells whether the DICOM robust window was used.

The values (``VALUES``), in the order they are tested:

* ``too_small``: shorter side under ``MIN_SIDE`` pixels (the members see 224 / 331 px views).
* ``window_failed``: the header window missed the pixels, the robust fallback was used
  (``ReadInfo.window`` starts with ``robust``, see ``dicom.py``) and the result still has under
  ``dicom.MIN_MIDTONE_FRACTION`` of its pixels between black and white.
* ``blank``: (almost) uniform: 1st..99th percentile spread under ``BLANK_SPREAD`` grey levels.
* ``not_frontal_chest``: :func:`non_frontal_score` >= the threshold shipped with the model.
* ``ok``: none of these.

``non_frontal_score`` is a logistic regression (fitted with scikit-learn, evaluated here in numpy
from ``assets/input_check.json``, no pickle) on :func:`describe`: the ``FEATURES`` (the U-Net map's
lung geometry: the two largest lung fields' areas, area ratio, left/right positions, vertical
offset, box, mirror symmetry, how sure the map is; the grey levels in and between them, since the
mediastinum is brighter than the lungs and on CT the lungs are as dark as the air outside; image
statistics: edges, entropy, left-right mirror correlation, dark border) plus how far the image's
and the lung map's 16 px thumbnails lie from the principal components of frontal films; every
column goes through its fitted quantiles to a standard normal. ``tools.input_check_fit``
fits it (frontal films of ``../shared/data/cxr``, ``lungmasks``, ``nih/images`` and our phantoms;
lateral films and CT slices of ``nonfrontal`` with augmented copies; generated photos
(:func:`synthetic_photo`) and scikit-image's sample pictures (``NATURAL_PHOTOS``)) and measures
the procedure on patients it never saw; the JSON records the files it was fitted on and those
held-out figures. ``benchmarks/bench_input_check.py`` runs both.
"""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr.contract import shipped

OK = "ok"
TOO_SMALL = "too_small"
WINDOW_FAILED = "window_failed"
BLANK = "blank"
NOT_FRONTAL_CHEST = "not_frontal_chest"
VALUES = (OK, TOO_SMALL, WINDOW_FAILED, BLANK, NOT_FRONTAL_CHEST)

MIN_SIDE = 100  # pixels; the smallest frontal film in ../shared/data is ~150 px
BLANK_SPREAD = 8  # grey levels between the 1st and 99th percentile
MIN_MIDTONE_FRACTION = 0.05  # as dicom.MIN_MIDTONE_FRACTION
MODEL_ASSET = ("input_check.json",)
SIZE = 256  # the U-Net's input size: the probability map's and the features' scale
THUMB = 16  # thumbnails of the image and of the lung map: 16 px did as well as 32 and 64 in the fit
PCA_PARTS = ("image", "lungs")  # the two thumbnails, in the order describe() appends them

FEATURES = (
    "a1", "a2", "rest", "mass", "sure", "fuzzy", "xl", "xr", "dy", "ymean", "ratio", "bw", "bh", "y0", "y1",
    "sym", "lung_mean", "lung_std", "out_mean", "med_contrast", "std", "dark", "bright", "entropy",
    "top_level", "edge", "edge_hi", "lap", "corner_mean", "lr_sym", "aspect", "mirror", "lung_lift",
    "lung_tex", "ring_dark",
)  # fmt: skip

# scikit-image's sample pictures that ship inside the package (no download): natural "photos".
NATURAL_PHOTOS = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "page", "text", "horse",
    "hubble_deep_field", "immunohistochemistry", "retina", "cat", "logo", "colorwheel", "clock", "grass",
    "gravel", "brick", "cell", "shepp_logan_phantom", "checkerboard", "binary_blobs",
)  # fmt: skip


def check(gray: np.ndarray, probability: np.ndarray, info=None) -> str:
    """The ``input_check`` value of one image (see the module docstring); thread-safe, ~2 ms."""
    height, width = gray.shape[:2]
    if min(height, width) < MIN_SIDE:
        return TOO_SMALL
    sample = gray[:: max(1, height // 256), :: max(1, width // 256)]
    if info is not None and getattr(info, "fallback", False):
        if float(np.mean((sample > 0) & (sample < 255))) < MIN_MIDTONE_FRACTION:
            return WINDOW_FAILED
    cumulative = np.cumsum(np.bincount(sample.ravel(), minlength=256)) / sample.size
    low, high = np.searchsorted(cumulative, 0.01), np.searchsorted(cumulative, 0.99)  # 1st, 99th percentile
    if high - low < BLANK_SPREAD:
        return BLANK
    model = load_model()
    return NOT_FRONTAL_CHEST if non_frontal_score(gray, probability, model) >= model["threshold"] else OK


def non_frontal_score(gray: np.ndarray, probability: np.ndarray, model: dict | None = None) -> float:
    """The model's probability that the image is not a frontal chest film (0..1)."""
    return float(predict(model or load_model(), describe(gray, probability)[None])[0])


# ---------------------------------------------------------------- features


def features(gray: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """``FEATURES`` of one image, float64, from the image and its 256 px U-Net map."""
    return describe(gray, probability)[: len(FEATURES)]


def describe(gray: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """Everything the model reads of one image, float64: ``FEATURES``, then the image's and the lung
    map's ``THUMB`` x ``THUMB`` thumbnails (grey levels 0..1, probabilities)."""
    from deepcovidxr.imaging.geometry import resize_gray

    height, width = gray.shape[:2]
    small = gray if gray.shape == (SIZE, SIZE) else resize_gray(gray, SIZE, SIZE)
    p = np.asarray(probability, np.float32)
    values = _features(small, p, height, width)
    thumbs = [cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA) for image in (small, p)]
    named = [values[name] for name in FEATURES]
    return np.concatenate([named, thumbs[0].ravel() / 255.0, thumbs[1].ravel()]).astype(np.float64)


def _features(gray256: np.ndarray, p: np.ndarray, height: int, width: int) -> dict[str, float]:
    g = gray256.astype(np.float32) / 255.0
    f: dict[str, float] = {}
    binary = cv2.morphologyEx((p > 0.5).astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    areas = [stats[i, cv2.CC_STAT_AREA] / (SIZE * SIZE) for i in order]
    a1 = areas[0] if areas else 0.0
    a2 = areas[1] if len(areas) > 1 else 0.0
    f.update(a1=a1, a2=a2, rest=float(sum(areas[2:])), mass=float(p.mean()))
    f["sure"] = float((p > 0.9).mean()) / max(float((p > 0.5).mean()), 1e-3)
    f["fuzzy"] = float(((p > 0.1) & (p < 0.9)).mean())
    if order:
        kept = order[:2]
        first, second = centroids[kept[0]], centroids[kept[-1]]
        left, right = (first, second) if first[0] <= second[0] else (second, first)
        f.update(
            xl=left[0] / SIZE,
            xr=right[0] / SIZE,
            dy=abs(first[1] - second[1]) / SIZE,
            ymean=(first[1] + second[1]) / (2 * SIZE),
            ratio=a2 / a1,
        )
        x0 = min(stats[i, cv2.CC_STAT_LEFT] for i in kept)
        y0 = min(stats[i, cv2.CC_STAT_TOP] for i in kept)
        x1 = max(stats[i, cv2.CC_STAT_LEFT] + stats[i, cv2.CC_STAT_WIDTH] for i in kept)
        y1 = max(stats[i, cv2.CC_STAT_TOP] + stats[i, cv2.CC_STAT_HEIGHT] for i in kept)
    else:
        f.update(xl=0.5, xr=0.5, dy=0.0, ymean=0.5, ratio=0.0)
        x0 = y0 = x1 = y1 = SIZE // 2
    f.update(bw=(x1 - x0) / SIZE, bh=(y1 - y0) / SIZE, y0=y0 / SIZE, y1=y1 / SIZE)
    mask = np.isin(labels, order[:2]) if order else np.zeros(g.shape, bool)
    if mask.any():
        mid = round(float(SIZE * (f["xl"] + f["xr"]) / 2))
        columns = 2 * mid - np.arange(SIZE)
        inside_image = (columns >= 0) & (columns < SIZE)
        flipped = np.zeros_like(mask)
        flipped[:, inside_image] = mask[:, columns[inside_image]]
        f["sym"] = float((mask & flipped).sum() / max(1, (mask | flipped).sum()))
        lungs = g[mask]
        outside = g[~mask]
        f.update(lung_mean=float(lungs.mean()), lung_std=float(lungs.std()))
        f["out_mean"] = float(outside.mean()) if outside.size else 0.0
        lo, hi = int(SIZE * f["xl"]), int(SIZE * f["xr"])
        rows = slice(y0, max(y0 + 1, y1))
        band = g[rows, lo:hi][~mask[rows, lo:hi]] if hi > lo else np.zeros(0, np.float32)
        f["med_contrast"] = float(np.median(band) - np.median(lungs)) if band.size else 0.0
    else:
        f.update(sym=0.0, lung_mean=0.0, lung_std=0.0, out_mean=float(g.mean()), med_contrast=0.0)
    f.update(std=float(g.std()), dark=float((g < 0.04).mean()), bright=float((g > 0.96).mean()))
    hist = np.bincount(gray256.ravel(), minlength=256) / gray256.size
    nonzero = hist[hist > 0]
    f["entropy"] = float(-(nonzero * np.log2(nonzero)).sum())
    f["top_level"] = float(hist.max())
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)
    f.update(edge=float(magnitude.mean()), edge_hi=float((magnitude > 0.5).mean()))
    laplacian = np.abs(cv2.Laplacian(g, cv2.CV_32F))
    f["lap"] = float(laplacian.mean())
    corners = [g[:32, :32], g[:32, -32:], g[-32:, :32], g[-32:, -32:]]
    f["corner_mean"] = float(np.mean([c.mean() for c in corners]))
    profile = g.mean(axis=0)
    f["lr_sym"] = float(np.corrcoef(profile, profile[::-1])[0, 1]) if profile.std() > 1e-6 else 1.0
    f["aspect"] = float(np.log(width / height))
    f["mirror"] = _mirror_correlation(gray256)
    if mask.sum() > 50:
        f["lung_lift"] = float(np.median(g[mask]) - np.percentile(g, 5))
        f["lung_tex"] = float(laplacian[mask].mean())
    else:
        f.update(lung_lift=0.0, lung_tex=0.0)
    ring = np.concatenate([g[:8].ravel(), g[-8:].ravel(), g[:, :8].ravel(), g[:, -8:].ravel()])
    f["ring_dark"] = float((ring < 0.1).mean())
    return f


def _mirror_correlation(gray256: np.ndarray) -> float:
    """Best correlation of the 64 px image with its left-right mirror, axis within +-8 px of the centre."""
    g = cv2.resize(gray256, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    best = -1.0
    for shift in range(-8, 9, 2):
        mirrored = np.roll(g[:, ::-1], shift, axis=1)
        lo, hi = max(0, shift), 64 + min(0, shift)
        a, b = g[:, lo:hi].ravel(), mirrored[:, lo:hi].ravel()
        if a.std() > 1e-6 and b.std() > 1e-6:
            best = max(best, float(np.corrcoef(a, b)[0, 1]))
    return best


# ---------------------------------------------------------------- the model (JSON, numpy)


@functools.cache
def load_model(path: Path | None = None) -> dict:
    """The shipped model (``assets/input_check.json``) with its arrays as numpy arrays."""
    data = json.loads(Path(path or shipped.asset(*MODEL_ASSET)).read_text(encoding="utf-8"))
    if tuple(data.get("features", ())) != FEATURES or data.get("thumb") != THUMB or "coef" not in data:
        raise RuntimeError(f"{path or MODEL_ASSET}: fitted on other features than this version computes")
    return model_arrays(data)


def model_arrays(data: dict) -> dict:
    """A model as its JSON holds it, with the arrays ``predict`` reads as numpy arrays."""
    arrays = {key: np.asarray(data[key], np.float64) for key in ("quantiles", "coef")}
    pca = {name: {k: np.asarray(v, np.float64) for k, v in part.items()} for name, part in data["pca"].items()}
    return {**data, **arrays, "pca": pca}


def model_inputs(model: dict, rows: np.ndarray) -> np.ndarray:
    """The logistic model's inputs from ``describe`` rows: :func:`distances`, each column mapped
    through the fit's quantiles to a standard normal (robust to heavy tails)."""
    return gaussianize(distances(model["pca"], rows), model["quantiles"])


def distances(pca: dict, rows: np.ndarray) -> np.ndarray:
    """The features plus, per thumbnail, how far it lies from the frontal films' principal
    components (``pca``: one part per ``PCA_PARTS`` name; residual, Mahalanobis distance)."""
    rows = np.atleast_2d(np.asarray(rows, np.float64))
    n, area = len(FEATURES), THUMB * THUMB
    parts = [rows[:, :n]]
    for index, name in enumerate(PCA_PARTS):
        parts.append(pca_distances(pca[name], rows[:, n + index * area : n + (index + 1) * area]))
    return np.hstack(parts)


def predict(model: dict, rows: np.ndarray) -> np.ndarray:
    """The probability of "not a frontal chest film", one per ``describe`` row."""
    logit = model_inputs(model, rows) @ model["coef"] + model["intercept"]
    return 1.0 / (1.0 + np.exp(-np.clip(logit, -60, 60)))


def pca_distances(pca: dict, thumbs: np.ndarray) -> np.ndarray:
    """(residual power, log(1 + Mahalanobis^2)) of contrast-normalised thumbnails in a PCA of
    frontal films (``pca``: mean, components, variance)."""
    x = normalise_thumbs(thumbs)
    z = (x - pca["mean"]) @ pca["components"].T
    residual = x - pca["mean"] - z @ pca["components"]
    return np.stack([(residual**2).mean(axis=1), np.log1p(((z**2) / pca["variance"]).sum(axis=1))], axis=1)


def normalise_thumbs(thumbs: np.ndarray) -> np.ndarray:
    """Each thumbnail to zero mean and unit spread: the PCA sees shape, not exposure."""
    return (thumbs - thumbs.mean(axis=1, keepdims=True)) / (thumbs.std(axis=1, keepdims=True) + 1e-6)


def gaussianize(x: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Each column through its fitted quantiles to uniform, then to a standard normal (clipped)."""
    levels = np.linspace(0.0, 1.0, quantiles.shape[0])
    uniform = np.stack([np.interp(x[:, j], quantiles[:, j], levels) for j in range(x.shape[1])], axis=1)
    return np.interp(np.clip(uniform, 1e-3, 1 - 1e-3), *_normal_table())


@functools.cache
def _normal_table() -> tuple[np.ndarray, np.ndarray]:
    grid = np.linspace(1e-3, 1 - 1e-3, 2001)
    return grid, np.array([statistics.NormalDist().inv_cdf(float(u)) for u in grid])


# ---------------------------------------------------------------- "photos" for fitting and tests


def _luma(rgb: np.ndarray) -> np.ndarray:
    """RGB -> gray with ITU-R 601 weights (Pillow's "L")."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    return np.clip(np.round(0.299 * r + 0.587 * g + 0.114 * b), 0, 255).astype(np.uint8)


def natural_photo(name: str) -> np.ndarray:
    """One of scikit-image's sample pictures (``NATURAL_PHOTOS``) as gray uint8."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) - image.min()) / max(1e-9, float(np.ptp(image)))).astype(np.uint8)
    return _luma(image[..., :3]) if image.ndim == 3 else image


def synthetic_photo(seed: int) -> np.ndarray:
    """A seeded gray "photo" that is not a radiograph: a smooth colour scene, a gradient with shapes,
    a texture, a text page, geometric shapes or a landscape (``seed % 6``), 180..1100 px."""
    rng = np.random.default_rng(seed)
    height = int(rng.integers(180, 1100))
    width = int(height * rng.uniform(0.6, 1.8))
    kind = seed % 6
    if kind == 0:
        image = _smooth_field(rng, height, width, int(rng.integers(2, 8)))
    elif kind == 1:
        yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
        image = (rng.random(3) * (1 - t) + rng.random(3) * t).astype(np.float32)
        image = _shapes(rng, image, int(rng.integers(0, 6)))
    elif kind == 2:
        cells = int(rng.integers(8, 80))
        image = _smooth_field(rng, height, width, cells) * 0.7 + 0.3 * rng.random((height, width, 3)).astype(np.float32)
        if rng.random() < 0.5:
            yy, xx = np.mgrid[0:height, 0:width]
            frequency, angle = rng.uniform(0.02, 0.3), rng.uniform(0, np.pi)
            wave = 0.5 + 0.5 * np.sin(frequency * (np.cos(angle) * xx + np.sin(angle) * yy))
            image = image * 0.6 + 0.4 * wave[..., None]
    elif kind == 3:
        dark = rng.random() < 0.3
        image = np.full((height, width, 3), 0.1 if dark else rng.uniform(0.8, 1.0), np.float32)
        image = _text(rng, image, (0.9, 0.9, 0.9) if dark else (0.05, 0.05, 0.05))
    elif kind == 4:
        image = (_smooth_field(rng, height, width, 2) * rng.uniform(0.2, 1.0)).astype(np.float32)
        image = _shapes(rng, image, int(rng.integers(3, 25)))
    else:
        horizon = int(height * rng.uniform(0.3, 0.7))
        image = np.empty((height, width, 3), np.float32)
        sky, ground = rng.random(3), rng.random(3) * 0.6
        image[:horizon] = sky * (1 - 0.4 * np.linspace(0, 1, horizon)[:, None, None])
        image[horizon:] = ground
        image += 0.25 * (_smooth_field(rng, height, width, 24) - 0.5)
        image = _shapes(rng, image, int(rng.integers(1, 8)))
        if rng.random() < 0.5:
            image = _text(rng, image, tuple(rng.random(3)), lines=2)
    image = np.clip(image + rng.normal(0, rng.uniform(0, 0.04), image.shape), 0, 1)
    return _luma((image * 255).astype(np.uint8))


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    small = rng.random((cells, max(2, int(cells * width / height)), 3)).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, 3)


def _shapes(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    image = np.ascontiguousarray(image, np.float32)
    height, width = image.shape[:2]
    for _ in range(count):
        colour = tuple(float(c) for c in rng.random(3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(max(3, min(height, width) // 30), max(4, min(height, width) // 3)))
        shape = rng.integers(0, 3)
        if shape == 0:
            cv2.circle(image, (cx, cy), r, colour, -1)
        elif shape == 1:
            cv2.rectangle(image, (cx - r, cy - r // 2), (cx + r, cy + r), colour, -1)
        else:
            points = (rng.random((int(rng.integers(3, 7)), 2)) * [width, height]).astype(np.int32)
            cv2.fillPoly(image, [points], colour)
    return image


def _text(rng: np.random.Generator, image: np.ndarray, colour: tuple, lines: int | None = None) -> np.ndarray:
    height, width = image.shape[:2]
    lines = lines or int(rng.integers(3, 25))
    scale = max(0.4, height / 600 * rng.uniform(0.6, 1.6))
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,")
    canvas = np.ascontiguousarray(np.clip(image * 255, 0, 255).astype(np.uint8))
    ink = tuple(int(255 * c) for c in colour)
    for i in range(lines):
        text = "".join(rng.choice(letters, int(rng.integers(8, 60))))
        origin = (int(rng.integers(0, max(1, width // 8))), int((i + 1) * height / (lines + 1)))
        cv2.putText(canvas, text, origin, int(rng.integers(0, 8)), scale, ink, max(1, int(scale * 2)), cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0
