"""Temperature scaling of multi-class ensembles: the fitted temperature undoes a known distortion,
the figures equal independent computations, the argmax never moves, and the fit round-trips."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from deepcovidxr.scoring import multiclass_calibration as mc

CLASSES = ("COVID-19", "Normal", "Pneumonia")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(n: int, sharpen: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q; the "ensemble" reports q sharpened by ``sharpen``."""
    rng = np.random.default_rng(seed)
    q = _softmax(rng.normal(0, 1.2, (n, 3)))
    labels = np.array([rng.choice(3, p=row) for row in q])
    return _softmax(sharpen * np.log(q)), labels


def test_the_fit_recovers_the_distortion_and_lowers_the_log_loss() -> None:
    probs, labels = _overconfident(4000, 2.5, seed=0)
    fit = mc.fit(labels, probs, CLASSES)
    assert fit.temperature == pytest.approx(2.5, rel=0.08)
    calibrated = fit.apply(probs)
    assert log_loss(labels, calibrated) < log_loss(labels, probs) - 0.05
    assert fit.validation["log_loss_raw"] == pytest.approx(log_loss(labels, probs), abs=1e-9)
    assert fit.validation["log_loss_calibrated"] == pytest.approx(log_loss(labels, calibrated), abs=1e-9)
    assert fit.validation["ece_calibrated"] < fit.validation["ece_raw"]
    np.testing.assert_array_equal(calibrated.argmax(axis=1), probs.argmax(axis=1))
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)


def test_the_fit_is_the_log_loss_minimum() -> None:
    probs, labels = _overconfident(600, 0.6, seed=1)  # under-confident: T < 1
    fit = mc.fit(labels, probs, CLASSES)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
    best = grid[np.argmin([log_loss(labels, mc.scale(probs, t)) for t in grid])]
    assert fit.temperature < 1 and fit.temperature == pytest.approx(best, rel=3e-3)


def test_figures_by_hand() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [0.05, 0.05, 0.9]])
    labels = np.array([0, 2, 2, 2])
    onehot = np.eye(3)[labels]
    assert mc.brier(labels, probs) == pytest.approx(np.mean(((probs - onehot) ** 2).sum(axis=1)))
    # top-label ECE, 10 bins: confidences 0.7, 0.6, 0.5, 0.9 -> bins 7, 6, 5, 9, each one image:
    # |0.7 - 1| + |0.6 - 0| + |0.5 - 1| + |0.9 - 1| over 4
    assert mc.top_label_ece(labels, probs) == pytest.approx((0.3 + 0.6 + 0.5 + 0.1) / 4)
    assert mc.log_loss(labels, probs) == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2]))


def test_round_trip_and_refusals() -> None:
    probs, labels = _overconfident(300, 2.0, seed=2)
    fit = mc.fit(labels, probs, CLASSES)
    payload = fit.to_dict()
    assert mc.is_multiclass(payload) and payload["operating_points"] == {}
    again = mc.MulticlassFit.from_dict(payload)
    np.testing.assert_allclose(again.apply(probs), fit.apply(probs))
    with pytest.raises(ValueError, match="not a multi-class"):
        mc.MulticlassFit.from_dict({"calibration": {"method": "platt"}, "operating_points": {}})
    with pytest.raises(ValueError, match="class names"):
        mc.fit(labels, probs, CLASSES[:2])
    with pytest.raises(ValueError):
        mc.fit(labels, probs[:, :2], CLASSES[:2])
