"""deepcovidxr.scoring.metrics against scikit-learn computed independently here, on random and degenerate data."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from deepcovidxr.reports import plots
from deepcovidxr.scoring import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_problem(n: int = 200, seed: int = 0, separation: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probability-like scores, positives shifted up by ``separation`` on the logit scale;
    scores are rounded to 2 decimals so ties occur, as with saturated sigmoids."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = rng.normal(size=n) + separation * y
    return y, np.round(1.0 / (1.0 + np.exp(-logits)), 2)


def sklearn_reference(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    """The same quantities from sklearn, NaN where sklearn finds a zero division."""
    predicted = (s >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / len(y),
        "sensitivity": recall_score(y, predicted, pos_label=1, zero_division=np.nan),
        "specificity": recall_score(y, predicted, pos_label=0, zero_division=np.nan),
        "ppv": precision_score(y, predicted, pos_label=1, zero_division=np.nan),
        "npv": precision_score(y, predicted, pos_label=0, zero_division=np.nan),
        "f1": f1_score(y, predicted, pos_label=1, zero_division=np.nan),
    }


def assert_matches_sklearn(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    ours = metrics.binary_metrics(y, s, threshold)
    reference = sklearn_reference(y, s, threshold)
    for key, expected in reference.items():
        if math.isnan(expected):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-12), key
    assert ours["threshold"] == threshold
    return ours


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.73])
def test_binary_metrics_match_sklearn_on_random_data(seed: int, threshold: float) -> None:
    y, s = random_problem(seed=seed)
    ours = assert_matches_sklearn(y, s, threshold)
    assert ours["tp"] + ours["fp"] + ours["tn"] + ours["fn"] == len(y)
    assert all(isinstance(ours[k], int) for k in ("tp", "fp", "tn", "fn"))


def test_threshold_exactly_on_a_score_counts_as_positive() -> None:
    # np.round(0.5) == 0 in the original (SPEC bug 20); here 0.5 >= 0.5 is positive.
    y = np.array([0, 1, 1, 0])
    s = np.array([0.5, 0.5, 0.9, 0.1])
    ours = assert_matches_sklearn(y, s, 0.5)
    assert (ours["tp"], ours["fp"], ours["tn"], ours["fn"]) == (2, 1, 1, 0)
    assert np.round(0.5) == 0  # the behaviour being replaced


def test_all_scores_equal() -> None:
    y = np.array([0, 1, 0, 1, 1])
    s = np.full(5, 0.3)
    above = assert_matches_sklearn(y, s, 0.3)  # everyone positive
    assert above["specificity"] == 0.0 and math.isnan(above["npv"])
    below = assert_matches_sklearn(y, s, 0.5)  # nobody positive
    # PPV is undefined (nothing called positive) but F1 = 2tp / (2tp + fp + fn) = 0 / 3 is defined.
    assert math.isnan(below["ppv"]) and below["f1"] == 0.0 and below["sensitivity"] == 0.0
    assert metrics.youden_threshold(y, s) == 0.3
    assert metrics.evaluate(y, s, n_boot=50)["auc"] == 0.5


def test_no_positive_prediction_gives_nan_ppv_not_an_error() -> None:
    y, s = random_problem(seed=3)
    ours = assert_matches_sklearn(y, s, 1.5)
    assert math.isnan(ours["ppv"]) and ours["tp"] == ours["fp"] == 0
    assert ours["specificity"] == 1.0


def test_single_class_ratios_are_nan() -> None:
    ours = metrics.binary_metrics(np.ones(4, int), np.array([0.1, 0.6, 0.7, 0.8]), 0.5)
    # No negatives: specificity is 0/0; NPV = tn / (tn + fn) = 0 / 1 is defined.
    assert ours["sensitivity"] == 0.75 and math.isnan(ours["specificity"])
    assert ours["npv"] == 0.0 and ours["ppv"] == 1.0


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3]),  # not binary
        ([0, 1], [0.1]),  # length mismatch
        ([0, 1], [0.1, np.nan]),  # NaN score
        ([], []),  # empty
        ([[0, 1]], [[0.1, 0.2]]),  # 2-D
    ],
)
def test_invalid_inputs_are_rejected(labels: list, scores: list) -> None:
    with pytest.raises(ValueError):
        metrics.binary_metrics(labels, scores, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_youden_threshold_matches_sklearn_roc_curve(seed: int) -> None:
    y, s = random_problem(seed=seed, separation=0.8)
    fpr, tpr, thresholds = roc_curve(y, s)  # default drop_intermediate, computed independently
    finite = np.isfinite(thresholds)
    j = (tpr - fpr)[finite]
    expected = thresholds[finite][np.flatnonzero(j == j.max()).min()]  # highest threshold among ties
    found = metrics.youden_threshold(y, s)
    assert found == expected
    at = metrics.binary_metrics(y, s, found)
    assert at["sensitivity"] + at["specificity"] - 1 == pytest.approx(j.max(), abs=1e-12)


def test_youden_ties_go_to_the_highest_threshold() -> None:
    # Thresholds 0.8 and 0.4 both give J = 0.5: (sens 0.5, spec 1) and (sens 1, spec 0.5).
    y = np.array([1, 1, 0, 0])
    s = np.array([0.8, 0.4, 0.6, 0.2])
    assert metrics.youden_threshold(y, s) == 0.8
    with pytest.raises(ValueError, match="both classes"):
        metrics.youden_threshold(np.zeros(3, int), [0.1, 0.2, 0.3])


def test_case_weighted_auc_equals_sklearn_on_repeated_cases() -> None:
    y, s = random_problem(n=60, seed=4)
    rng = np.random.default_rng(5)
    weights = rng.integers(0, 4, size=(5, y.size))
    aucs = metrics.auc_with_case_weights(y, s, weights)
    for row, auc in zip(weights, aucs, strict=True):
        assert auc == pytest.approx(roc_auc_score(np.repeat(y, row), np.repeat(s, row)), abs=1e-12)
    one_class = np.where(y == 1, 1, 0)[None, :]
    assert np.isnan(metrics.auc_with_case_weights(y, s, one_class)[0])


def test_bootstrap_ci_contains_auc_and_is_reproducible() -> None:
    y, s = random_problem(n=150, seed=6)
    auc = roc_auc_score(y, s)
    low, high = metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=7)
    assert low < auc < high
    assert 0.0 <= low < high <= 1.0
    assert metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=7) == (low, high)
    assert metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=8) != (low, high)
    low90, high90 = metrics.bootstrap_auc_ci(y, s, n_boot=500, seed=7, level=0.90)
    assert low <= low90 < high90 <= high


def test_bootstrap_ci_narrows_with_more_data() -> None:
    small = metrics.bootstrap_auc_ci(*random_problem(n=80, seed=9), n_boot=400, seed=0)
    large = metrics.bootstrap_auc_ci(*random_problem(n=2000, seed=9), n_boot=400, seed=0)
    assert (large[1] - large[0]) < 0.5 * (small[1] - small[0])


def test_bootstrap_skips_one_class_resamples() -> None:
    # One positive among 6: about a third of resamples miss it and are skipped, not fatal.
    y = np.array([1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.95])
    low, high = metrics.bootstrap_auc_ci(y, s, n_boot=300, seed=0)
    assert 0.0 <= low <= high <= 1.0
    assert all(math.isnan(v) for v in metrics.bootstrap_auc_ci(np.zeros(5, int), s[:5], n_boot=50))


def test_brier_matches_sklearn() -> None:
    y, s = random_problem(seed=10)
    assert metrics.brier_score(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-15)
    with pytest.raises(ValueError):
        metrics.brier_score([0, 1], [0.2, 1.2])


def test_evaluate_is_json_serialisable_and_consistent() -> None:
    y, s = random_problem(n=120, seed=11)
    result = metrics.evaluate(y, s, n_boot=200, seed=3)
    assert set(result) == {"n", "positives", "auc", "auc_ci95", "brier", "at_0.5", "at_youden"}
    assert result["n"] == 120 and result["positives"] == int(y.sum())
    assert result["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-15)
    assert result["auc_ci95"] == list(metrics.bootstrap_auc_ci(y, s, n_boot=200, seed=3))
    assert result["at_0.5"] == metrics.binary_metrics(y, s, 0.5)
    assert result["at_youden"]["threshold"] == metrics.youden_threshold(y, s)
    assert json.loads(json.dumps(result)) == result
    assert all(type(v) in (int, float) for v in result["at_0.5"].values())


def test_evaluate_with_one_class_keeps_going() -> None:
    result = metrics.evaluate(np.ones(5, int), [0.2, 0.6, 0.7, 0.8, 0.9], n_boot=20)
    assert math.isnan(result["auc"]) and result["at_youden"] is None
    assert result["at_0.5"]["sensitivity"] == 0.8
    json.dumps(result)  # NaN is allowed


def png_chunks(path: Path) -> dict[bytes, list[bytes]]:
    """Parse a PNG enough to prove it is one: signature, CRC-checked chunks, IHDR first, IEND last."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    chunks: dict[bytes, list[bytes]] = {}
    offset, kinds = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc
        chunks.setdefault(kind, []).append(body)
        kinds.append(kind)
        offset += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    return chunks


@pytest.mark.parametrize("kind", ["roc", "pr", "calibration", "confusion"])
def test_plots_write_valid_pngs_with_the_disclaimer(tmp_path: Path, kind: str) -> None:
    y, s = random_problem(n=100, seed=12)
    path = tmp_path / "plots" / f"{kind}.png"
    if kind == "roc":
        returned = plots.plot_roc(y, s, path, "Test ROC")
    elif kind == "pr":
        returned = plots.plot_precision_recall(y, s, path, "Test PR")
    elif kind == "calibration":
        returned = plots.plot_calibration(y, s, path, "Test calibration")
    else:
        returned = plots.plot_confusion_matrix(y, s, 0.5, path, "Test confusion")
    assert returned == path and path.stat().st_size > 1000
    chunks = png_chunks(path)
    width, height = struct.unpack(">II", chunks[b"IHDR"][0][:8])
    assert width >= 400 and height >= 400
    assert any(metrics.DISCLAIMER.encode() in body for body in chunks.get(b"tEXt", []))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_calibration_bins_match_a_direct_computation() -> None:
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    mean_score, observed, counts = metrics.calibration_bins(y, s, 10)
    assert counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert mean_score[1] == pytest.approx(0.135) and observed[1] == 1.0
    assert mean_score[9] == pytest.approx(0.975) and observed[9] == 0.5
    assert np.isnan(observed[2])
