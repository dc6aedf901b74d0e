"""Whether the hospital (the site an image came from) could stand in for the label: the label-site
counts table, Cramér's V, the AUC within each site, a cross-validated probe predicting the site from
features, and the ``Finding`` record an audit reports (numpy and scikit-learn only).

Cramér's V is the textbook, bias-uncorrected ``sqrt(chi2 / (n * (min(r, c) - 1)))`` with Pearson's
chi-squared of the counts table (no continuity correction): 0 when the label is spread alike over
the sites, 1 when the site decides the label.

The probe's **chance level is 1 / number of sites**: the balanced accuracy (the mean of the per-site
recalls) of any rule that ignores the features, whether it always answers the majority site (recall
1 on it, 0 elsewhere) or guesses at random, so a probe well above it reads the site from the
features. Plain accuracy would instead reward guessing the biggest site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass(frozen=True)
class Finding:
    """One check of an audit: the measured ``value``, the ``threshold`` it is held against,
    whether it is ``flagged`` and ``why`` in a sentence a reader can act on."""

    check: str
    value: float
    threshold: float
    flagged: bool
    why: str

    def to_dict(self) -> dict:
        """Plain JSON-ready types; a NaN (an undefined value) becomes None, since JSON has no NaN."""
        record = asdict(self)
        for key in ("value", "threshold"):
            number = float(record[key])
            record[key] = None if math.isnan(number) else number
        record["flagged"] = bool(record["flagged"])
        return record


@dataclass(frozen=True)
class Contingency:
    """Counts of each (label, site): ``counts[i, j]`` images of ``labels[i]`` from ``sites[j]``;
    labels and sites sorted."""

    labels: tuple
    sites: tuple
    counts: np.ndarray

    def to_dict(self) -> dict[str, dict[str, int]]:
        """label -> site -> count, names as strings."""
        return {
            str(label): {str(site): int(n) for site, n in zip(self.sites, row, strict=True)}
            for label, row in zip(self.labels, self.counts, strict=True)
        }


@dataclass(frozen=True)
class PerSiteAUC:
    """The AUC within each site that holds both classes (``auc``, with its image count in ``n``);
    every other site is in ``skipped`` with the reason."""

    auc: dict[str, float]
    n: dict[str, int]
    skipped: dict[str, str]


@dataclass(frozen=True)
class ProbeResult:
    """The site probe: out-of-fold ``balanced_accuracy``, its ``chance`` level (1 / number of
    sites), the sites in order, and each image's fold (patients never span two folds)."""

    balanced_accuracy: float
    chance: float
    sites: tuple
    fold: np.ndarray


def _pair(labels: Sequence, sites: Sequence) -> tuple[np.ndarray, np.ndarray]:
    labels, sites = np.asarray(labels), np.asarray(sites)
    if labels.ndim != 1 or labels.shape != sites.shape:
        raise ValueError(f"labels and sites must be 1-D and of one length, got {labels.shape} and {sites.shape}")
    if labels.size == 0:
        raise ValueError("no images")
    return labels, sites


def contingency(labels: Sequence, sites: Sequence) -> Contingency:
    """The label-by-site counts table."""
    labels, sites = _pair(labels, sites)
    label_values, label_index = np.unique(labels, return_inverse=True)
    site_values, site_index = np.unique(sites, return_inverse=True)
    counts = np.zeros((label_values.size, site_values.size), dtype=np.int64)
    np.add.at(counts, (label_index, site_index), 1)
    return Contingency(tuple(label_values.tolist()), tuple(site_values.tolist()), counts)


def cramers_v(labels: Sequence, sites: Sequence) -> float:
    """Cramér's V of labels against sites in [0, 1]; NaN when there is a single label or a single
    site (no association can be measured: the denominator's ``min(r, c) - 1`` is 0)."""
    counts = contingency(labels, sites).counts.astype(np.float64)
    if min(counts.shape) < 2:
        return float("nan")
    n = counts.sum()
    expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (min(counts.shape) - 1)))


def per_site_auc(y_true: Sequence, y_score: Sequence, sites: Sequence) -> PerSiteAUC:
    """The binary AUC (scikit-learn's) of the images of each site on their own; a site holding
    one class only has no AUC and is named in ``skipped``."""
    y_true, sites = _pair(y_true, sites)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.shape != y_true.shape:
        raise ValueError(f"y_score shape {y_score.shape} differs from y_true's {y_true.shape}")
    if np.unique(y_true).size > 2:
        raise ValueError("per_site_auc is for the binary task (two label values)")
    auc: dict[str, float] = {}
    n: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for site in np.unique(sites):
        keep = sites == site
        present = np.unique(y_true[keep])
        if present.size < 2:
            skipped[str(site)] = f"only label {present.tolist()[0]} ({int(keep.sum())} images)"
            continue
        auc[str(site)] = float(roc_auc_score(y_true[keep], y_score[keep]))
        n[str(site)] = int(keep.sum())
    return PerSiteAUC(auc, n, skipped)


def site_probe(features: np.ndarray, sites: Sequence, groups: Sequence, folds: int = 5, seed: int = 0) -> ProbeResult:
    """How well the site can be read from ``features`` (images x features, e.g. the members'
    pooled features): logistic regression on standardised features (the scaler fit on each
    training fold only), patient-grouped folds (``groups``: the patient of each image, so one
    patient's images never sit on both sides), balanced accuracy of the out-of-fold predictions.
    ``seed`` shuffles the groups into folds."""
    features = np.asarray(features, dtype=np.float64)
    sites, groups = _pair(sites, groups)
    if features.ndim != 2 or features.shape[0] != sites.size:
        raise ValueError(f"features must be (images, features) with {sites.size} rows, got {features.shape}")
    site_values = np.unique(sites)
    if site_values.size < 2:
        raise ValueError("the probe needs at least two sites")
    if not 2 <= folds <= np.unique(groups).size:
        raise ValueError(f"folds must be in 2..{np.unique(groups).size} (the number of patients), got {folds}")
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = np.empty_like(sites)
    fold = np.empty(sites.size, dtype=np.int64)
    for index, (train, test) in enumerate(splitter.split(features, sites, groups)):
        fold[test] = index
        if np.unique(sites[train]).size < 2:
            # one site in the training fold: the only answer it can learn is that site
            predicted[test] = sites[train][0]
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        predicted[test] = model.fit(features[train], sites[train]).predict(features[test])
    score = float(balanced_accuracy_score(sites, predicted))
    return ProbeResult(score, 1.0 / site_values.size, tuple(site_values.tolist()), fold)
