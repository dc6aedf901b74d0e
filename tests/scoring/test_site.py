"""deepcovidxr.scoring.site against independent computations: scipy's chi-squared for Cramér's V,
scikit-learn's AUC on each site's images, and a probe on planted and null site signals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency
from sklearn.metrics import roc_auc_score

from deepcovidxr.scoring import site


def _labels_and_sites(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sites = rng.choice(["A", "B", "C"], size=300, p=[0.5, 0.3, 0.2])
    positive_rate = np.select([sites == "A", sites == "B"], [0.2, 0.5], 0.8)
    return (rng.random(300) < positive_rate).astype(int), sites


def test_contingency_counts() -> None:
    table = site.contingency([0, 1, 1, 0, 1], ["x", "x", "y", "y", "y"])
    assert table.labels == (0, 1) and table.sites == ("x", "y")
    assert table.counts.tolist() == [[1, 1], [1, 2]]
    assert table.to_dict() == {"0": {"x": 1, "y": 1}, "1": {"x": 1, "y": 2}}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cramers_v_equals_the_textbook_formula_with_scipys_chi2(seed: int) -> None:
    labels, sites = _labels_and_sites(seed)
    counts = site.contingency(labels, sites).counts
    chi2 = chi2_contingency(counts, correction=False)[0]
    expected = math.sqrt(chi2 / (counts.sum() * (min(counts.shape) - 1)))
    assert site.cramers_v(labels, sites) == pytest.approx(expected, rel=1e-12)


def test_cramers_v_bounds() -> None:
    assert site.cramers_v([0, 1, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(0.0)
    assert site.cramers_v([0, 0, 1, 1], ["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert math.isnan(site.cramers_v([0, 1, 0], ["a", "a", "a"]))
    with pytest.raises(ValueError, match="one length"):
        site.cramers_v([0, 1], ["a"])


def test_per_site_auc_equals_sklearn_and_names_the_skipped() -> None:
    labels, sites = _labels_and_sites()
    scores = np.random.default_rng(5).random(labels.size) + 0.3 * labels
    labels = labels.copy()
    labels[sites == "C"] = 1  # site C now holds positives only
    result = site.per_site_auc(labels, scores, sites)
    assert set(result.auc) == {"A", "B"} and list(result.skipped) == ["C"]
    assert "only label 1" in result.skipped["C"]
    for name in ("A", "B"):
        keep = sites == name
        assert result.auc[name] == pytest.approx(roc_auc_score(labels[keep], scores[keep]))
        assert result.n[name] == int(keep.sum())


def _probe_data(shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 patients of 2-4 images, each patient at one of three sites; 16 features, shifted by
    ``shift`` along a site-specific direction."""
    rng = np.random.default_rng(seed)
    patient_site = rng.choice(["north", "south", "east"], size=60)
    images = rng.integers(2, 5, size=60)
    groups = np.repeat(np.arange(60), images)
    sites = np.repeat(patient_site, images)
    directions = {name: rng.normal(size=16) for name in ("north", "south", "east")}
    features = rng.normal(size=(groups.size, 16)) + shift * np.array([directions[s] for s in sites])
    return features, sites, groups


def test_the_probe_finds_a_planted_site_signal() -> None:
    features, sites, groups = _probe_data(shift=2.0)
    result = site.site_probe(features, sites, groups, folds=5, seed=0)
    assert result.chance == pytest.approx(1 / 3)
    assert result.sites == ("east", "north", "south")
    assert result.balanced_accuracy > 0.95


def test_the_probe_stays_near_chance_without_a_signal() -> None:
    scores = [
        site.site_probe(*_probe_data(shift=0.0, seed=seed), folds=5, seed=seed).balanced_accuracy for seed in range(5)
    ]
    assert abs(np.mean(scores) - 1 / 3) < 0.1
    assert max(scores) < 0.55


def test_no_patient_sits_in_two_folds() -> None:
    features, sites, groups = _probe_data(shift=1.0)
    result = site.site_probe(features, sites, groups, folds=4, seed=3)
    assert set(result.fold.tolist()) == {0, 1, 2, 3}
    for patient in np.unique(groups):
        assert np.unique(result.fold[groups == patient]).size == 1


def test_the_probe_refuses_what_it_cannot_do() -> None:
    features, sites, groups = _probe_data(shift=1.0)
    with pytest.raises(ValueError, match="two sites"):
        site.site_probe(features, np.full(sites.shape, "one"), groups)
    with pytest.raises(ValueError, match="folds"):
        site.site_probe(features, sites, groups, folds=1000)
    with pytest.raises(ValueError, match="rows"):
        site.site_probe(features[:-1], sites, groups)


def test_a_finding_is_json_ready() -> None:
    finding = site.Finding("site_probe", np.float64(0.9), 1 / 3, np.bool_(True), "the site is readable")
    record = finding.to_dict()
    assert record == {
        "check": "site_probe",
        "value": 0.9,
        "threshold": 1 / 3,
        "flagged": True,
        "why": "the site is readable",
    }
    assert json.loads(json.dumps(record)) == record
    assert site.Finding("lung_mass", float("nan"), 0.5, False, "no map").to_dict()["value"] is None
