"""The audit page's figures (matplotlib on the Agg canvas, written atomically with the disclaimer
through :mod:`deepcovidxr.reports.plots`): the three scoring modes' ROC curves, the images whose
score changes most without the lungs, the Grad-CAM mass inside the lungs against the lungs' share of
the image, and Grad-CAM overlays with the lung mask's outline.

Every curve is computed from ``scores.csv`` as read by pandas (:func:`roc_points`), so the figure
shows what anyone recomputes from that file; rows with an ``error`` are left out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from deepcovidxr.imaging import masking
from deepcovidxr.reports.plots import new_figure, save_figure

logger = logging.getLogger(__name__)

MODES = ("as_is", "lungs_only", "lungs_removed")
MODE_LABELS = {"as_is": "as is", "lungs_only": "lungs only", "lungs_removed": "lungs removed"}
MODE_COLOURS = {"as_is": "tab:blue", "lungs_only": "tab:green", "lungs_removed": "tab:red"}
# Line styles as well as colours: two modes with the same curve (a model that ignores the lungs
# scores alike as is and without them) would otherwise hide one under the other.
MODE_STYLES = {"as_is": "-", "lungs_only": "--", "lungs_removed": ":"}
TILE = 2.6  # inches per image tile (at 100 dpi: 260 px, enough to see a lung field)
LINE_CHARS = 36  # longest line of an image name drawn in a figure (two lines at most)
DISCLAIMER_BAND = 0.2  # inches kept under a figure's axes for the disclaimer


@dataclass(frozen=True)
class AuditImage:
    """One image as the audit page shows it, every array in the same display frame."""

    name: str  # the image's name in the tree, e.g. "Positive/p001.png"
    display: np.ndarray  # gray uint8 (H, W), display size (<= 512 px)
    mask: np.ndarray  # bool (H, W): the U-Net lung mask
    heatmap: np.ndarray | None  # float32 (H, W) in [0, 1]: the ensemble Grad-CAM; None if not computed
    scores: Mapping[str, float]  # mode -> score
    lungs_only: np.ndarray | None = None  # gray uint8 (H, W): outside the lungs filled
    lungs_removed: np.ndarray | None = None  # gray uint8 (H, W): the lungs filled


@dataclass(frozen=True)
class RocCurve:
    """One ROC curve of one mode: ``fpr``/``tpr`` as :func:`sklearn.metrics.roc_curve` returns them,
    the AUC, and the cases it was drawn from (empty arrays and a NaN AUC when one class is absent)."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    n: int
    positives: int


def scored_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``scores.csv`` without an error (pandas reads an empty ``error`` cell as NaN or
    as an empty string, depending on the column's other cells)."""
    if "error" not in table:
        return table
    error = table["error"]
    return table[error.isna() | (error.astype(str).str.strip() == "")]


def score_columns(classes: Sequence[str]) -> dict[str, dict[str, str]]:
    """Target class -> mode -> the column of ``scores.csv`` holding its score: binary trees have one
    column per mode (the score of the last class, Positive), multi-class trees ``<mode>.p_<class>``."""
    if len(classes) <= 2:
        return {classes[-1]: {mode: mode for mode in MODES}}
    return {name: {mode: f"{mode}.p_{name}" for mode in MODES} for name in classes}


def roc_points(table: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, RocCurve]]:
    """Target class -> mode -> its ROC curve (one-vs-rest for multi-class: ``y`` is the class index),
    from the rows without an error and with a finite score in that column."""
    rows = scored_rows(table)
    curves: dict[str, dict[str, RocCurve]] = {}
    for index, (name, columns) in enumerate(score_columns(classes).items()):
        target = 1 if len(classes) <= 2 else index
        curves[name] = {}
        for mode, column in columns.items():
            scores = pd.to_numeric(rows[column], errors="coerce").to_numpy(np.float64)
            finite = np.isfinite(scores)
            y = (rows["y"].to_numpy()[finite].astype(np.int64) == target).astype(np.int64)
            s = scores[finite]
            if 0 < y.sum() < y.size:
                fpr, tpr, _ = roc_curve(y, s)
                curve = RocCurve(fpr, tpr, float(roc_auc_score(y, s)), int(y.size), int(y.sum()))
            else:  # one class only: no curve, said so in the legend
                curve = RocCurve(np.empty(0), np.empty(0), math.nan, int(y.size), int(y.sum()))
            curves[name][mode] = curve
    return curves


def plot_mode_rocs(table: pd.DataFrame, classes: Sequence[str], path: Path) -> Path:
    """The three modes' ROC curves: one axes for a binary tree, one panel per class (one vs rest)
    for a multi-class one; each curve's AUC and case count in the legend."""
    curves = roc_points(table, classes)
    figure = new_figure(5.2 * len(curves), 6.0)
    axes = np.atleast_1d(figure.subplots(1, len(curves)))
    for axis, (name, by_mode) in zip(axes, curves.items(), strict=True):
        for mode, curve in by_mode.items():
            label = MODE_LABELS[mode]
            if math.isnan(curve.auc):
                axis.plot([], [], color=MODE_COLOURS[mode], label=f"{label}: no curve ({curve.positives} cases)")
                continue
            axis.plot(
                curve.fpr,
                curve.tpr,
                color=MODE_COLOURS[mode],
                ls=MODE_STYLES[mode],
                lw=2.2,
                label=f"{label}: AUC {curve.auc:.3f}",
            )
        axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
        n = max((c.n for c in by_mode.values()), default=0)
        title = f"{name} (n = {n})" if len(curves) == 1 else f"{name} vs rest (n = {n})"
        axis.set_title(title, fontsize=10, parse_math=False)
        axis.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)")
        axis.set_aspect("equal")
        axis.legend(loc="lower right", fontsize=8)
    figure.suptitle("ROC curves: as is, lungs only, lungs removed", fontsize=11)
    return save_figure(figure, path, "Audit ROC curves")


def plot_attention(table: pd.DataFrame, path: Path) -> Path:
    """Histograms of the per-image Grad-CAM mass inside the lungs and of the lungs' share of the
    image (the chance level), each with its mean as a dashed line."""
    rows = scored_rows(table)
    figure = new_figure(6.4, 4.2)
    axis = figure.add_subplot()
    bins = np.linspace(0.0, 1.0, 21)
    drawn = 0
    for column, label, colour in (
        ("cam_in_lungs", "Grad-CAM mass inside the lungs", "tab:orange"),
        ("lung_share", "lungs' share of the image (chance)", "tab:blue"),
    ):
        values = pd.to_numeric(rows.get(column, pd.Series(dtype=float)), errors="coerce").dropna().to_numpy()
        if values.size == 0:
            continue
        drawn += 1
        axis.hist(values, bins=bins, color=colour, alpha=0.5, label=f"{label} (mean {values.mean():.2f})")
        axis.axvline(values.mean(), color=colour, ls="--", lw=1.5)
    if drawn:
        axis.set_ylim(0, axis.get_ylim()[1] * 1.4)  # headroom: the legend never covers a bar
        axis.legend(loc="upper left", fontsize=8)
    else:
        axis.text(0.5, 0.5, "no Grad-CAM was computed", ha="center", va="center", transform=axis.transAxes)
    axis.set(xlim=(0, 1), xlabel="share (per image)", ylabel="images")
    axis.set_title("Where the model looks, per image", fontsize=10)
    return save_figure(figure, path, "Audit Grad-CAM inside the lungs")


def _wrapped(name: str, width: int = LINE_CHARS) -> str:
    """An image name on one line, or on two of at most ``width`` characters (broken after a "/"
    when both parts fit, else after another separator, else at ``width``); a name longer than two
    lines loses its middle to "...", so the start (the class folder) and the end (the file's own
    name) both stay. The page's tables carry the full name."""
    if len(name) <= width:
        return name
    if len(name) > 2 * width:  # the first line keeps the start and ends in "...", the second the end
        return f"{name[: width - 3]}...\n{name[-width:]}"
    fits = [cut for cut in range(len(name) - width, width + 1) if name[cut - 1] in "/_- ."]
    folder = [cut for cut in fits if name[cut - 1] == "/"]
    cut = (folder or fits or [width])[-1]
    return f"{name[:cut]}\n{name[cut:]}"


def _score_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _hide(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_visible(False)


def write_changed_montage(images: Sequence[AuditImage], path: Path) -> Path:
    """One row per image (in the order given), three tiles: as is, lungs only, lungs removed (a tile
    whose array was not given says so), each titled with its mode's score; the name (over two lines
    when long) along the row's left edge."""
    # a row: the square tile (its width, set by the figure's), its title and the gap to the next row
    figure = new_figure(3 * TILE + 0.5, (TILE + 0.35) * max(1, len(images)) + DISCLAIMER_BAND)
    axes = np.atleast_2d(figure.subplots(max(1, len(images)), 3, squeeze=False))
    for row, image in zip(axes, images, strict=False):
        pictures = (image.display, image.lungs_only, image.lungs_removed)
        for axis, mode, picture in zip(row, MODES, pictures, strict=True):
            _hide(axis)
            score = _score_text(image.scores.get(mode))
            if picture is None:
                axis.text(0.5, 0.5, "not given", ha="center", va="center", transform=axis.transAxes, color="grey")
            else:
                axis.imshow(picture, cmap="gray", vmin=0, vmax=255)
            axis.set_title(f"{MODE_LABELS[mode]}: {score}", fontsize=9, color=MODE_COLOURS[mode])
        # the name on the left tile's y label: never overlaps the titles
        row[0].set_ylabel(_wrapped(image.name), fontsize=8, multialignment="center", parse_math=False)
    return save_figure(figure, path, band=DISCLAIMER_BAND, title="Audit: score changes without the lungs")


def write_overlay_grid(images: Sequence[AuditImage], path: Path, columns: int = 4) -> Path:
    """Each image with its Grad-CAM (jet, transparent) and the lung mask's outline (white), titled
    with the share of the map's mass inside the lungs against the lungs' share of the image."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    figure = new_figure(columns * (TILE + 0.4), rows * (TILE + 0.85) + 0.3)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis in axes:
        _hide(axis)
    for axis, image in zip(axes, images, strict=False):
        axis.imshow(image.display, cmap="gray", vmin=0, vmax=255)
        share = masking.mask_share(image.mask)
        if image.heatmap is None:
            inside = "no Grad-CAM"
        else:
            axis.imshow(image.heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
            mass = masking.mass_inside(np.clip(image.heatmap, 0, None), image.mask)
            inside = f"Grad-CAM in lungs {_score_text(mass)}"
        if image.mask.any() and not image.mask.all():  # a contour needs both sides of the edge
            axis.contour(image.mask.astype(np.float32), levels=[0.5], colors="white", linewidths=1.2)
        axis.set_title(f"{_wrapped(image.name)}\n{inside} (chance {share:.3f})", fontsize=8, parse_math=False)
    return save_figure(figure, path, band=DISCLAIMER_BAND, title="Audit: Grad-CAM overlays")


__all__ = [
    "MODES",
    "MODE_LABELS",
    "AuditImage",
    "RocCurve",
    "plot_attention",
    "plot_mode_rocs",
    "roc_points",
    "score_columns",
    "scored_rows",
    "write_changed_montage",
    "write_overlay_grid",
]
