"""deepcovidxr.scoring.calibration and .operating_points against independent computations:
scikit-learn (logistic regression, isotonic regression, Brier, ROC), hand-computed arrays and
brute-force searches. Arguments in scikit-learn's order, (y_true, y_score), as everywhere."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring import calibration as cal
from deepcovidxr.scoring import metrics
from deepcovidxr.scoring import operating_points as op


def _ensemble_scores(n: int, rng: np.random.Generator, slope: float = 3.0, prevalence: float = 0.3):
    """Synthetic ensemble scores: 5 over-confident members averaged (AUC about 0.88)."""
    y = (rng.random(n) < prevalence).astype(int)
    z = 1.66 * y + rng.normal(size=n)
    members = slope * (z[:, None] - 0.83) + rng.normal(0, 0.7, size=(n, 5))
    return (1 / (1 + np.exp(-members))).mean(axis=1), y


# ------------------------------------------------------------------------------------------ metrics


def test_ece_matches_a_hand_computation() -> None:
    probs = [0.05, 0.15, 0.12, 0.55, 0.95, 0.98, 1.0]
    labels = [0, 0, 1, 1, 1, 0, 1]
    # bins: 0.05 -> [0, .1); 0.15, 0.12 -> [.1, .2); 0.55 -> [.5, .6); 0.95, 0.98, 1.0 -> [.9, 1]
    hand = (1 * abs(0.05 - 0) + 2 * abs(0.135 - 0.5) + 1 * abs(0.55 - 1) + 3 * abs((2.93 / 3) - 2 / 3)) / 7
    assert cal.expected_calibration_error(labels, probs, bins=10) == pytest.approx(hand, abs=1e-12)
    assert hand == pytest.approx(2.16 / 7)
    # A probability on an edge belongs to the bin it opens: 0.1 is in [.1, .2), 0.0 in [0, .1).
    assert cal.bin_index(np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0]), 10).tolist() == [0, 1, 2, 5, 9, 9]
    assert cal.expected_calibration_error([0, 1], [0.1, 0.1], bins=10) == pytest.approx(0.4)
    assert cal.expected_calibration_error([0, 1], [0.25, 0.75], bins=1) == 0.0  # one bin: |0.5 - 0.5|


def test_ece_matches_a_histogram_computation() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p**2).astype(int)
    for bins in (5, 10, 15):
        counts, edges = np.histogram(p, bins=bins, range=(0, 1))  # [a, b) bins, the last closed
        sums, _ = np.histogram(p, bins=edges, weights=p)
        hits, _ = np.histogram(p, bins=edges, weights=y)
        full = counts > 0
        expected = np.sum(counts[full] / p.size * np.abs(sums[full] / counts[full] - hits[full] / counts[full]))
        assert cal.expected_calibration_error(y, p, bins) == pytest.approx(expected, abs=1e-12)


def test_log_loss_equals_sklearn() -> None:
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(1)
    p, y = rng.random(300), rng.integers(0, 2, 300)
    assert cal.log_loss(y, p) == pytest.approx(log_loss(y, p), abs=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.log_loss([1], [1.2])


# -------------------------------------------------------------------------------------- calibration


def test_platt_equals_sklearn_logistic_regression_on_platts_targets() -> None:
    rng = np.random.default_rng(0)
    s, y = _ensemble_scores(400, rng)
    fitted = cal.fit(y, s, "platt")
    # Soft targets t as weights: each case once as a positive (weight t), once as a negative (1 - t).
    x = cal.logit(s)[:, None]
    t = np.where(y == 1, (y.sum() + 1) / (y.sum() + 2), 1 / (y.size - y.sum() + 2))
    reference = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(
        np.vstack([x, x]), np.r_[np.ones(y.size), np.zeros(y.size)], sample_weight=np.r_[t, 1 - t]
    )
    assert fitted.slope == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert fitted.intercept == pytest.approx(reference.intercept_[0], rel=1e-4, abs=1e-5)
    assert fitted.apply(s) == pytest.approx(reference.predict_proba(x)[:, 1], abs=1e-5)
    assert (fitted.n, fitted.positives) == (400, int(y.sum()))
    assert fitted.slope < 1  # the members are over-confident: the map flattens the score


def test_platt_stays_finite_on_perfectly_separated_validation() -> None:
    s = np.array([0.01, 0.1, 0.2, 0.8, 0.9, 0.99])
    y = np.array([0, 0, 0, 1, 1, 1])
    fitted = cal.fit(y, s)
    assert math.isfinite(fitted.slope) and fitted.slope > 0
    p = fitted.apply(s)
    # Platt's targets: nothing is pushed beyond (P + 1) / (P + 2) = 0.8 by much.
    assert 0.0 < p.min() < 0.5 < p.max() < 1.0


def test_platt_never_reverses_the_ranking() -> None:
    rng = np.random.default_rng(2)
    s = rng.random(200)
    y = (s < 0.5).astype(int)  # anti-correlated
    fitted = cal.fit(y, s)
    assert fitted.slope == 0.0
    assert np.ptp(fitted.apply(s)) == pytest.approx(0.0, abs=1e-9)


def test_temperature_minimises_the_loss_over_a_grid() -> None:
    rng = np.random.default_rng(4)
    s, y = _ensemble_scores(300, rng)
    fitted = cal.fit(y, s, "temperature")
    assert fitted.intercept == 0.0
    targets = cal.platt_targets(y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    x = cal.logit(s)
    # -[t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))] = t softplus(-z) + (1 - t) softplus(z)
    losses = [np.mean(targets * np.logaddexp(0, -x / t) + (1 - targets) * np.logaddexp(0, x / t)) for t in grid]
    assert fitted.temperature == pytest.approx(grid[int(np.argmin(losses))], rel=3e-3)


def test_isotonic_equals_sklearn() -> None:
    rng = np.random.default_rng(5)
    s, y = _ensemble_scores(300, rng)
    fitted = cal.fit(y, s, "isotonic")
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s, y)
    new = np.r_[0.0, rng.random(200), 1.0]
    assert fitted.apply(new) == pytest.approx(reference.predict(new), abs=1e-12)


@pytest.mark.parametrize("method", cal.METHODS)
def test_json_round_trip(method: str) -> None:
    rng = np.random.default_rng(6)
    s, y = _ensemble_scores(200, rng)
    fitted = cal.fit(y, s, method)
    again = cal.Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again == fitted
    assert np.array_equal(again.apply(s), fitted.apply(s))
    with pytest.raises(ValueError, match="unknown calibration fields"):
        cal.Calibration.from_dict({**fitted.to_dict(), "colour": 1})


@pytest.mark.parametrize("method", ("platt", "temperature"))
def test_monotone_maps_keep_the_auc_and_the_ranking(method: str) -> None:
    rng = np.random.default_rng(7)
    s, y = _ensemble_scores(500, rng)
    p = cal.fit(y, s, method).apply(s)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    order = np.argsort(s)
    assert np.all(np.diff(p[order]) >= 0)


def test_one_class_cannot_be_calibrated() -> None:
    with pytest.raises(UsageError, match="both classes"):
        cal.fit([1, 1], [0.2, 0.4])
    with pytest.raises(UsageError, match="unknown calibration method"):
        cal.fit([0, 1], [0.2, 0.4], "beta")
    assert cal.fit([1, 1], [0.2, 0.4], "identity") == cal.IDENTITY


def test_platt_beats_isotonic_and_raw_scores_on_held_out_cases() -> None:
    """A small version of the comparison behind the default (calibration.fit's docstring): fit on a
    300-case Validation set, score on 5 000 fresh cases of the same generator."""
    rng = np.random.default_rng(11)
    test_s, test_y = _ensemble_scores(5000, rng)
    brier = {m: [] for m in ("platt", "isotonic", "temperature", "identity")}
    ece = {m: [] for m in brier}
    for _ in range(10):
        s, y = _ensemble_scores(300, rng)
        for method in brier:
            p = cal.fit(y, s, method).apply(test_s)
            brier[method].append(brier_score_loss(test_y, p))
            ece[method].append(cal.expected_calibration_error(test_y, p))
    mean_brier = {m: float(np.mean(v)) for m, v in brier.items()}
    mean_ece = {m: float(np.mean(v)) for m, v in ece.items()}
    assert mean_brier["platt"] < mean_brier["isotonic"] < mean_brier["identity"], mean_brier
    assert mean_brier["platt"] < mean_brier["temperature"], mean_brier
    assert mean_ece["platt"] < mean_ece["isotonic"] < mean_ece["identity"], mean_ece


# --------------------------------------------------------------------------------- operating points

SCORES_POS = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.4, 0.35, 0.3]
SCORES_NEG = [0.65, 0.5, 0.3, 0.2, 0.1, 0.05]


def test_operating_points_on_a_hand_made_set() -> None:
    s = np.array(SCORES_POS + SCORES_NEG)
    y = np.array([1] * 10 + [0] * 6)
    points = op.operating_points(y, s)
    # sens90: 9 of 10 positives at >= t, the 9th highest positive; sens95: all 10 (ceil(9.5) = 10).
    assert points["sens90"] == 0.35
    assert points["sens95"] == 0.3
    # Youden: t = 0.7 gives 6/10 - 0/6 = 0.6; t = 0.6 gives 7/10 - 1/6 = 0.533; t = 0.35: 0.9 - 2/6 = 0.567
    # t = 0.3 (both a positive and a negative): 1.0 - 3/6 = 0.5.  Best: 0.7.
    assert points["youden"] == 0.7
    assert set(points) == {"youden", "sens90", "sens95"}


def test_sensitivity_threshold_ties_and_exact_arithmetic() -> None:
    # 0.9 * 10 = 9.000000000000002 in floating point: a naive ceil would ask for all 10 positives.
    s = np.r_[np.linspace(0.9, 0.45, 10), 0.1]
    y = np.r_[np.ones(10), 0]
    assert op.sensitivity_threshold(y, s, 90) == pytest.approx(s[8])
    # Tied positives: the threshold is the tied score; sensitivity there is above the target.
    assert op.sensitivity_threshold([1, 1, 1, 0], [0.5, 0.5, 0.5, 0.2], 90) == 0.5


def _brute_force(s: np.ndarray, y: np.ndarray) -> dict[str, float]:
    candidates = np.unique(s)[::-1]  # highest first
    best_j, youden = -np.inf, None
    sens_at = {}
    for t in candidates:
        sens = np.mean(s[y == 1] >= t)
        spec = np.mean(s[y == 0] < t)
        if sens + spec - 1 > best_j + 1e-12:
            best_j, youden = sens + spec - 1, t
        for name, target in (("sens90", 0.9), ("sens95", 0.95)):
            if name not in sens_at and sens >= target - 1e-12:
                sens_at[name] = t
    return {"youden": float(youden), **{k: float(v) for k, v in sens_at.items()}}


@pytest.mark.parametrize("seed", range(8))
def test_operating_points_equal_a_brute_force_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    s, y = _ensemble_scores(n, rng)
    if seed % 2:
        s = np.round(s, 2)  # many ties
    y[:2] = [0, 1]
    assert op.operating_points(y, s) == _brute_force(s, y)


def test_resolve_threshold() -> None:
    stored = {"youden": 0.41, "sens90": 0.22, "sens95": 0.13}
    assert op.resolve_threshold("youden", stored) == 0.41
    assert op.resolve_threshold("SENS95", stored) == 0.13
    assert op.resolve_threshold("0.5", None) == 0.5
    assert op.resolve_threshold(0.3, None) == 0.3
    assert op.resolve_threshold("1", stored) == 1.0
    with pytest.raises(UsageError, match=r"before calibration existed.*Rerun ensemble\.py"):
        op.resolve_threshold("sens90", None)
    with pytest.raises(UsageError, match="stored: youden"):
        op.resolve_threshold("sens90", {"youden": 0.4})
    for bad in ("1.5", "-0.1", "nan", "inf", "sens80", ""):
        with pytest.raises(UsageError):
            op.resolve_threshold(bad, stored)


# --------------------------------------------------------------------------- sensitivity/specificity


def test_sens_spec_points_match_the_confusion_counts() -> None:
    rng = np.random.default_rng(8)
    s, y = _ensemble_scores(400, rng)
    result = op.sens_spec_at(y, s, 0.4, n_boot=500, seed=1)
    counts = metrics.binary_metrics(y, s, 0.4)
    assert result["sensitivity"]["point"] == pytest.approx(counts["sensitivity"])
    assert result["specificity"]["point"] == pytest.approx(counts["specificity"])
    for name in ("sensitivity", "specificity"):
        r = result[name]
        assert r["low"] <= r["point"] <= r["high"]
    assert result == op.sens_spec_at(y, s, 0.4, n_boot=500, seed=1)  # seeded
    assert result != op.sens_spec_at(y, s, 0.4, n_boot=500, seed=2)


def test_sens_spec_interval_equals_binomial_quantiles() -> None:
    """Resampling P positives with replacement makes the hit count Binomial(P, sensitivity): the
    percentile interval must sit at its 2.5 % and 97.5 % quantiles (within one case)."""
    rng = np.random.default_rng(9)
    s, y = _ensemble_scores(600, rng)
    r = op.sens_spec_at(y, s, 0.5, n_boot=4000, seed=0)
    for name, count in (("sensitivity", int(y.sum())), ("specificity", int(y.size - y.sum()))):
        point = r[name]["point"]
        low, high = stats.binom.ppf([0.025, 0.975], count, point) / count
        assert abs(r[name]["low"] - low) <= 1.01 / count
        assert abs(r[name]["high"] - high) <= 1.01 / count


def test_sens_spec_interval_covers_the_truth() -> None:
    rng = np.random.default_rng(10)
    covered = 0
    for trial in range(200):
        y = np.r_[np.ones(100, int), np.zeros(100, int)]
        s = np.r_[(rng.random(100) < 0.8).astype(float), (rng.random(100) < 0.3).astype(float)]
        r = op.sens_spec_at(y, s, 0.5, n_boot=400, seed=trial)
        covered += r["sensitivity"]["low"] <= 0.8 <= r["sensitivity"]["high"]
    assert 0.88 <= covered / 200 <= 0.99


def test_sens_spec_with_one_class() -> None:
    r = op.sens_spec_at([1, 1], [0.7, 0.2], 0.5, n_boot=50)
    assert r["sensitivity"]["point"] == 0.5 and math.isnan(r["specificity"]["point"])


# ------------------------------------------------------------------------------- one Validation fit


def test_fit_from_split_uses_the_arrays_it_is_given() -> None:
    rng = np.random.default_rng(12)
    s, y = _ensemble_scores(300, rng)
    result = cal.fit_from_split(y, s)
    assert result.calibration == cal.fit(y, s, "platt")
    assert result.operating_points == op.operating_points(y, s)
    assert result.validation["ece_calibrated"] < result.validation["ece_raw"]
    assert result.validation["brier_raw"] == pytest.approx(brier_score_loss(y, s))
    again = cal.ValidationFit.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_calibration_figure(tmp_path: Path) -> None:
    from deepcovidxr.reports.plots import plot_calibration_comparison

    rng = np.random.default_rng(13)
    s, y = _ensemble_scores(400, rng)
    p = cal.fit(y, s).apply(s)
    path = plot_calibration_comparison(y, s, p, tmp_path / "calibration_before_after.png", "Validation")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
