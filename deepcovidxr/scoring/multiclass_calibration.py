"""Temperature scaling of a multi-class ensemble's class probabilities, fitted on Validation only.

``p_T = softmax(log(p) / T)`` with one ``T`` for all classes (Guo et al. 2017), chosen to minimise
the Validation log loss. One parameter cannot overfit a small Validation split, and the argmax
never changes: ``Predictions``, the accuracy and the confusion matrix are the same before and after;
only how confident the probabilities are changes. The per-class Platt or isotonic maps of the binary
mode (:mod:`deepcovidxr.scoring.calibration`) would not keep the rows summing to 1 nor the argmax.

Reported (Validation when fitted, Test by evaluate.py): the log loss, the multi-class Brier score
(``mean over images of sum over classes (p - onehot)^2``) and the top-label expected calibration
error (equal-width bins of the predicted class's probability, |confidence - accuracy| per bin,
weighted by the bin's share; Guo et al. 2017), raw and calibrated. Arguments in scikit-learn's
order, ``(y_true, probabilities)``; :class:`MulticlassFit` is the multi-class implementation of
:class:`deepcovidxr.scoring.task.Fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deepcovidxr.scoring.calibration import binned_gap

METHOD = "temperature"
# 1/T searched in this range: T from 0.02 (sharpen 50x) to 50 (flatten almost to uniform)
INVERSE_BOUNDS = (0.02, 50.0)
EPS = 1e-12


def _checked(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels).astype(np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.size or p.shape[1] < 3:
        raise ValueError(f"need (images, classes >= 3) probabilities and one label each, got {p.shape}, {y.shape}")
    if not np.isfinite(p).all() or y.min(initial=0) < 0 or y.max(initial=0) >= p.shape[1]:
        raise ValueError("probabilities must be finite and labels class indices")
    return y, p


def scale(probs: Any, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row (probabilities clipped away from 0 first)."""
    z = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_loss(labels: Any, probs: Any) -> float:
    y, p = _checked(labels, probs)
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], EPS, 1.0))))


def brier(labels: Any, probs: Any) -> float:
    """``mean over images of sum over classes (p - onehot)^2`` (twice the binary Brier score on a
    two-class row, which is why :func:`deepcovidxr.scoring.metrics.brier_score` is not it)."""
    y, p = _checked(labels, probs)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))


def top_label_ece(labels: Any, probs: Any, bins: int = 10) -> float:
    """The expected calibration error of the predicted class's probability against whether it
    was right (:func:`deepcovidxr.scoring.calibration.binned_gap`)."""
    y, p = _checked(labels, probs)
    return binned_gap((p.argmax(axis=1) == y).astype(np.float64), p.max(axis=1), bins)


def _figures(y: np.ndarray, raw: np.ndarray, calibrated: np.ndarray, bins: int) -> dict[str, float]:
    return {
        "log_loss_raw": log_loss(y, raw),
        "log_loss_calibrated": log_loss(y, calibrated),
        "brier_raw": brier(y, raw),
        "brier_calibrated": brier(y, calibrated),
        "ece_raw": top_label_ece(y, raw, bins),
        "ece_calibrated": top_label_ece(y, calibrated, bins),
    }


@dataclass(frozen=True)
class MulticlassFit:
    """What ensemble.py stores beside multi-class weights (``calibration`` in the weights JSON)."""

    temperature: float
    classes: tuple[str, ...]
    n: int
    validation: dict[str, float]

    def apply(self, probs: Any) -> np.ndarray:
        return scale(probs, self.temperature)

    @property
    def operating_points(self) -> dict[str, float]:
        """None: a multi-class decision is the argmax, which scaling never changes."""
        return {}

    def probability(self, probs: Any) -> np.ndarray:
        """The ``Probability`` column: the scaled probability of the predicted class (the argmax)."""
        return self.apply(probs).max(axis=1)

    def held_out(self, y_true: Any, probs: Any, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
        return held_out_report(self, y_true, probs)  # no resampling: n_boot and seed are the binary's

    def describe(self) -> str:
        """One line for the log."""
        v = self.validation
        return (
            f"multi-class temperature scaling on Validation: T {self.temperature:.3f}, log loss "
            f"{v['log_loss_raw']:.4f} -> {v['log_loss_calibrated']:.4f}, top-label ECE {v['ece_raw']:.3f} -> "
            f"{v['ece_calibrated']:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        # The same top-level keys as the binary fit (ensemble.load_calibration checks them); no
        # operating points: a multi-class decision is the argmax.
        return {
            "calibration": {"method": METHOD, "temperature": self.temperature, "n": self.n, "fitted_on": "Validation"},
            "classes": list(self.classes),
            "operating_points": {},
            "validation": dict(self.validation),
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> MulticlassFit:
        inner = payload["calibration"]
        if inner.get("method") != METHOD or "classes" not in payload:
            raise ValueError(f"not a multi-class temperature calibration: {inner.get('method')!r}")
        return cls(
            float(inner["temperature"]), tuple(payload["classes"]), int(inner.get("n", 0)), payload["validation"]
        )


def is_multiclass(payload: dict[str, Any] | None) -> bool:
    """Whether a stored calibration is this module's (it names its classes; the binary fit does not)."""
    return bool(payload) and "classes" in payload


def fit(labels: Any, probs: Any, classes: tuple[str, ...], bins: int = 10) -> MulticlassFit:
    """The temperature minimising the log loss of ``probs`` (Validation's ensemble probabilities)."""
    y, p = _checked(labels, probs)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    logp = np.log(np.clip(p, EPS, 1.0))

    def loss(inverse: float) -> float:
        z = inverse * logp
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(y.size), y]))

    # The loss is convex in 1/T (a log-sum-exp of linear functions minus a linear one): golden
    # section on log(1/T) finds its minimum to ~1e-6 relative in 60 steps.
    low, high = np.log(INVERSE_BOUNDS[0]), np.log(INVERSE_BOUNDS[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = loss(np.exp(a)), loss(np.exp(b))
    for _ in range(60):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = loss(np.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = loss(np.exp(b))
    temperature = float(1.0 / np.exp((low + high) / 2.0))
    return MulticlassFit(temperature, tuple(classes), int(y.size), _figures(y, p, scale(p, temperature), bins))


def held_out_report(fitted: MulticlassFit, labels: Any, probs: Any, bins: int = 10) -> dict[str, Any]:
    """How the Validation temperature does on another split (Test)."""
    y, p = _checked(labels, probs)
    return {
        "calibration_method": METHOD,
        "temperature": fitted.temperature,
        **_figures(y, p, fitted.apply(p), bins),
    }
