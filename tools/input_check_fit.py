"""Fitting the input check's model and measuring it on images it never saw.

Used by ``benchmarks/bench_input_check.py`` (``--fit`` writes ``assets/input_check.json``; ``--cv``
measures the procedure) and by the held-out test. The images come as ``describe`` rows
(:func:`deepcovidxr.lungs.input_check.describe`) with a *kind* per row (``frontal_*``, ``lateral``,
``ct``, ``photo_*``) and a patient *group*; augmented copies (:func:`augment`) carry the group
of their original, so a split by group never puts a film and its copy on both sides.

The model: a logistic regression (scikit-learn, L2, ``C``) on the ``FEATURES`` plus, for the
image's and the lung map's 16 px thumbnails, the residual and Mahalanobis distance in a PCA of
the frontal films' thumbnails; every column is mapped to a standard normal through its fitted
quantiles. Logistic regression on these generalised across patient splits where extra-trees did
not (patient splits of ../shared/data: extra-trees flagged 59 % of unseen CT slices over 10
splits, this model 96-98 % over 20), because lateral and CT films are
few (10 and 31, from 16 patients) and trees carve them out of the photos instead.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np

from deepcovidxr.lungs.input_check import (
    FEATURES,
    PCA_PARTS,
    THUMB,
    distances,
    gaussianize,
    model_arrays,
    normalise_thumbs,
    predict,
)

COMPONENTS = 20  # principal components of the frontal thumbnails
THRESHOLD = 0.3  # on the model's probability; chosen on the patient-split cross-validation
C = 1.0  # inverse L2 strength
LEVELS = 101  # quantiles kept per column
# Each kind's total weight in the fit, whatever its count: the few lateral and CT films weigh as
# much as hundreds of photos, and every frontal source as much as the others.
KIND_WEIGHT = {"ct": 0.2, "lateral": 0.2}
FRONTAL_WEIGHT = 0.5
OTHER_WEIGHT = 0.05
NON_FRONTAL_COPIES = 10  # augmented copies of every lateral and CT film in the fit
FRONTAL_COPY_PERCENT = 50  # and of this share of the frontal films, one each


def is_frontal(kinds: Sequence[str]) -> np.ndarray:
    return np.array([str(kind).startswith("frontal") for kind in kinds])


def in_half(group: str, salt: str = "", percent: int = 50) -> bool:
    """Whether a patient group falls in the first ``percent`` of a split (SHA-1, stable)."""
    return int(hashlib.sha1(f"{salt}{group}".encode()).hexdigest(), 16) % 100 < percent


def seed_of(name: str, copy: int) -> int:
    return int(hashlib.sha1(f"{name}#{copy}".encode()).hexdigest()[:8], 16)


def augment(gray: np.ndarray, seed: int) -> np.ndarray:
    """A seeded copy as another scanner or export might give it: mirrored or not, rotated
    +-12 degrees, scaled 0.9-1.15, cropped up to 12 % per side, gamma 0.7-1.4."""
    rng = np.random.default_rng(seed)
    height, width = gray.shape[:2]
    if rng.random() < 0.5:
        gray = gray[:, ::-1]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(-12, 12), rng.uniform(0.9, 1.15))
    gray = cv2.warpAffine(np.ascontiguousarray(gray), matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    top, left, bottom, right = (int(rng.uniform(0, 0.12) * side) for side in (height, width, height, width))
    gray = gray[top : height - bottom, left : width - right]
    gamma = rng.uniform(0.7, 1.4)
    return np.ascontiguousarray((255 * (gray / 255.0) ** gamma).astype(np.uint8))


def copies(kind: str, name: str) -> int:
    """How many augmented copies of this image the fit adds."""
    if kind in ("lateral", "ct"):
        return NON_FRONTAL_COPIES
    if kind.startswith("frontal") and in_half(name, "copy:", FRONTAL_COPY_PERCENT):
        return 1
    return 0


def kind_weights(kinds: Sequence[str]) -> np.ndarray:
    """Sample weights giving each kind its total (``KIND_WEIGHT``, ``FRONTAL_WEIGHT``, ``OTHER_WEIGHT``)."""
    kinds = np.asarray([str(k) for k in kinds])
    weights = np.ones(len(kinds))
    for kind in set(kinds):
        chosen = kinds == kind
        total = FRONTAL_WEIGHT if kind.startswith("frontal") else KIND_WEIGHT.get(kind, OTHER_WEIGHT)
        weights[chosen] = total * len(kinds) / chosen.sum()
    return weights


def fit_model(
    rows: np.ndarray,
    kinds: Sequence[str],
    fitted_on: Sequence[str],
    components: int = COMPONENTS,
    c: float = C,
    threshold: float = THRESHOLD,
) -> dict:
    """The JSON-ready model (``input_check.load_model`` reads it) fitted on ``describe`` rows."""
    from sklearn.linear_model import LogisticRegression

    rows = np.asarray(rows, np.float64)
    frontal = is_frontal(kinds)
    n, area = len(FEATURES), THUMB * THUMB
    pca = {}
    for index, name in enumerate(PCA_PARTS):
        x = normalise_thumbs(rows[frontal, n + index * area : n + (index + 1) * area])
        mean = x.mean(axis=0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        pca[name] = {
            "mean": _rounded(mean),
            "components": _rounded(vt[:components]),
            "variance": _rounded(singular[:components] ** 2 / (len(x) - 1)),
        }
    arrays = {name: {k: np.asarray(v) for k, v in part.items()} for name, part in pca.items()}
    raw = distances(arrays, rows)
    quantiles = np.percentile(raw, np.linspace(0, 100, LEVELS), axis=0)
    regression = LogisticRegression(C=c, max_iter=5000)
    regression.fit(gaussianize(raw, quantiles), ~frontal, sample_weight=kind_weights(kinds))
    return {
        "model": f"sklearn LogisticRegression(C={c}) on quantile-normalised features + thumbnail PCA distances",
        "features": list(FEATURES),
        "thumb": THUMB,
        "pca": pca,
        "quantiles": _rounded(quantiles),
        "coef": _rounded(regression.coef_[0]),
        "intercept": float(regression.intercept_[0]),
        "threshold": threshold,
        "fitted_on": sorted(set(fitted_on)),
    }


def cross_validate(
    rows: np.ndarray,
    kinds: Sequence[str],
    groups: Sequence[str],
    extra: tuple[np.ndarray, Sequence[str], Sequence[str]] | None = None,
    splits: int = 20,
    threshold: float = THRESHOLD,
) -> dict[str, tuple[int, int]]:
    """Flagged / held-out counts per kind, pooled over ``splits`` patient splits: each fits on half
    the groups (plus the augmented copies ``extra`` = (rows, kinds, groups) of those groups only)
    and scores the originals of the other half."""
    rows, kinds, groups = np.asarray(rows), np.asarray(kinds), np.asarray(groups)
    counts: dict[str, list[int]] = {}
    for split in range(splits):
        salt = f"cv{split}:"
        fit = np.array([in_half(g, salt) for g in groups])
        fit_rows, fit_kinds = rows[fit], list(kinds[fit])
        if extra is not None:
            extra_rows, extra_kinds, extra_groups = (np.asarray(a) for a in extra)
            chosen = np.array([in_half(g, salt) for g in extra_groups], bool)
            fit_rows = np.vstack([fit_rows, extra_rows[chosen]])
            fit_kinds += list(extra_kinds[chosen])
        model = model_arrays(fit_model(fit_rows, fit_kinds, [], threshold=threshold))
        flagged = predict(model, rows[~fit]) >= threshold
        for kind, hit in zip(kinds[~fit], flagged, strict=True):
            count = counts.setdefault(str(kind), [0, 0])
            count[0] += int(hit)
            count[1] += 1
    return {kind: (a, b) for kind, (a, b) in sorted(counts.items())}


def _rounded(values: np.ndarray) -> list:
    """Six significant digits: the JSON stays small and the model reads what was written."""
    return np.vectorize(lambda v: float(f"{v:.6g}"), otypes=[float])(np.asarray(values)).tolist()
