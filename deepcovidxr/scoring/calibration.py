"""Turning the ensemble score into a probability, and choosing operating points, on Validation only.

The ensemble score (a weighted sum of member sigmoids) ranks images well but is not a probability:
CNN members trained with class weights are over- or under-confident. This module fits a monotone map
from score to probability on the Validation split and picks thresholds there, to be applied unchanged
to Test and to new images (fitting either on Test would make the Test estimates optimistic).

Methods (``fit(scores, labels, method)``):

* ``"platt"`` (default): ``p = sigmoid(slope * logit(s) + intercept)``, fitted by maximum likelihood on
  Platt's smoothed targets (positives ``(P + 1) / (P + 2)``, negatives ``1 / (N + 2)``, Platt 1999, as
  scikit-learn's ``CalibratedClassifierCV(method="sigmoid")`` does), so a perfectly separated
  Validation set still gives a finite slope. The slope is constrained to ``>= 0``: a map that reversed
  the ranking is never fitted (a member set with no signal gets slope 0, the base rate).
* ``"temperature"``: ``p = sigmoid(logit(s) / T)`` (Guo et al. 2017, one parameter, no shift), same
  targets, ``T`` searched in ``[0.02, 50]``.
* ``"isotonic"``: scikit-learn's isotonic regression (a non-decreasing step function, clipped outside
  the fitted range). Available, not the default: on synthetic ensemble scores it was worse than Platt
  on held-out Brier score, ECE and log loss at every Validation size tried (100 to 3 000), and its
  flat steps tie images, lowering the AUC (numbers in ``fit``'s docstring).
* ``"identity"``: the score unchanged (what an ensemble weights file without a calibration means).

Scores are clipped to ``[EPS, 1 - EPS]`` before the logit, so 0 and 1 are valid inputs.

Operating points (``operating_points``) are thresholds on the **raw ensemble score**, the column the
stages already cut at 0.5 (``Binary pred``), never on the calibrated probability: the score exists for
every weights file (calibrated or not), and Platt and temperature maps are strictly increasing (for a
positive slope), so ``score >= t`` and ``apply(score) >= apply(t)`` select the same images; a stage
that wants to show a threshold on the probability scale shows ``calibration.apply([t])``. An image is
positive when ``score >= t`` (as in :mod:`deepcovidxr.scoring.metrics`).

Everything here is deterministic: no resampling except :func:`sens_spec_at`'s bootstrap, which is
seeded. Only numpy, scipy and scikit-learn are imported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepcovidxr.errors import UsageError

logger = logging.getLogger(__name__)

METHODS = ("platt", "temperature", "isotonic", "identity")
DEFAULT_METHOD = "platt"
EPS = 1e-6
# Sensitivity targets of the named operating points, in percent (integers: ceil(90 * P / 100) is
# exact where ceil(0.9 * P) is not, e.g. 0.9 * 10 = 9.000000000000002).
SENSITIVITY_TARGETS = {"sens90": 90, "sens95": 95}
OPERATING_POINTS = ("youden", *SENSITIVITY_TARGETS)
TEMPERATURE_BOUNDS = (0.02, 50.0)
_BOOTSTRAP_CELLS = 2_000_000


# ------------------------------------------------------------------------------------------- inputs


def _binary(scores: Any, labels: Any, *, probabilities: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """1-D finite float scores (in [0, 1] when ``probabilities``) and 0/1 int labels of one length."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {s.shape} and {y.shape}")
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}")
    if s.size == 0:
        raise ValueError("no cases: scores and labels are empty")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    if probabilities and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(f"scores must lie in [0, 1], got [{s.min():g}, {s.max():g}]")
    if y.dtype != bool and not np.isin(np.unique(y), (0, 1)).all():
        raise ValueError(f"labels must be 0/1 (1 = positive), got values {np.unique(y)[:10].tolist()}")
    return s, y.astype(np.int64)


def _both_classes(y: np.ndarray, what: str) -> None:
    if y.min() == y.max():
        raise UsageError(f"{what} needs both classes in the Validation labels; all {y.size} are {int(y[0])}")


def logit(scores: Any) -> np.ndarray:
    """``log(s / (1 - s))`` after clipping to ``[EPS, 1 - EPS]``."""
    s = np.clip(np.asarray(scores, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(s) - np.log1p(-s)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets: ``(P + 1) / (P + 2)`` for positives, ``1 / (N + 2)`` for negatives."""
    positives = int(labels.sum())
    negatives = labels.size - positives
    return np.where(labels == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))


def _cross_entropy(p: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1.0 - 1e-15)
    return float(-np.mean(targets * np.log(p) + (1.0 - targets) * np.log1p(-p)))


# -------------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """A fitted score -> probability map. ``apply`` is the only way to use it; ``to_dict`` /
    ``from_dict`` round-trip it through JSON (the ensemble weights file stores it).

    ``slope``/``intercept``: Platt (temperature: ``slope = 1 / T``, ``intercept = 0``; identity: 1, 0).
    ``knots_x``/``knots_y``: the isotonic step function (empty otherwise). ``n``/``positives``: the
    Validation cases it was fitted on (0 for identity).
    """

    method: str
    slope: float = 1.0
    intercept: float = 0.0
    knots_x: tuple[float, ...] = ()
    knots_y: tuple[float, ...] = ()
    n: int = 0
    positives: int = 0
    fitted_on: str = "Validation"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method == "isotonic" and (len(self.knots_x) < 1 or len(self.knots_x) != len(self.knots_y)):
            raise ValueError("an isotonic calibration needs knots_x and knots_y of the same, non-zero length")
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)):
            raise ValueError("calibration slope and intercept must be finite")

    @property
    def temperature(self) -> float:
        """``1 / slope`` (inf for a zero slope)."""
        return 1.0 / self.slope if self.slope else math.inf

    def apply(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities for raw ensemble scores in [0, 1] (any shape)."""
        s = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(s).all():
            raise ValueError("scores contain NaN or infinity")
        if self.method == "identity":
            return s.copy()
        if self.method == "isotonic":
            # sklearn's IsotonicRegression.predict with out_of_bounds="clip" is exactly this interpolation.
            return np.interp(s, np.asarray(self.knots_x), np.asarray(self.knots_y))
        return _sigmoid(self.slope * logit(s) + self.intercept)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["knots_x"], payload["knots_y"] = list(self.knots_x), list(self.knots_y)
        return payload

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Calibration:
        known = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload}
        unknown = sorted(set(payload) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown calibration fields {unknown}")
        if "method" not in known:
            raise ValueError("a calibration needs its 'method'")
        known["knots_x"] = tuple(float(v) for v in known.get("knots_x", ()))
        known["knots_y"] = tuple(float(v) for v in known.get("knots_y", ()))
        for key in ("slope", "intercept"):
            if key in known:
                known[key] = float(known[key])
        return cls(**known)


IDENTITY = Calibration("identity")


def _fit_platt(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from scipy.optimize import minimize

    x, t = logit(s), platt_targets(y)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        slope, intercept = params
        z = slope * x + intercept
        # Stable softplus form of the cross-entropy and its gradient.
        value = np.mean(np.logaddexp(0.0, z) - t * z)
        residual = _sigmoid(z) - t
        return float(value), np.array([np.mean(residual * x), np.mean(residual)])

    prior = (y.sum() + 1.0) / (y.size + 2.0)
    start = np.array([1.0, math.log(prior / (1.0 - prior))])
    result = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(0.0, None), (None, None)])
    slope, intercept = (float(v) for v in result.x)
    if not result.success:
        logger.warning("Platt scaling: optimiser stopped early (%s); using its last point", result.message)
    return slope, intercept


def _fit_temperature(s: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    x, t = logit(s), platt_targets(y)
    low, high = (math.log(v) for v in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: _cross_entropy(_sigmoid(x / math.exp(log_t)), t),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-8},
    )
    temperature = math.exp(float(result.x))
    if min(abs(result.x - low), abs(result.x - high)) < 1e-4:
        logger.warning("temperature scaling: T = %.3g is at the end of its search range", temperature)
    return temperature


def fit(scores: Any, labels: Any, method: str = DEFAULT_METHOD) -> Calibration:
    """Fit a score -> probability map on (Validation) ``scores`` in [0, 1] and 0/1 ``labels``.

    Why Platt is the default, measured on held-out data: synthetic 5-member ensembles (latent
    separation giving AUC 0.86-0.88, prevalence 0.30-0.45; members over-confident, under-confident,
    prior-shifted, or noisy and disagreeing), a Validation set of n cases drawn 50 times per size,
    every fit scored on 20 000 fresh cases from the same generator. Over-confident case, mean held-out
    Brier / ECE (10 bins):

    ====== ================ ================ ================ ================
    n      platt            temperature      isotonic         raw score
    ====== ================ ================ ================ ================
    100    0.1257 / 0.038   0.1385 / 0.107   0.1320 / 0.062   0.1446 / 0.103
    300    0.1240 / 0.023   0.1377 / 0.103   0.1270 / 0.036   0.1446 / 0.103
    1000   0.1233 / 0.014   0.1375 / 0.103   0.1248 / 0.022   0.1446 / 0.103
    3000   0.1232 / 0.011   0.1375 / 0.102   0.1240 / 0.016   0.1446 / 0.103
    ====== ================ ================ ================ ================

    The other three cases rank the same way at every size (Platt best on Brier, ECE and log loss).
    Isotonic also lowered the held-out AUC (-0.012 at n = 100, -0.001 at n = 3000: its flat steps tie
    images) and its 0/1 end steps give a log loss of 0.6-0.97 at n <= 300 against Platt's 0.39-0.46.
    Temperature scaling has no shift, so it cannot correct a prevalence or centre offset, which every
    case had. Caveat: these generators distort the probability smoothly, close to a logistic curve in
    ``logit(score)``, which suits Platt; a strongly non-sigmoid distortion on several thousand
    Validation cases is where isotonic could win. ``tests/scoring/test_calibration.py`` repeats a small version
    of this comparison. Raises UsageError when the labels hold one class only (nothing to fit).
    """
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    s, y = _binary(scores, labels)
    if method == "identity":
        return IDENTITY
    _both_classes(y, f"{method} calibration")
    n, positives = int(y.size), int(y.sum())
    if method == "platt":
        slope, intercept = _fit_platt(s, y)
        if slope == 0.0:
            logger.warning("Platt scaling: slope 0 - no signal in the Validation scores; all get the base rate")
        return Calibration("platt", slope=slope, intercept=intercept, n=n, positives=positives)
    if method == "temperature":
        temperature = _fit_temperature(s, y)
        return Calibration("temperature", slope=1.0 / temperature, intercept=0.0, n=n, positives=positives)
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
    return Calibration(
        "isotonic",
        knots_x=tuple(float(v) for v in model.X_thresholds_),
        knots_y=tuple(float(v) for v in model.y_thresholds_),
        n=n,
        positives=positives,
    )


# ------------------------------------------------------------------------------------------ metrics


def bin_index(probs: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability: ``floor(p * bins)``, the last bin closed (p = 1 -> bins - 1),
    so bin k holds ``k / bins <= p < (k + 1) / bins``."""
    return np.minimum(np.floor(probs * bins).astype(np.int64), bins - 1)


def expected_calibration_error(probs: Any, labels: Any, bins: int = 10) -> float:
    """ECE: ``sum_k (n_k / n) * |mean(p in bin k) - fraction of positives in bin k|`` over equal-width
    bins of [0, 1] (:func:`bin_index`), empty bins contributing nothing (Naeini et al. 2015; Guo et al.
    2017's definition for the positive class)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, y = _binary(probs, labels)
    index = bin_index(p, bins)
    gap = np.abs(np.bincount(index, weights=p, minlength=bins) - np.bincount(index, weights=y, minlength=bins))
    return float(gap.sum() / p.size)  # sum_k |sum p - sum y| / n == sum_k n_k/n |mean p - mean y|


def brier_score(probs: Any, labels: Any) -> float:
    """Mean squared difference between the probability and the 0/1 label (sklearn's ``brier_score_loss``)."""
    p, y = _binary(probs, labels)
    return float(np.mean((p - y) ** 2))


def log_loss(probs: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels, probabilities clipped to [1e-15, 1 - 1e-15]."""
    p, y = _binary(probs, labels)
    return _cross_entropy(p, y.astype(np.float64))


# --------------------------------------------------------------------------------- operating points


def youden_threshold(scores: Any, labels: Any) -> float:
    """The observed score ``t`` maximising sensitivity + specificity - 1 for ``score >= t``; ties go
    to the highest such threshold (fewest positive calls)."""
    s, y = _binary(scores, labels, probabilities=False)
    _both_classes(y, "the Youden threshold")
    order = np.argsort(-s, kind="stable")
    s_desc, y_desc = s[order], y[order]
    # The last index of each run of equal scores: thresholding at that score calls the whole run positive.
    ends = np.flatnonzero(np.r_[s_desc[1:] != s_desc[:-1], True])
    tp = np.cumsum(y_desc)[ends]
    fp = np.cumsum(1 - y_desc)[ends]
    j = tp / y.sum() - fp / (y.size - y.sum())
    return float(s_desc[ends[int(np.argmax(j))]])  # argmax: first maximum = highest threshold


def sensitivity_threshold(scores: Any, labels: Any, percent: int) -> float:
    """The highest observed score ``t`` with sensitivity (``score >= t`` among positives) of at least
    ``percent`` %: the k-th highest positive score, ``k = ceil(percent * P / 100)``. Any higher
    threshold misses the target; this one has the best specificity among those meeting it (ties in
    the scores can only raise the sensitivity above the target)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    s, y = _binary(scores, labels, probabilities=False)
    positives = np.sort(s[y == 1])[::-1]
    if positives.size == 0:
        raise UsageError("a sensitivity threshold needs positive cases; there are none")
    k = -(-percent * positives.size // 100)  # exact integer ceil
    return float(positives[k - 1])


def operating_points(scores: Any, labels: Any) -> dict[str, float]:
    """``{"youden": t, "sens90": t, "sens95": t}`` on the raw ensemble ``scores`` of the Validation
    split (see the module docstring: thresholds are compared with the raw score, ``score >= t``)."""
    s, y = _binary(scores, labels, probabilities=False)
    _both_classes(y, "operating points")
    points = {"youden": youden_threshold(s, y)}
    for name, percent in SENSITIVITY_TARGETS.items():
        points[name] = sensitivity_threshold(s, y, percent)
    return points


def resolve_threshold(spec: str | float, stored: dict[str, Any] | None) -> float:
    """The threshold a ``--threshold`` value names: ``youden`` / ``sens90`` / ``sens95`` (read from the
    operating points stored with the ensemble weights) or a number in [0, 1] (``"0.5"``).

    ``stored`` is the operating-points mapping (``operating_points``' result, as saved), or None when the
    weights file has none (written before calibration existed): then a named point is a UsageError
    saying what to run.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        value = float(spec)
    else:
        text = str(spec).strip().lower()
        if text in OPERATING_POINTS:
            if not stored or text not in stored or stored[text] is None:
                have = ", ".join(sorted(stored)) if stored else "none"
                raise UsageError(
                    f"threshold {text!r} needs the operating points fitted on Validation, but the ensemble "
                    f"weights hold none for it (stored: {have}); they were written before calibration existed. "
                    "Rerun ensemble.py (it fits the calibration and the youden/sens90/sens95 thresholds on "
                    "the Validation split), or pass a number, e.g. --threshold 0.5"
                )
            value = float(stored[text])
        else:
            try:
                value = float(text)
            except ValueError:
                raise UsageError(
                    f"threshold {spec!r} is neither one of {', '.join(OPERATING_POINTS)} nor a number"
                ) from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"threshold {spec!r} must be a number in [0, 1] (a score is positive when >= it)")
    return value


# --------------------------------------------------------------------------- sensitivity/specificity


def _bootstrap_proportion(hits: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` resampled means of the 0/1 array ``hits`` (cases drawn with replacement)."""
    n = hits.size
    chunk = max(1, _BOOTSTRAP_CELLS // max(1, n))
    values = []
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        values.append(hits[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(values)


def sens_spec_at(
    scores: Any, labels: Any, threshold: float, n_boot: int = 2000, seed: int = 0, level: float = 0.95
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
    s, y = _binary(scores, labels, probabilities=False)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2.0
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
        low, high = np.quantile(_bootstrap_proportion(hits, n_boot, rng), [alpha, 1.0 - alpha])
        result[name] = {"point": float(hits.mean()), "low": float(low), "high": float(high)}
    return result


# ------------------------------------------------------------------------------- one Validation fit


@dataclass(frozen=True)
class ValidationFit:
    """What the ensemble stage stores beside the weights: the calibration and the operating points
    (thresholds on the raw score), both from the Validation split, plus the calibration's effect there."""

    calibration: Calibration
    operating_points: dict[str, float]
    validation: dict[str, float]  # ece/brier before and after, on the Validation cases themselves

    def to_dict(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_dict(),
            "operating_points": dict(self.operating_points),
            "validation": dict(self.validation),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ValidationFit:
        return cls(
            calibration=Calibration.from_dict(payload["calibration"]),
            operating_points={k: float(v) for k, v in payload["operating_points"].items()},
            validation={k: float(v) for k, v in payload.get("validation", {}).items()},
        )


def fit_from_split(
    validation_scores: Any, validation_labels: Any, method: str = DEFAULT_METHOD, bins: int = 10
) -> ValidationFit:
    """Calibration + operating points from the Validation split's ensemble scores and labels only.

    The arguments are the only data used: call it with the Validation arrays, then apply the result to
    Test (``calibration.apply``; thresholds compared with the raw Test scores)."""
    s, y = _binary(validation_scores, validation_labels)
    calibration = fit(s, y, method)
    calibrated = calibration.apply(s)
    summary = {
        "n": float(y.size),
        "positives": float(y.sum()),
        "ece_raw": expected_calibration_error(s, y, bins),
        "ece_calibrated": expected_calibration_error(calibrated, y, bins),
        "brier_raw": brier_score(s, y),
        "brier_calibrated": brier_score(calibrated, y),
    }
    return ValidationFit(calibration, operating_points(s, y), summary)


def held_out_report(
    fit: ValidationFit, scores: Any, labels: Any, n_boot: int = 2000, seed: int = 0, bins: int = 10
) -> dict:
    """How a Validation fit does on another split (Test): expected calibration error and Brier
    score of the raw score and of the calibrated probability, and sensitivity/specificity with 95 %
    bootstrap intervals at the stored thresholds (and at the original's 0.5)."""
    s, y = _binary(scores, labels)
    calibrated = fit.calibration.apply(s)
    thresholds = {"0.5": 0.5, **fit.operating_points}
    return {
        "calibration_method": fit.calibration.method,
        "ece_raw": expected_calibration_error(s, y, bins),
        "ece_calibrated": expected_calibration_error(calibrated, y, bins),
        "brier_raw": brier_score(s, y),
        "brier_calibrated": brier_score(calibrated, y),
        "operating_points": {
            name: sens_spec_at(s, y, threshold, n_boot=n_boot, seed=seed) for name, threshold in thresholds.items()
        },
    }
