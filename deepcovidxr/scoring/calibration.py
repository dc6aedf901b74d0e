"""Turning the binary ensemble score into a probability, on Validation only.

The ensemble score (a weighted sum of member sigmoids) ranks images well but is not a probability:
CNN members trained with class weights are over- or under-confident. This module fits a monotone map
from score to probability on the Validation split, to be applied unchanged
to Test and to new images (fitting either on Test would make the Test estimates optimistic).

Methods (``fit(y_true, y_score, method)``):

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

Operating points (thresholds on the raw score) live in :mod:`deepcovidxr.scoring.operating_points`;
:class:`ValidationFit` holds both, as the ensemble weights file stores them. Every function takes
scikit-learn's order, ``(y_true, y_score)``. The multi-class counterpart (one temperature over the
softmax rows) is :mod:`deepcovidxr.scoring.multiclass_calibration`; :mod:`deepcovidxr.scoring.task`
chooses between the two.

Everything here is deterministic (the bootstrap of :func:`held_out_report` is seeded). Only numpy,
scipy and scikit-learn are imported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.metrics import _as_binary_problem, _require_both_classes, brier_score
from deepcovidxr.scoring.operating_points import operating_points, sens_spec_at

logger = logging.getLogger(__name__)

METHODS = ("platt", "temperature", "isotonic", "identity")
DEFAULT_METHOD = "platt"
EPS = 1e-6
TEMPERATURE_BOUNDS = (0.02, 50.0)


# ------------------------------------------------------------------------------------------- inputs


def _probabilities(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 int labels and 1-D finite scores in [0, 1] of one length (metrics' checks plus the range)."""
    y, p = _as_binary_problem(y_true, y_prob)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"scores must lie in [0, 1], got [{p.min():g}, {p.max():g}]")
    return y, p


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


def fit(y_true: Any, y_score: Any, method: str = DEFAULT_METHOD) -> Calibration:
    """Fit a score -> probability map on (Validation) 0/1 ``y_true`` and ``y_score`` in [0, 1].

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
    y, s = _probabilities(y_true, y_score)
    if method == "identity":
        return IDENTITY
    _require_both_classes(y, f"{method} calibration on Validation")
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


def binned_gap(hits: np.ndarray, confidence: np.ndarray, bins: int) -> float:
    """``sum_k (n_k / n) |mean(confidence in bin k) - mean(hits in bin k)|`` over equal-width bins of
    the confidence (:func:`bin_index`), empty bins contributing nothing: the expected calibration
    error of any (what happened, what was claimed) pair."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    index = bin_index(confidence, bins)
    gap = np.abs(
        np.bincount(index, weights=confidence, minlength=bins) - np.bincount(index, weights=hits, minlength=bins)
    )
    return float(gap.sum() / confidence.size)  # sum_k |sum p - sum y| / n == sum_k n_k/n |mean p - mean y|


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = 10) -> float:
    """ECE of the positive class's probability against 0/1 labels (:func:`binned_gap`; Naeini et
    al. 2015, Guo et al. 2017's definition for the positive class)."""
    y, p = _probabilities(y_true, y_prob)
    return binned_gap(y.astype(np.float64), p, bins)


def log_loss(y_true: Any, y_prob: Any) -> float:
    """Mean negative log-likelihood of the labels, probabilities clipped to [1e-15, 1 - 1e-15]."""
    y, p = _probabilities(y_true, y_prob)
    return _cross_entropy(p, y.astype(np.float64))


# ------------------------------------------------------------------------------- one Validation fit


@dataclass(frozen=True)
class ValidationFit:
    """What the ensemble stage stores beside binary weights: the calibration and the operating
    points (thresholds on the raw score), both from the Validation split, plus the calibration's
    effect there. One implementation of :class:`deepcovidxr.scoring.task.Fit`."""

    calibration: Calibration
    operating_points: dict[str, float]
    validation: dict[str, float]  # ece/brier before and after, on the Validation cases themselves

    def probability(self, scores: Any) -> np.ndarray:
        """The ``Probability`` column: the calibrated probability of each ensemble score."""
        return self.calibration.apply(scores)

    def held_out(self, y_true: Any, scores: Any, n_boot: int = 2000, seed: int = 0) -> dict:
        return held_out_report(self, y_true, scores, n_boot=n_boot, seed=seed)

    def describe(self) -> str:
        """One line for the log."""
        return (
            f"calibration ({self.calibration.method}) on Validation: ECE {self.validation['ece_raw']:.3f} -> "
            f"{self.validation['ece_calibrated']:.3f}; thresholds "
            + ", ".join(f"{k} {v:.4f}" for k, v in self.operating_points.items())
        )

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


def _raw_and_calibrated(y: np.ndarray, s: np.ndarray, calibrated: np.ndarray, bins: int) -> dict[str, float]:
    return {
        "ece_raw": expected_calibration_error(y, s, bins),
        "ece_calibrated": expected_calibration_error(y, calibrated, bins),
        "brier_raw": brier_score(y, s),
        "brier_calibrated": brier_score(y, calibrated),
    }


def fit_from_split(
    validation_labels: Any, validation_scores: Any, method: str = DEFAULT_METHOD, bins: int = 10
) -> ValidationFit:
    """Calibration + operating points from the Validation split's labels and ensemble scores only.

    The arguments are the only data used: call it with the Validation arrays, then apply the result to
    Test (``calibration.apply``; thresholds compared with the raw Test scores)."""
    y, s = _probabilities(validation_labels, validation_scores)
    calibration = fit(y, s, method)
    summary = {"n": float(y.size), "positives": float(y.sum()), **_raw_and_calibrated(y, s, calibration.apply(s), bins)}
    return ValidationFit(calibration, operating_points(y, s), summary)


def held_out_report(
    fitted: ValidationFit, y_true: Any, scores: Any, n_boot: int = 2000, seed: int = 0, bins: int = 10
) -> dict:
    """How a Validation fit does on another split (Test): expected calibration error and Brier
    score of the raw score and of the calibrated probability, and sensitivity/specificity with 95 %
    bootstrap intervals at the stored thresholds (and at the original's 0.5)."""
    y, s = _probabilities(y_true, scores)
    thresholds = {"0.5": 0.5, **fitted.operating_points}
    return {
        "calibration_method": fitted.calibration.method,
        **_raw_and_calibrated(y, s, fitted.calibration.apply(s), bins),
        "operating_points": {
            name: sens_spec_at(y, s, threshold, n_boot=n_boot, seed=seed) for name, threshold in thresholds.items()
        },
    }
