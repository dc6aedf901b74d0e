"""deepcovidxr.scoring.uncertainty against independent computations: numpy's weighted covariance, hand-made
arrays, and scikit-learn's AUC on explicitly kept subsets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepcovidxr.scoring import combination
from deepcovidxr.scoring import uncertainty as unc


def _weighted_sd(values: np.ndarray, weights: np.ndarray) -> float:
    """Population weighted standard deviation (numpy's cov with analytic weights, bias=True)."""
    return float(np.sqrt(np.cov(values, aweights=weights, bias=True)))


def test_member_spread_by_hand() -> None:
    scores = np.array([[0.2, 0.6], [0.5, 0.5], [0.0, 1.0]])
    weights = np.array([0.25, 0.75])
    result = unc.spread(scores, weights)
    # Row 0: mean 0.05 + 0.45 = 0.5; variance 0.25 * 0.3^2 + 0.75 * 0.1^2 = 0.03.
    assert result.score == pytest.approx([0.5, 0.5, 0.75])
    assert result.total == pytest.approx([math.sqrt(0.03), 0.0, math.sqrt(0.25 * 0.75**2 + 0.75 * 0.25**2)])
    assert np.array_equal(result.tta_var, np.zeros(3))
    assert np.array_equal(unc.uncertainty(scores, weights), result.total)


def test_member_spread_equals_numpy_weighted_sd() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((50, 6))
    weights = rng.dirichlet(np.ones(6))
    result = unc.spread(scores, weights)
    assert result.score == pytest.approx(combination.combine(scores, weights))
    assert result.total == pytest.approx([_weighted_sd(row, weights) for row in scores], abs=1e-12)
    # Weights are normalised; a zero-weight member changes nothing.
    assert unc.uncertainty(scores, 3 * weights) == pytest.approx(result.total)
    widened = np.c_[scores, rng.random(50)]
    assert unc.uncertainty(widened, np.r_[weights, 0.0]) == pytest.approx(result.total)


def test_tta_total_is_the_spread_of_the_pooled_mixture() -> None:
    rng = np.random.default_rng(1)
    images, members, draws = 30, 4, 5
    scores = rng.random((images, members, draws))
    weights = rng.dirichlet(np.ones(members))
    result = unc.spread(scores, weights)
    pooled_weights = np.repeat(weights / draws, draws)  # each (member, draw) pair, member-major
    expected = [_weighted_sd(row.reshape(-1), pooled_weights) for row in scores]
    assert result.total == pytest.approx(expected, abs=1e-12)
    # The two parts: between TTA-averaged members, and the weighted mean of the members' TTA variances.
    means = scores.mean(axis=2)
    assert result.member == pytest.approx([_weighted_sd(row, weights) for row in means], abs=1e-12)
    assert result.tta_var == pytest.approx((scores.var(axis=2) * weights).sum(axis=1), abs=1e-12)
    assert result.score == pytest.approx(combination.combine(means, weights))


def test_tta_special_cases() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((10, 3))
    weights = np.array([0.5, 0.3, 0.2])
    # One draw is no augmentation.
    assert unc.uncertainty(scores[:, :, None], weights) == pytest.approx(unc.uncertainty(scores, weights))
    # Identical members: only the augmentation spread is left.
    same = np.repeat(rng.random((10, 1, 4)), 3, axis=1)
    result = unc.spread(same, weights)
    assert result.member == pytest.approx(np.zeros(10), abs=1e-12)
    assert result.total == pytest.approx(same[:, 0, :].std(axis=1))


def test_multiclass_spread_is_the_predicted_class_spread() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 5, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    weights = rng.dirichlet(np.ones(5))
    predicted, result = unc.multiclass_spread(probs, weights)
    ensemble_probs = np.einsum("imc,m->ic", probs, weights)
    assert np.array_equal(predicted, ensemble_probs.argmax(axis=1))
    for i in range(40):
        column = probs[i, :, predicted[i]]
        assert result.total[i] == pytest.approx(_weighted_sd(column, weights), abs=1e-12)
        assert result.score[i] == pytest.approx(ensemble_probs[i, predicted[i]])
    assert np.array_equal(unc.multiclass_uncertainty(probs, weights), result.total)


def test_multiclass_with_tta_and_two_classes() -> None:
    rng = np.random.default_rng(4)
    positive = rng.random((20, 3, 4))
    two = np.stack([1 - positive, positive], axis=-1)  # (images, members, draws, classes)
    weights = np.array([0.2, 0.5, 0.3])
    # For two classes the predicted class's spread is the positive score's spread.
    assert unc.multiclass_uncertainty(two, weights) == pytest.approx(unc.uncertainty(positive, weights), abs=1e-12)
    # Ties go to the lowest class index.
    tied = np.full((1, 2, 3), 1 / 3)
    predicted, _ = unc.multiclass_spread(tied, [0.5, 0.5])
    assert predicted.tolist() == [0]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="weights of shape"):
        unc.spread(np.zeros((3, 2)), [1.0])
    with pytest.raises(ValueError, match="non-negative"):
        unc.spread(np.zeros((3, 2)), [1.5, -0.5])
    with pytest.raises(ValueError, match="NaN"):
        unc.spread(np.array([[np.nan, 0.1]]), [0.5, 0.5])
    with pytest.raises(ValueError, match="dimensions"):
        unc.spread(np.zeros(3), [1.0])


# ------------------------------------------------------------------------------------------ referral


def _kept_by_hand(u: np.ndarray, referred: int) -> np.ndarray:
    ranked = sorted(range(u.size), key=lambda i: (-u[i], i))  # most uncertain first, ties by position
    return np.array(sorted(ranked[referred:]))


def test_referral_curve_equals_sklearn_on_the_kept_images() -> None:
    rng = np.random.default_rng(5)
    n = 137
    y = rng.integers(0, 2, n)
    s = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    u = np.round(rng.random(n), 1)  # many ties
    rows = unc.referral_curve(y, s, u)
    assert [r["fraction"] for r in rows] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    for row in rows:
        referred = math.floor(row["fraction"] * n + 1e-9)
        kept = _kept_by_hand(u, referred)
        assert (row["referred"], row["kept"]) == (referred, kept.size)
        assert row["auc"] == pytest.approx(roc_auc_score(y[kept], s[kept]), abs=1e-12)
        assert row["accuracy"] == pytest.approx(np.mean((s[kept] >= 0.5) == y[kept]), abs=1e-12)
    assert rows[0]["auc"] == pytest.approx(roc_auc_score(y, s))
    assert rows[3]["referred"] == 41  # floor(0.3 * 137) = floor(41.1)


def test_referral_auc_is_nan_when_one_class_is_left() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    s = np.linspace(0.1, 0.9, 10)
    u = np.array([9, 8, 7, 6, 0, 0, 0, 0, 0, 0], dtype=float)  # the negatives are the most uncertain
    rows = unc.referral_curve(y, s, u, fractions=(0.0, 0.3, 0.4))
    assert math.isfinite(rows[1]["auc"])  # one negative left
    assert math.isnan(rows[2]["auc"])
    assert rows[2]["accuracy"] == pytest.approx(np.mean(s[4:] >= 0.5))


def test_referring_uncertain_images_helps_when_uncertainty_is_informative() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 2000)
    s = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(0, 1.5, 2000))))
    rows = unc.referral_curve(y, s, -np.abs(s - 0.5))
    accuracy = [r["accuracy"] for r in rows]
    assert accuracy == sorted(accuracy) and accuracy[-1] > accuracy[0] + 0.05


def test_referral_curve_multiclass() -> None:
    rng = np.random.default_rng(7)
    n, classes = 90, 3
    y = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    u = rng.random(n)
    rows = unc.referral_curve(y, p, u, fractions=(0.0, 0.25))
    kept = _kept_by_hand(u, math.floor(0.25 * n))
    expected = roc_auc_score(y[kept], p[kept], multi_class="ovr", average="macro", labels=[0, 1, 2])
    assert rows[1]["auc"] == pytest.approx(expected)
    assert rows[1]["accuracy"] == pytest.approx(np.mean(p[kept].argmax(axis=1) == y[kept]))
    with pytest.raises(ValueError, match="class indices"):
        unc.referral_curve(np.full(n, 3), p, u)


def test_referral_figure(tmp_path: Path) -> None:
    from deepcovidxr.reports.plots import plot_referral

    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 300)
    s = np.clip(0.4 * y + 0.6 * rng.random(300), 0, 1)
    rows = unc.referral_curve(y, s, -np.abs(s - 0.5))
    path = plot_referral(rows, tmp_path / "referral.png", "Test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
