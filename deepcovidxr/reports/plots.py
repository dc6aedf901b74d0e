"""Every figure the stages draw, in one place: evaluation plots (ROC, precision-recall, calibration,
confusion matrix; for multi-class trees one-vs-rest ROC curves and a row-normalised confusion matrix),
training curves and the Grad-CAM panel.

All figures are headless: drawn on matplotlib's Agg canvas without pyplot, so no GUI backend is
ever chosen (the original's ``plt.show()`` before ``savefig`` gave blank PNGs, SPEC bug 19) and no
figure outlives its helper (nothing is registered with pyplot; each is cleared once written).
Every PNG is written atomically and carries the research-use disclaimer in its caption and
metadata. matplotlib is imported inside the helpers, so importing this module stays cheap.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from deepcovidxr.contract import run_paths
from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.scoring import calibration, metrics

logger = logging.getLogger(__name__)

DISCLAIMER = metrics.DISCLAIMER
TRAINING_METRICS = ("loss", "auc", "acc", "precision", "recall")


def new_figure(width: float = 5.0, height: float = 5.0):
    """A figure bound to the Agg canvas directly, never to pyplot.

    Going around pyplot means no GUI backend is ever selected (the original's ``plt.show()`` before
    ``savefig`` produced blank PNGs, SPEC bug 19) and no global figure registry keeps the figure alive:
    it is freed as soon as the helper returns, which is what ``plt.close`` achieves for pyplot figures.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path, title: str, band: float | None = None) -> Path:
    """Caption with the disclaimer, write atomically as PNG (disclaimer also in the PNG metadata).
    ``band``: the disclaimer's band in inches, and the PNG cropped to what is drawn; for tall figures
    (the audit's montages), where the default 4 % of the height left an inch of blank under them."""
    path = Path(path)
    figure.text(0.5, 0.005, DISCLAIMER, ha="center", va="bottom", fontsize=8, color="firebrick")
    cropped: dict = {}
    if band is None:
        figure.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        for _ in range(2):  # twice: the first pass measures the titles before square tiles settle
            figure.tight_layout(rect=(0, band / figure.get_figheight(), 1, 1), h_pad=2.0)
        cropped = {"bbox_inches": "tight", "pad_inches": 0.1}  # no blank band, no title past the top
    metadata = {"Title": f"{title} - {DISCLAIMER}" if title else DISCLAIMER, "Description": DISCLAIMER}
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", metadata=metadata, **cropped)
    finally:
        figure.clear()
    logger.info("wrote %s", path)
    return path


def _one_axis(width: float = 5.0, height: float = 5.0):
    """A new figure holding one axis: ``(figure, axis)``."""
    figure = new_figure(width, height)
    return figure, figure.add_subplot()


def _both_classes(y_true: Any, scores: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of a binary curve, refused (naming ``what``) unless both classes occur."""
    y, s = metrics._as_binary_problem(y_true, scores)
    metrics._require_both_classes(y, what)
    return y, s


def _titled(title: str) -> str:
    return f"{title}\n{DISCLAIMER}" if title else DISCLAIMER


def plot_roc(y_true: Any, scores: Any, path: Path, title: str = "ROC curve") -> Path:
    """ROC curve with its AUC and the chance diagonal."""
    y, s = _both_classes(y_true, scores, "a ROC curve")
    fpr, tpr, _ = roc_curve(y, s)
    figure, axis = _one_axis()
    axis.plot(fpr, tpr, color="tab:blue", lw=2, label=f"AUC = {roc_auc_score(y, s):.3f} (n = {y.size})")
    axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)")
    axis.set_title(_titled(title), fontsize=10)
    axis.legend(loc="lower right")
    return save_figure(figure, path, title)


def plot_precision_recall(y_true: Any, scores: Any, path: Path, title: str = "Precision-recall curve") -> Path:
    """Precision (PPV) against recall (sensitivity), with average precision and the prevalence baseline."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s = _both_classes(y_true, scores, "a precision-recall curve")
    precision, recall, _ = precision_recall_curve(y, s)
    figure, axis = _one_axis()
    axis.step(
        recall, precision, where="post", color="tab:blue", lw=2, label=f"AP = {average_precision_score(y, s):.3f}"
    )
    axis.axhline(y.mean(), color="grey", ls="--", lw=1, label=f"prevalence = {y.mean():.3f}")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)")
    axis.set_title(_titled(title), fontsize=10)
    axis.legend(loc="lower left")
    return save_figure(figure, path, title)


def plot_calibration(
    y_true: Any, scores: Any, path: Path, title: str = "Calibration (reliability diagram)", n_bins: int = 10
) -> Path:
    """Reliability diagram (observed positive fraction against mean score in 10 equal bins) with the
    Brier score, and a histogram of the scores underneath."""
    y, s = metrics._as_binary_problem(y_true, scores)
    mean_score, observed, counts = metrics.calibration_bins(y, s, n_bins)
    figure = new_figure(5.0, 6.0)
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    filled = counts > 0
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    top.plot(
        mean_score[filled], observed[filled], "o-", color="tab:blue", label=f"Brier = {metrics.brier_score(y, s):.3f}"
    )
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive")
    top.set_title(_titled(title), fontsize=10)
    top.legend(loc="upper left")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bottom.bar(edges[:-1], counts, width=1.0 / n_bins, align="edge", color="tab:blue", alpha=0.6, edgecolor="white")
    bottom.set(xlabel="predicted probability (COVID-positive score)", ylabel="cases")
    return save_figure(figure, path, title)


def plot_confusion_matrix(
    y_true: Any, scores: Any, threshold: float, path: Path, title: str = "Confusion matrix"
) -> Path:
    """2 x 2 confusion matrix at ``threshold`` (positive when ``score >= threshold``); rows are the
    actual class, columns the predicted one, labelled COVID-Neg / COVID-Pos."""
    m = metrics.binary_metrics(y_true, scores, threshold)
    matrix = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    figure, axis = _one_axis(5.0, 5.0)
    axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for (row, column), count in np.ndenumerate(matrix):
        dark = count > matrix.max() / 2
        axis.text(column, row, str(count), ha="center", va="center", fontsize=14, color="white" if dark else "black")
    axis.set_xticks([0, 1], metrics.CLASS_NAMES)
    axis.set_yticks([0, 1], metrics.CLASS_NAMES)
    axis.set(xlabel=f"predicted (score >= {threshold:.3g})", ylabel="actual")
    axis.set_title(_titled(title), fontsize=10)
    return save_figure(figure, path, title)


def evaluation_plots(folder: Path, labels: Any, scores: Any, threshold: float, title: str) -> list[Path]:
    """The four pictures evaluate.py and ensemble.py write into ``folder`` (names from
    :func:`deepcovidxr.contract.run_paths.plot_paths`), in the order ROC, precision-recall, calibration, confusion."""
    paths = run_paths.plot_paths(folder)
    return [
        plot_roc(labels, scores, paths.roc, f"{title}: ROC"),
        plot_precision_recall(labels, scores, paths.precision_recall, f"{title}: precision-recall"),
        plot_calibration(labels, scores, paths.calibration, f"{title}: calibration"),
        plot_confusion_matrix(labels, scores, threshold, paths.confusion, f"{title} (threshold {threshold})"),
    ]


def plot_roc_ovr(
    y_true: Any, probabilities: Any, class_names: tuple[str, ...] | list[str], path: Path, title: str = "ROC curves"
) -> Path:
    """One-vs-rest ROC curves of every class in one figure (each class's probability against
    "this class or not"), each with its AUC, plus the macro AUC and the chance diagonal. A class
    with no case (or only cases of it) has no curve; the legend says so."""
    names = tuple(class_names)
    y, p = metrics._as_multiclass_problem(y_true, probabilities, len(names))
    aucs = metrics.ovr_auc(y, p)
    figure, axis = _one_axis(6.0, 6.0)
    colours = [f"C{k % 10}" for k in range(len(names))]
    for k, name in enumerate(names):
        positive = (y == k).astype(np.int64)
        if np.isnan(aucs[k]):
            axis.plot([], [], color=colours[k], label=f"{name}: no curve ({int(positive.sum())} cases)")
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, k])
        axis.plot(fpr, tpr, color=colours[k], lw=2, label=f"{name}: AUC = {aucs[k]:.3f} (n = {int(positive.sum())})")
    axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)")
    macro = float(np.mean(aucs))
    macro_text = "undefined: a class has no curve" if np.isnan(macro) else f"{macro:.3f}"
    axis.set_title(_titled(f"{title} (one vs rest; macro AUC {macro_text})"), fontsize=10)
    axis.legend(loc="lower right", fontsize=9)
    return save_figure(figure, path, title)


def plot_confusion_matrix_multiclass(
    y_true: Any,
    probabilities: Any,
    class_names: tuple[str, ...] | list[str],
    path: Path,
    title: str = "Confusion matrix",
) -> Path:
    """K x K confusion matrix of the argmax call, each row divided by its class's cases (so the
    diagonal is each class's sensitivity); every cell shows the fraction and the count. Rows are
    the actual class, columns the predicted one, labelled with the class names."""
    names = tuple(class_names)
    y, p = metrics._as_multiclass_problem(y_true, probabilities, len(names))
    counts = metrics.confusion_counts(y, metrics.predicted_classes(p), len(names))
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)
    side = max(5.0, 1.1 * len(names) + 2.5)
    figure, axis = _one_axis(side, side)
    image = axis.imshow(np.nan_to_num(fractions), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="fraction of the actual class")
    for (row, column), count in np.ndenumerate(counts):
        value = fractions[row, column]
        text = "-" if np.isnan(value) else f"{value:.2f}\n({count})"
        dark = not np.isnan(value) and value > 0.5
        axis.text(column, row, text, ha="center", va="center", fontsize=11, color="white" if dark else "black")
    ticks = list(range(len(names)))
    axis.set_xticks(ticks, names, rotation=30, ha="right")
    axis.set_yticks(ticks, [f"{name} ({int(totals[k, 0])})" for k, name in enumerate(names)])
    axis.set(xlabel="predicted (highest probability)", ylabel="actual (cases)")
    axis.set_title(_titled(f"{title}, row-normalised"), fontsize=10)
    return save_figure(figure, path, title)


def multiclass_evaluation_plots(
    folder: Path, labels: Any, probabilities: Any, class_names: tuple[str, ...] | list[str], title: str
) -> list[Path]:
    """The multi-class pictures evaluate.py and ensemble.py write into ``folder`` under the binary
    ones' names (:func:`deepcovidxr.contract.run_paths.plot_paths`): the one-vs-rest ROC curves
    (``ROC_Curve.png``) and the row-normalised confusion matrix (``ConfusionMatrix.png``). The
    precision-recall and calibration figures are binary-only."""
    paths = run_paths.plot_paths(folder)
    return [
        plot_roc_ovr(labels, probabilities, class_names, paths.roc, f"{title}: ROC"),
        plot_confusion_matrix_multiclass(labels, probabilities, class_names, paths.confusion, title),
    ]


def plot_training_curves(destination: Path, histories: dict[str, dict], title: str = "") -> Path:
    """Loss, AUC, accuracy, precision and recall per epoch, training vs validation, the phases
    one after the other (a dashed line marks where phase 2 starts)."""
    figure = new_figure(4.0 * len(TRAINING_METRICS), 3.4)
    axes = figure.subplots(1, len(TRAINING_METRICS))
    for axis, metric in zip(axes, TRAINING_METRICS, strict=True):
        offset = 0
        for index, (_phase, history) in enumerate(histories.items()):
            train, val = history.get(metric, []), history.get(f"val_{metric}", [])
            epochs = np.arange(offset + 1, offset + len(train) + 1)
            axis.plot(epochs, train, color="tab:blue", label="train" if index == 0 else None)
            if val:
                axis.plot(epochs[: len(val)], val, color="tab:orange", label="validation" if index == 0 else None)
            if index > 0 and len(train):
                axis.axvline(offset + 0.5, color="grey", linestyle="--", linewidth=0.8)
            offset += len(train)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
    axes[0].legend()
    figure.suptitle(f"{title}  (dashed: backbone unfrozen)" if title else "")
    return save_figure(figure, destination, title)


def plot_gradcam(path: Path, gray: np.ndarray, heatmap: np.ndarray, name: str, score: float, target: str) -> Path:
    """Input, heatmap and overlay side by side; the title names the image, the ensemble score and
    the class whose evidence is shown (one line each, above the panels, so they never overlap)."""
    figure = new_figure(15, 5.8)
    axes = figure.subplots(1, 3)
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title("Input")
    axes[1].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title(f"Grad-CAM ({target} class)")
    axes[2].imshow(gray, cmap="gray")
    axes[2].imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    axes[2].set_title("Overlay")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"{name}: ensemble score {score:.3f}", fontsize=11)
    return save_figure(figure, path, f"Grad-CAM {name}")


# ---- trust: calibration before/after and the referral curve ---------------------------------


def plot_calibration_comparison(
    labels: Any, raw: Any, calibrated: Any, path: Path, title: str = "Calibration", bins: int = 10
) -> Path:
    """Reliability diagram before (raw ensemble score) and after calibration, ECE and Brier in the
    legend, and the two score histograms underneath (equal-width bins, :func:`calibration.bin_index`)."""
    figure = new_figure(5.5, 6.5)
    top, bottom = figure.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, values, colour in (("raw score", raw, "tab:orange"), ("calibrated", calibrated, "tab:blue")):
        y, p = calibration._probabilities(labels, values)
        index = calibration.bin_index(p, bins)
        counts = np.bincount(index, minlength=bins)
        filled = counts > 0
        mean_p = np.bincount(index, weights=p, minlength=bins)[filled] / counts[filled]
        observed = np.bincount(index, weights=y, minlength=bins)[filled] / counts[filled]
        ece = calibration.expected_calibration_error(y, p, bins)
        brier = metrics.brier_score(y, p)
        top.plot(mean_p, observed, "o-", color=colour, label=f"{name}: ECE {ece:.3f}, Brier {brier:.3f}")
        bottom.hist(p, bins=edges, color=colour, alpha=0.45, label=name)
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive")
    top.set_title(_titled(title), fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="predicted probability", ylabel="images")
    return save_figure(figure, path, title)


def plot_referral(rows: list[dict[str, float]], path: Path, title: str = "Referral curve") -> Path:
    """AUC and accuracy on the kept images against the fraction referred (rows of
    :func:`deepcovidxr.scoring.uncertainty.referral_curve`); NaN AUCs are left out."""
    fractions = np.array([r["fraction"] for r in rows]) * 100
    figure, axis = _one_axis(5.5, 4.5)
    auc = np.array([r["auc"] for r in rows], dtype=np.float64)
    finite = np.isfinite(auc)
    axis.plot(fractions[finite], auc[finite], "o-", color="tab:blue", label="AUC (kept images)")
    axis.plot(fractions, [r["accuracy"] for r in rows], "s-", color="tab:green", label="accuracy (kept images)")
    low = min([*auc[finite], *(r["accuracy"] for r in rows)], default=0.5)
    axis.set(
        xlabel="most uncertain images referred (%), images kept",
        ylabel="on the images kept",
        ylim=(math.floor(low * 10) / 10, 1.005),
    )
    axis.grid(alpha=0.3)
    axis.set_xticks(fractions, [f"{x:g}\nn={r['kept']}" for r, x in zip(rows, fractions, strict=True)], fontsize=8)
    axis.set_title(_titled(title), fontsize=10)
    axis.legend(loc="lower right")
    return save_figure(figure, path, title)
