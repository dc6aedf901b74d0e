"""Binary classification metrics for the COVID-positive score (their plots: :mod:`deepcovidxr.reports.plots`).

The original evaluate.py reported only a confusion matrix, sklearn's per-class report and the ROC AUC,
thresholded with ``np.round`` (SPEC s.11, bug 20). This module adds what a reader of a diagnostic-accuracy
study expects: sensitivity, specificity, PPV, NPV and F1 at a stated threshold, the Youden threshold, a
seeded bootstrap confidence interval for the AUC, the Brier score and the calibration bins.

Conventions used throughout:

* labels are 1 = COVID-positive, 0 = COVID-negative (Keras' alphabetical class index, SPEC s.16);
* a case is predicted positive when ``score >= threshold``. The original used ``np.round(score)``, which
  rounds 0.5 down to 0 (banker's rounding), so a score of exactly 0.5 was called negative; here it is
  positive, as ``sklearn.metrics.roc_curve`` thresholds are also read;
* a ratio whose denominator is zero (e.g. PPV when nothing is predicted positive) is NaN, never an error,
  so one degenerate subgroup cannot abort a whole evaluation.

Multi-class trees (three or more classes, :mod:`deepcovidxr.contract.classes`) take labels as class indices
and (cases, classes) probability rows: :func:`multiclass_metrics` gives per-class one-vs-rest
sensitivity, specificity, precision, F1 and AUC (standard definitions, scikit-learn's where it has
them), their macro and support-weighted means, accuracy, the confusion matrix and a seeded
bootstrap interval of the macro AUC.

Only numpy and scikit-learn are imported; nothing here draws.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from deepcovidxr.errors import UsageError

logger = logging.getLogger(__name__)

DISCLAIMER = "Research use only - not for diagnosis"
CLASS_NAMES: tuple[str, str] = ("COVID-Neg", "COVID-Pos")

# Bootstrap resamples are materialised as a (resamples x cases) count matrix; this caps its size
# so a large test set never needs more than a few tens of MB at once.
_BOOTSTRAP_CELLS = 2_000_000


def _as_binary_problem(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels (0/1 or bool) and finite scores of the same length."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {s.size}")
    if y.size == 0:
        raise ValueError("no cases: labels and scores are empty")
    if y.dtype != bool:
        values = np.unique(y)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"labels must be 0/1 (1 = COVID-positive), got values {values[:10].tolist()}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y.astype(np.int64), s


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero (undefined, not zero)."""
    return float(numerator) / float(denominator) if denominator else math.nan


def binary_metrics(y_true: Any, scores: Any, threshold: float) -> dict[str, float | int]:
    """Confusion counts and the usual ratios at ``threshold``.

    A case is predicted positive when ``score >= threshold`` (the original's ``np.round`` called 0.5
    negative, SPEC bug 20). Returned keys: ``threshold``, ``tp``, ``fp``, ``tn``, ``fn`` (ints) and
    ``accuracy``, ``sensitivity`` (recall of positives), ``specificity`` (recall of negatives), ``ppv``
    (precision), ``npv``, ``f1`` (floats; NaN where the denominator is zero).
    """
    y, s = _as_binary_problem(y_true, scores)
    predicted = s >= threshold
    positive = y == 1
    tp = int(np.count_nonzero(predicted & positive))
    fp = int(np.count_nonzero(predicted & ~positive))
    tn = int(np.count_nonzero(~predicted & ~positive))
    fn = int(np.count_nonzero(~predicted & positive))
    return {
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _require_both_classes(y: np.ndarray, what: str) -> None:
    if y.min() == y.max():
        raise UsageError(f"{what} needs both classes; all {y.size} labels are {int(y[0])}")


def youden_threshold(y_true: Any, scores: Any) -> float:
    """The score threshold maximising Youden's J = sensitivity + specificity - 1 on the ROC curve.

    Candidates are the observed scores (``roc_curve``'s thresholds, prediction = ``score >= t``); the
    ``+inf`` point that ``roc_curve`` prepends is excluded because "call nobody positive" is not a usable
    operating point and would not serialise to strict JSON. Ties go to the highest threshold, the most
    conservative operating point. Raises ValueError when only one class is present.
    """
    y, s = _as_binary_problem(y_true, scores)
    _require_both_classes(y, "the Youden threshold")
    # drop_intermediate=False: every observed score is a candidate, so tie-breaking is well defined.
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    # Thresholds are decreasing, so argmax (first maximum) is the highest tied threshold.
    return float(thresholds[int(np.argmax(tpr - fpr))])


def auc_or_nan(labels: Any, scores: Any) -> float:
    """ROC AUC (scikit-learn's), NaN where the labels hold one class only (AUC is undefined)."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else math.nan


def macro_auc_or_nan(y_true: Any, probabilities: Any, n_classes: int) -> float:
    """scikit-learn's macro one-vs-rest ROC AUC of (cases, classes) ``probabilities`` against
    class indices; NaN when a class has no case (or every case is of one class) or a probability
    is not finite (a diverged member), as :func:`auc_or_nan` is for two classes."""
    labels = np.asarray(y_true).astype(int)
    if len(np.unique(labels)) < n_classes or not np.all(np.isfinite(probabilities)):
        return math.nan
    return float(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    )


def auc_with_case_weights(y_true: Any, scores: Any, case_weights: Any) -> np.ndarray:
    """ROC AUC for many weightings of the same cases at once (the bootstrap's inner loop).

    ``case_weights`` has shape (k, n): row j gives each case a non-negative weight, e.g. how often a
    bootstrap resample drew it. The AUC is the Mann-Whitney probability that a positive outscores a
    negative, ties counting one half, which equals ``roc_auc_score`` on the data with each case repeated
    its weight times. Rows where one class has zero total weight give NaN.
    """
    y, s = _as_binary_problem(y_true, scores)
    w = np.asarray(case_weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(f"case_weights must have shape (k, {y.size}), got {w.shape}")
    order = np.argsort(s, kind="stable")
    sorted_scores, sorted_labels = s[order], y[order]
    # Tied scores form one group: a positive beats every negative of a lower group and half-beats
    # the negatives of its own group.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = w[:, order]
    pos = np.add.reduceat(w * sorted_labels, starts, axis=1)
    neg = np.add.reduceat(w * (1 - sorted_labels), starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    pos_total, neg_total = pos.sum(axis=1), neg.sum(axis=1)
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = wins / (pos_total * neg_total)
    auc[(pos_total == 0) | (neg_total == 0)] = np.nan
    return auc


def _check_bootstrap(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def resample_indices(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap resamples of ``n`` cases drawn with replacement from ``rng``, as
    (resamples, cases) index blocks of at most ``_BOOTSTRAP_CELLS`` cells (every bootstrap of the
    package draws through here, so a seed means the same resamples everywhere)."""
    chunk = max(1, _BOOTSTRAP_CELLS // max(1, n))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_boot - start), n))


def _resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """:func:`resample_indices` (``default_rng(seed)``) as (resamples, cases) counts of how often
    each case was drawn."""
    for drawn in resample_indices(np.random.default_rng(seed), n, n_boot):
        rows = drawn.shape[0]
        # One bincount over offset indices counts every resample at once.
        flat = (drawn + (np.arange(rows) * n)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def bootstrap_auc_ci(
    y_true: Any, scores: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the ROC AUC, resampling cases with replacement.

    Seeded (``numpy.random.default_rng(seed)``), so the same inputs always give the same interval.
    Resamples that happen to contain one class only have no AUC and are skipped (not redrawn), so the
    interval rests on slightly fewer than ``n_boot`` values for tiny or very unbalanced sets. Returns
    ``(nan, nan)`` when no resample is usable (e.g. only one class in the data).
    """
    y, s = _as_binary_problem(y_true, scores)
    _check_bootstrap(n_boot, level)
    if y.min() == y.max():
        logger.warning("bootstrap AUC CI undefined: all %d labels are %d", y.size, int(y[0]))
        return (math.nan, math.nan)
    values = np.concatenate([auc_with_case_weights(y, s, counts) for counts in _resample_counts(y.size, n_boot, seed)])
    values = values[np.isfinite(values)]
    skipped = n_boot - values.size
    if skipped:
        logger.info("bootstrap AUC: skipped %d of %d resamples holding one class only", skipped, n_boot)
    if values.size == 0:
        logger.warning("bootstrap AUC CI undefined: no resample held both classes")
        return (math.nan, math.nan)
    return _percentile_interval(values, level)


def brier_score(y_true: Any, scores: Any) -> float:
    """Mean squared difference between the score (a probability in [0, 1]) and the 0/1 label."""
    y, s = _as_binary_problem(y_true, scores)
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("the Brier score needs probabilities in [0, 1]")
    return float(np.mean((s - y) ** 2))


def evaluate(
    y_true: Any,
    scores: Any,
    n_boot: int = 2000,
    seed: int = 0,
    *,
    split: str = "Test",
    youden: float | None = None,
) -> dict[str, Any]:
    """Everything a results table needs, as plain JSON-serialisable values.

    Keys: ``n``, ``positives``, ``auc``, ``auc_ci95`` ([low, high]; [None, None] with ``n_boot`` 0:
    no interval), ``brier``, ``at_0.5`` (:func:`binary_metrics` at 0.5, the published operating
    point) and ``at_youden``: at ``youden``, a threshold chosen on Validation (``chosen_on``:
    ``"Validation"``), else at :func:`youden_threshold` of these very cases (``chosen_on``:
    ``split``), which is optimistic and labelled so. With one class only, ``auc`` and the CI are NaN
    and a Youden point chosen here is None (sensitivity or specificity at a given threshold is still
    meaningful, e.g. for a positives-only cohort).
    """
    y, s = _as_binary_problem(y_true, scores)
    both = bool(y.min() != y.max())
    auc = auc_or_nan(y, s)
    low, high = bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed) if n_boot else (None, None)
    if youden is not None:
        at_youden = {**binary_metrics(y, s, youden), "chosen_on": "Validation"}
    else:
        at_youden = {**binary_metrics(y, s, youden_threshold(y, s)), "chosen_on": split} if both else None
    return {
        "n": int(y.size),
        "positives": int(y.sum()),
        "auc": auc,
        "auc_ci95": [low, high],
        "brier": brier_score(y, s) if 0.0 <= s.min() and s.max() <= 1.0 else math.nan,
        "at_0.5": binary_metrics(y, s, 0.5),
        "at_youden": at_youden,
    }


# ---------------------------------------------------------------------------------------- calibration


def calibration_bins(y_true: Any, scores: Any, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width bins over [0, 1]: (mean score, observed positive fraction, count) per bin; NaN where
    a bin is empty. The last bin is closed so a score of exactly 1.0 is counted."""
    y, s = _as_binary_problem(y_true, scores)
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("a calibration diagram needs probabilities in [0, 1]")
    index = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(index, weights=s, minlength=n_bins) / counts
        observed = np.bincount(index, weights=y, minlength=n_bins) / counts
    return mean_score, observed, counts


# ---------------------------------------------------------------------------------------- multi-class

MULTICLASS_RATES = ("sensitivity", "specificity", "precision", "f1", "auc")


def _as_multiclass_problem(y_true: Any, probabilities: Any, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate class-index labels (0..K-1) and finite (cases, K) probabilities."""
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2:
        raise ValueError(f"labels must be 1-D and probabilities 2-D (cases, classes), got {y.shape} and {p.shape}")
    if p.shape != (y.size, n_classes):
        raise ValueError(f"probabilities of shape {p.shape} do not match {y.size} cases of {n_classes} classes")
    if y.size == 0:
        raise ValueError("no cases: labels and probabilities are empty")
    if not np.isfinite(p).all():
        raise ValueError("probabilities contain NaN or infinity")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must be class indices 0..{n_classes - 1}, got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64), p


def predicted_classes(probabilities: Any) -> np.ndarray:
    """The call for each row: the class of highest probability (a tie goes to the first class in
    the sorted order, as ``numpy.argmax``)."""
    return np.asarray(probabilities, dtype=np.float64).argmax(axis=1)


def confusion_counts(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """(K, K) integer counts, rows the actual class, columns the predicted one (scikit-learn's
    ``confusion_matrix`` with ``labels=range(K)``)."""
    y, pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def ovr_auc(y_true: Any, probabilities: Any) -> np.ndarray:
    """One-vs-rest ROC AUC of each class (its probability column against "this class or not"),
    NaN for a class with no case or every case (undefined)."""
    y = np.asarray(y_true, np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    return np.array([auc_or_nan((y == k).astype(np.int64), p[:, k]) for k in range(p.shape[1])])


def bootstrap_macro_auc_ci(
    y_true: Any, probabilities: Any, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the macro one-vs-rest AUC, resampling cases with
    replacement (``default_rng(seed)``, the same resampling scheme as :func:`bootstrap_auc_ci`).
    A resample missing a class (its AUC undefined) is skipped; ``(nan, nan)`` when none is usable
    or when a class is absent from the data."""
    y = np.asarray(y_true, np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    n_classes = p.shape[1]
    _check_bootstrap(n_boot, level)
    present = np.bincount(y, minlength=n_classes)
    if (present == 0).any() or (present == y.size).any():
        logger.warning("bootstrap macro AUC CI undefined: class counts %s", present.tolist())
        return (math.nan, math.nan)
    values: list[np.ndarray] = []
    for counts in _resample_counts(y.size, n_boot, seed):
        per_class = np.stack(
            [auc_with_case_weights((y == k).astype(np.int64), p[:, k], counts) for k in range(n_classes)]
        )
        values.append(per_class.mean(axis=0))  # NaN when any class is missing from the resample
    macro = np.concatenate(values)
    macro = macro[np.isfinite(macro)]
    if macro.size < n_boot:
        logger.info("bootstrap macro AUC: skipped %d of %d resamples missing a class", n_boot - macro.size, n_boot)
    if macro.size == 0:
        return (math.nan, math.nan)
    return _percentile_interval(macro, level)


# Why a one-vs-rest rate has a zero denominator (f1's is zero only when both of the first two hold).
_UNDEFINED_BECAUSE = {
    "sensitivity": "no cases",
    "specificity": "no cases of other classes",
    "precision": "never predicted",
    "f1": "no cases",
}


def multiclass_metrics(
    y_true: Any, probabilities: Any, class_names: tuple[str, ...] | list[str], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Everything a multi-class results table needs, as plain JSON-serialisable values.

    The call is the argmax of each probability row (:func:`predicted_classes`). Per class, one
    against the rest: ``sensitivity`` = recall = TP / (TP + FN), ``specificity`` = TN / (TN + FP),
    ``precision`` (PPV) = TP / (TP + FP), ``f1`` = 2TP / (2TP + FP + FN) (scikit-learn's
    ``precision_recall_fscore_support`` for the first, third and fourth), ``auc`` = one-vs-rest ROC
    AUC of the class's probability, and ``support`` (cases of the class). A rate whose denominator
    is zero (a class never predicted has no precision; one without cases no sensitivity) is 0, as
    scikit-learn reports it by default, so every figure equals scikit-learn's; it is named in the
    class's ``undefined`` list and logged as a warning, so a 0 that means "undefined" is never
    mistaken for a measured 0. An AUC needs cases of the class and of the rest: NaN otherwise.

    Keys: ``n``, ``classes``, ``counts`` ({class: cases}), ``accuracy``, ``per_class``
    ({class: {sensitivity, specificity, precision, f1, auc, support, undefined}}), ``macro``
    (unweighted mean of each rate over the classes, scikit-learn's ``average="macro"``; the AUC's
    is NaN when any class's AUC is), ``weighted`` (the mean
    weighted by support, scikit-learn's ``average="weighted"``), ``macro_auc_ci95`` ([low, high],
    seeded bootstrap of the macro AUC, ``n_boot`` resamples; [None, None] with ``n_boot`` 0) and
    ``confusion_matrix`` (rows actual, columns predicted, counts).
    """
    names = tuple(class_names)
    n_classes = len(names)
    y, p = _as_multiclass_problem(y_true, probabilities, n_classes)
    matrix = confusion_counts(y, predicted_classes(p), n_classes)
    tp = np.diag(matrix)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    tn = y.size - tp - fp - fn
    aucs = ovr_auc(y, p)
    support = matrix.sum(axis=1)
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        ratios = {
            "sensitivity": (tp[k], tp[k] + fn[k]),
            "specificity": (tn[k], tn[k] + fp[k]),
            "precision": (tp[k], tp[k] + fp[k]),
            "f1": (2 * tp[k], 2 * tp[k] + fp[k] + fn[k]),
        }
        undefined = [rate for rate, (_, denominator) in ratios.items() if not denominator]
        if undefined:
            reasons = dict.fromkeys(_UNDEFINED_BECAUSE[rate] for rate in undefined)
            logger.warning(
                "%s: %s undefined (%s), reported as 0 as scikit-learn does",
                name,
                ", ".join(undefined),
                ", ".join(reasons),
            )
        per_class[name] = {rate: _ratio(*pair) if pair[1] else 0.0 for rate, pair in ratios.items()}
        per_class[name] |= {"auc": float(aucs[k]), "support": int(support[k]), "undefined": undefined}
    weights = support / support.sum()
    macro, weighted = {}, {}
    for rate in MULTICLASS_RATES:
        values = np.array([per_class[name][rate] for name in names], np.float64)
        macro[rate] = float(values.mean())
        # A class without cases has weight 0; leave it out rather than let its NaN spoil the sum.
        used = weights > 0
        weighted[rate] = float(np.sum(values[used] * weights[used]))
    low, high = bootstrap_macro_auc_ci(y, p, n_boot=n_boot, seed=seed) if n_boot else (None, None)
    return {
        "n": int(y.size),
        "classes": list(names),
        "counts": {name: int(support[k]) for k, name in enumerate(names)},
        "accuracy": _ratio(int(tp.sum()), y.size),
        "per_class": per_class,
        "macro": macro,
        "weighted": weighted,
        "macro_auc_ci95": [low, high],
        "confusion_matrix": matrix.tolist(),
    }
