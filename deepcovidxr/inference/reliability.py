"""What evaluate.py and predict.py add to a score so a reader can trust it (or not): the
per-image uncertainty, the calibrated probability and decision at a stored operating point, the
referral curve and the report page's metric rows. The numerics live in
:mod:`deepcovidxr.scoring` (the ensemble's :class:`~deepcovidxr.scoring.task.Task` chooses the
binary or multi-class ones); this module applies them to an :class:`inference.Ensemble`'s outputs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from deepcovidxr.inference.ensemble import Ensemble
from deepcovidxr.reports.page import Figure, Metric
from deepcovidxr.scoring import uncertainty
from deepcovidxr.scoring.task import Fit


def image_uncertainty(chosen: Ensemble, scores: np.ndarray, tta_variance: np.ndarray | None = None) -> np.ndarray:
    """The one definition of the ``uncertainty`` column (evaluate.py and predict.py): the weighted
    standard deviation of the member scores around the ensemble score (weights of the rule), with
    test-time augmentation plus the members' variance over the passes ``(images, members)``
    (``score_members``' ``tta_variance``); multi-class, the spread of the predicted class's
    probability (:meth:`deepcovidxr.scoring.task.Task.uncertainty`)."""
    return chosen.task.uncertainty(scores, chosen.rule_weights, tta_variance)


def stored_fit(chosen: Ensemble) -> Fit | None:
    """The Validation fit stored with the ensemble's weights (binary: calibration and operating
    points; multi-class: the temperature), or None."""
    return chosen.task.stored_fit(chosen.calibration)


def probabilities(chosen: Ensemble, combined: np.ndarray) -> np.ndarray | None:
    """The ``Probability`` column, or None without a stored calibration: binary, the calibrated
    probability of each ensemble score; multi-class, the temperature-scaled probability of the
    predicted class (the argmax, which scaling never changes)."""
    fit = stored_fit(chosen)
    return None if fit is None else fit.probability(combined)


def held_out_calibration(chosen: Ensemble, labels: np.ndarray, combined: np.ndarray, n_boot: int, seed: int):
    """The stored calibration's figures on another split (Test), or None without one."""
    fit = stored_fit(chosen)
    return None if fit is None else fit.held_out(labels, combined, n_boot=n_boot, seed=seed)


def threshold(chosen: Ensemble, spec: str | float) -> float | None:
    """``--threshold``: a number, or a named operating point stored with the ensemble weights; a
    named point the ensemble dropped (fitted for other members) is a UsageError saying why. None
    for a multi-class ensemble (the call is the argmax)."""
    return chosen.task.threshold(spec, stored_fit(chosen), chosen.calibration_dropped)


def referral(labels: np.ndarray, combined: np.ndarray, spread: np.ndarray) -> list[dict[str, float]]:
    return uncertainty.referral_curve(labels, combined, spread)


def evaluation_figures(
    folder_paths: Any, chosen: Ensemble, labels: np.ndarray, combined: np.ndarray, rows: list[dict]
) -> list[Path]:
    """Referral curve, and (binary, calibration stored) the reliability diagram before/after."""
    from deepcovidxr.reports import plots

    written = [plots.plot_referral(rows, folder_paths.referral, "Referral curve on Test")]
    # The before/after diagram is of P(Positive); a multi-class one would be top-label (not drawn).
    probs = chosen.task.pick(binary=probabilities(chosen, combined), multiclass=None)
    if probs is not None:
        written.append(
            plots.plot_calibration_comparison(
                labels, combined, probs, folder_paths.calibration_fit, "Calibration on Test"
            )
        )
    return written


def metric_rows(summary: dict, held_out: dict | None, rows: list[dict]) -> list[Metric]:
    """The report's metric table from metrics.evaluate / multiclass_metrics, the calibration
    report and the referral rows."""
    out: list[Metric] = []
    if "auc_ci95" in summary:
        low, high = summary["auc_ci95"]
        out.append(Metric("AUC", summary["auc"], low, high))
        if not held_out:  # else they come below, with their intervals
            at = summary["at_0.5"]
            out.append(Metric("Sensitivity at 0.5", at["sensitivity"]))
            out.append(Metric("Specificity at 0.5", at["specificity"]))
        youden = summary.get("at_youden")
        if youden and youden.get("chosen_on") != "Validation":
            # Chosen on the cases it is reported on: optimistic, and the page says so.
            where = f"the Youden threshold chosen on {youden.get('chosen_on', 'Test')} (optimistic)"
            cut = f"score >= {youden['threshold']:.4f}"
            for rate in ("sensitivity", "specificity"):
                out.append(Metric(f"{rate.capitalize()} at {where}, {cut}", youden[rate]))
    else:
        low, high = summary["macro_auc_ci95"]
        out.append(Metric("Macro one-vs-rest AUC", summary["macro"]["auc"], low, high))
        out.append(Metric("Accuracy", summary["accuracy"]))
        for name, values in summary["per_class"].items():
            out.append(
                Metric(
                    f"{name}: sensitivity / specificity / precision / F1",
                    " / ".join(
                        "0 (undefined)" if k in values.get("undefined", ()) else _fmt(values[k])
                        for k in ("sensitivity", "specificity", "precision", "f1")
                    ),
                )
            )
    if held_out and "log_loss_raw" in held_out:  # multi-class: temperature scaling
        method = f"temperature {held_out['temperature']:.3f}"
        for label, key in (("Top-label ECE", "ece"), ("Brier score", "brier"), ("Log loss", "log_loss")):
            out.append(Metric(f"{label} (raw probabilities)", held_out[f"{key}_raw"]))
            out.append(Metric(f"{label} ({method})", held_out[f"{key}_calibrated"]))
    elif held_out:
        out.append(Metric("Expected calibration error (raw score)", held_out["ece_raw"]))
        out.append(Metric(f"Expected calibration error ({held_out['calibration_method']})", held_out["ece_calibrated"]))
        out.append(Metric("Brier score (raw score)", held_out["brier_raw"]))
        out.append(Metric(f"Brier score ({held_out['calibration_method']})", held_out["brier_calibrated"]))
        for name, point in held_out["operating_points"].items():
            chosen_on = "" if name == "0.5" else ", chosen on Validation"
            for rate in ("sensitivity", "specificity"):
                value = point[rate]
                out.append(
                    Metric(
                        f"{rate.capitalize()} at {name} (score >= {point['threshold']:.4f}{chosen_on})",
                        value["point"],
                        value["low"],
                        value["high"],
                    )
                )
    for row in rows:
        if row["fraction"] > 0:
            out.append(
                Metric(
                    f"Kept AUC / accuracy with the {row['fraction']:.0%} most uncertain referred",
                    f"{_fmt(row['auc'])} / {_fmt(row['accuracy'])}",
                    note=f"{row['kept']} kept",
                )
            )
    return out


def figures_of(paths: list[Path]) -> list[Figure]:
    return [Figure(p, p.stem.replace("_", " ")) for p in paths]


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.3f}"
