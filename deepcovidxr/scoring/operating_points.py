"""Operating points of the binary task: thresholds on the raw ensemble score chosen on Validation,
``--threshold`` resolved against them, and sensitivity/specificity at a threshold with bootstrap
intervals.

Thresholds are on the **raw ensemble score**, the column the stages already cut at 0.5 (``Binary
pred``), never on the calibrated probability: the score exists for every weights file (calibrated
or not), and Platt and temperature maps are strictly increasing (for a positive slope), so
``score >= t`` and ``apply(score) >= apply(t)`` select the same images; a stage that wants to show a
threshold on the probability scale shows ``calibration.apply([t])``. An image is positive when
``score >= t`` (as in :mod:`deepcovidxr.scoring.metrics`). Arguments are in scikit-learn's order,
``(y_true, y_score)``. A multi-class decision is the argmax and has no operating point
(:mod:`deepcovidxr.scoring.task`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.metrics import (
    _as_binary_problem,
    _percentile_interval,
    _require_both_classes,
    resample_indices,
    youden_threshold,
)

# Sensitivity targets of the named operating points, in percent (integers: ceil(90 * P / 100) is
# exact where ceil(0.9 * P) is not, e.g. 0.9 * 10 = 9.000000000000002).
SENSITIVITY_TARGETS = {"sens90": 90, "sens95": 95}
OPERATING_POINTS = ("youden", *SENSITIVITY_TARGETS)


def sensitivity_threshold(y_true: Any, y_score: Any, percent: int) -> float:
    """The highest observed score ``t`` with sensitivity (``score >= t`` among positives) of at least
    ``percent`` %: the k-th highest positive score, ``k = ceil(percent * P / 100)``. Any higher
    threshold misses the target; this one has the best specificity among those meeting it (ties in
    the scores can only raise the sensitivity above the target)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    y, s = _as_binary_problem(y_true, y_score)
    positives = np.sort(s[y == 1])[::-1]
    if positives.size == 0:
        raise UsageError("a sensitivity threshold needs positive cases; there are none")
    k = -(-percent * positives.size // 100)  # exact integer ceil
    return float(positives[k - 1])


def operating_points(y_true: Any, y_score: Any) -> dict[str, float]:
    """``{"youden": t, "sens90": t, "sens95": t}`` on the raw ensemble scores of the Validation
    split (thresholds are compared with the raw score, ``score >= t``)."""
    y, s = _as_binary_problem(y_true, y_score)
    _require_both_classes(y, "operating points")
    points = {"youden": youden_threshold(y, s)}
    for name, percent in SENSITIVITY_TARGETS.items():
        points[name] = sensitivity_threshold(y, s, percent)
    return points


def resolve_threshold(spec: str | float, stored: dict[str, Any] | None, dropped: str = "") -> float:
    """The threshold a ``--threshold`` value names: ``youden`` / ``sens90`` / ``sens95`` (read from the
    operating points stored with the ensemble weights) or a number in [0, 1] (``"0.5"``).

    ``stored`` is the operating-points mapping (:func:`operating_points`' result, as saved), or None
    when the weights file has none (written before calibration existed): then a named point is a
    UsageError saying what to run. ``dropped``: why the stored points do not belong to the members
    (a subset of those they were fitted for), which a named point is refused with.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
    else:
        text = str(spec).strip().lower()
        if text in OPERATING_POINTS:
            return _named(text, stored, dropped)
        try:
            value = float(text)
        except ValueError:
            named = ", ".join(OPERATING_POINTS)
            raise UsageError(f"threshold {spec!r} is neither one of {named} nor a number") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"threshold {spec!r} must be a number in [0, 1] (a score is positive when >= it)")
    return value


def _named(name: str, stored: dict[str, Any] | None, dropped: str) -> float:
    if dropped:
        raise UsageError(
            f"--threshold {name} needs an operating point fitted for these members, but {dropped}; "
            "or pass a number, e.g. --threshold 0.5"
        )
    if not stored or name not in stored or stored[name] is None:
        have = ", ".join(sorted(stored)) if stored else "none"
        raise UsageError(
            f"threshold {name!r} needs the operating points fitted on Validation, but the ensemble "
            f"weights hold none for it (stored: {have}); they were written before calibration existed. "
            "Rerun ensemble.py (it fits the calibration and the youden/sens90/sens95 thresholds on "
            "the Validation split), or pass a number, e.g. --threshold 0.5"
        )
    return float(stored[name])


def _bootstrap_proportion(hits: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resampled means of the 0/1 array ``hits`` (cases drawn with replacement)."""
    return np.concatenate([hits[drawn].mean(axis=1) for drawn in resample_indices(rng, hits.size, n_boot)])


def sens_spec_at(
    y_true: Any, y_score: Any, threshold: float, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Sensitivity and specificity at ``threshold`` (positive when ``score >= threshold``) with
    percentile bootstrap intervals.

    The bootstrap is stratified: positives are resampled among the positives, negatives among the
    negatives (each proportion's denominator is its class count, fixed by the study design; no
    resample is ever empty). Seeded with ``numpy.random.default_rng(seed)``: positives' resamples are
    drawn first, then the negatives'. Returns ``{"threshold", "n", "positives",
    "sensitivity": {"point", "low", "high"}, "specificity": {...}}``; a class with no cases gives NaN.
    A percentile interval of a proportion of 0 or 1 collapses to that point (e.g. [1, 1]): read it
    with the class count. ``n_boot`` 0: no interval (``low`` and ``high`` None).
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y, s = _as_binary_problem(y_true, y_score)
    rng = np.random.default_rng(seed)
    predicted = s >= float(threshold)
    result: dict[str, Any] = {"threshold": float(threshold), "n": int(y.size), "positives": int(y.sum())}
    for name, mask, hit in (("sensitivity", y == 1, predicted), ("specificity", y == 0, ~predicted)):
        hits = hit[mask].astype(np.float64)
        if hits.size == 0:
            result[name] = {"point": math.nan, "low": math.nan, "high": math.nan}
            continue
        if not n_boot:
            result[name] = {"point": float(hits.mean()), "low": None, "high": None}
            continue
        low, high = _percentile_interval(_bootstrap_proportion(hits, n_boot, rng), level)
        result[name] = {"point": float(hits.mean()), "low": low, "high": high}
    return result
