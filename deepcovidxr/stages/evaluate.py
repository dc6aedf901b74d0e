"""evaluate.py: the ensemble on the Test split of a dataset tree: predictions, metrics with
bootstrap intervals, figures (also as TensorBoard images).

Binary ensembles write what they always did. Multi-class ensembles (three or more classes) write
``Results/predictions.csv`` (``Filenames``, ``Predictions`` and ``Actual`` as class names, one
``p_<class>`` column per class, rows summing to 1; no member columns), every member's probability
of every class in ``Results/member_probabilities.csv`` (``Filenames``, ``<member>.p_<class>``),
``Results/metrics.json`` (:func:`deepcovidxr.scoring.metrics.multiclass_metrics`, plus each member's macro
AUC) and the one-vs-rest ROC curves and the row-normalised confusion matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.config.inference_stages import EvaluateConfig
from deepcovidxr.contract import layout, run_paths
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.file_report import ERROR
from deepcovidxr.contract.layout import DataTree, Split
from deepcovidxr.inference import reliability
from deepcovidxr.inference.ensemble import (
    MEMBER_PROBABILITIES_CSV,
    THRESHOLD,
    EngineChoice,
    Ensemble,
    SplitImages,
    class_rows,
    decision,
    member_columns,
    resolve_ensemble,
    score_split,
    views_of,
    write_csv,
    write_unreadable,
)
from deepcovidxr.reports.page import Failure, ImageRow
from deepcovidxr.stages.common import StageResult, refuse_missing_ray, report_page

log = logging.getLogger(__name__)

UNCERTAINTY_NOTE = (
    "uncertainty: weighted standard deviation of the member scores around the ensemble score "
    "(weights of the combination rule)"
)
TTA_NOTE = "; with -t, plus the members' weighted variance over the TTA passes (as predict.py)"


def run(config: EvaluateConfig) -> StageResult:
    """Score Test with every member, then write the binary or multi-class outputs; a file no view
    can read is left out, listed in ``Results/unreadable.csv`` and makes the exit code 1."""
    refuse_missing_ray(config)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    out = run_paths.EvaluationPaths(Path(config.output))
    variance: list[np.ndarray] = []
    engine = EngineChoice.of(config, Split.VALIDATION)
    if config.backend == "ray":  # the same images and scores from a Ray Data dataflow (docs/distributed.md)
        from deepcovidxr.inference.ray_scoring import RayScoring, score_tree

        scoring = RayScoring.of(config)
        images, scores = score_tree(
            config.image, Split.TEST, chosen, config.batch_size, config.tta, config.seed, engine, scoring, variance
        )
    else:
        images, scores = score_split(
            config.image,
            Split.TEST,
            chosen,
            out.scratch,
            config.batch_size,
            config.tta,
            config.seed,
            engine=engine,
            tta_variance=variance,
        )
    # predict.py's definition: the TTA passes' variance joins the members' spread (reliability.image_uncertainty)
    spread = reliability.image_uncertainty(chosen, scores, variance[0] if config.tta and variance else None)
    write = chosen.task.pick(binary=_binary, multiclass=_multiclass)  # the original's files, or p_<class> ones
    path = write(config, chosen, out, images, scores, spread)
    errors = write_unreadable(out.unreadable, [(Split.TEST.value, images)])
    return StageResult(path, {"ok": len(images.names), ERROR: errors})


def _binary(
    config: EvaluateConfig, chosen: Ensemble, out: run_paths.EvaluationPaths, images: SplitImages, scores, spread
) -> Path:
    from deepcovidxr.reports import plots
    from deepcovidxr.scoring import metrics

    combined = chosen.combine(scores)
    probs = reliability.probabilities(chosen, combined)
    rows = []
    for index, (name, label, score, member_row) in enumerate(
        zip(images.names, images.labels, combined, scores, strict=True)
    ):
        rows.append(
            [
                name,
                *decision(float(score)),
                int(label),
                *(f"{s:.6f}" for s in member_row),
                "" if probs is None else f"{probs[index]:.6f}",
                f"{spread[index]:.6f}",
            ]
        )
    # The original's columns first (members included), then ours: scripts that read columns by
    # position keep working.
    path = write_csv(
        out.predictions,
        [
            "Filenames",
            "Scores",
            "Binary prediction",
            "Predictions",
            "Actual",
            *chosen.names,
            "Probability",
            "uncertainty",
        ],
        rows,
    )
    fit = reliability.stored_fit(chosen)
    # The Youden point chosen on Validation when the weights carry one; else chosen here, on Test,
    # and labelled so (metrics.json's at_youden.chosen_on, the report page).
    youden = fit.operating_points.get("youden") if fit else None
    summary = metrics.evaluate(images.labels, combined, n_boot=config.bootstrap, seed=config.seed, youden=youden)
    summary["member_auc"] = {
        name: metrics.auc_or_nan(images.labels, scores[:, i]) for i, name in enumerate(chosen.names)
    }
    figures = plots.evaluation_plots(out.folder, images.labels, combined, THRESHOLD, "Ensemble on Test")
    _publish(config, chosen, out, images, combined, spread, summary, figures, {}, TTA_NOTE if config.tta else "")
    log.info(
        "Test: AUC %.4f (95%% CI %s), sensitivity %.3f, specificity %.3f at 0.5; %s",
        summary["auc"],
        _interval(summary["auc_ci95"]),
        summary["at_0.5"]["sensitivity"],
        summary["at_0.5"]["specificity"],
        path,
    )
    return path


def _publish(config, chosen, out, images, combined, spread, summary, figures, extra: dict, note: str) -> None:
    """What both tasks write after their predictions: metrics.json (the summary, held-out
    calibration, referral), the calibration and referral figures, the figures as TensorBoard
    images, and report.html."""
    from deepcovidxr.reports.tensorboard_images import write_images

    held_out = reliability.held_out_calibration(chosen, images.labels, combined, config.bootstrap, config.seed)
    referral = reliability.referral(images.labels, combined, spread)
    write_json(
        out.metrics,
        {
            "disclaimer": DISCLAIMER,
            "split": "Test",
            "tta": config.tta,
            "ensemble_weights": dict(zip(chosen.names, chosen.weights.tolist(), strict=True)),
            "ensemble_rule": chosen.rule,
            **summary,
            "unreadable": dict(images.unreadable),
            **extra,
            "uncertainty": UNCERTAINTY_NOTE + note,
            "referral": referral,
            "calibrated": chosen.calibrated,
            "calibration": held_out if held_out is not None else chosen.uncalibrated_reason,
        },
    )
    figures = figures + reliability.evaluation_figures(out, chosen, images.labels, combined, referral)
    # The same figures in TensorBoard, beside the members' training curves (tensorboard --logdir).
    write_images(out.folder / layout.TENSORBOARD, {f.stem: f for f in figures})
    rows = reliability.metric_rows(summary, held_out, referral)
    _report(config, chosen, out, images, combined, spread, rows, figures)


def _interval(bounds: list) -> str:
    """A CI for the log: ``low-high``, or why there is none (``--bootstrap 0``)."""
    low, high = bounds
    return "not computed (--bootstrap 0)" if low is None else f"{low:.4f}-{high:.4f}"


def _report(config, chosen, out, images, combined, spread, metric_rows, figures) -> None:
    """report.html in Results/: what was run, the metrics with intervals, the figures, and the Test
    images with thumbnails (highest scores and most uncertain first)."""
    folder = DataTree(config.image).split_dir(*views_of(chosen.members)[0], Split.TEST)
    rows = []
    for index, name in enumerate(images.names):
        call, score = chosen.task.call(combined[index])
        prediction = chosen.task.call_names[call]
        actual = images.classes[int(images.labels[index])]
        rows.append(
            ImageRow(
                name,
                folder / name,
                score=score,
                uncertainty=float(spread[index]),
                label=actual,
                prediction=prediction,
            )
        )
    report_page(
        out.folder,
        "deepcovidxr evaluation on Test",
        config,
        chosen,
        metrics=metric_rows,
        figures=reliability.figures_of(figures),
        failures=[Failure(name, reason) for name, reason in images.unreadable],
        images=rows,
    )


def _multiclass(
    config: EvaluateConfig, chosen: Ensemble, out: run_paths.EvaluationPaths, images: SplitImages, scores, spread
) -> Path:
    from deepcovidxr.reports import plots
    from deepcovidxr.scoring import metrics

    results = out.folder
    combined = chosen.combine(scores)
    probs = reliability.probabilities(chosen, combined)
    header, rows = class_rows(images.names, images.labels, combined, chosen.classes)
    cells = [["" if probs is None else f"{probs[i]:.6f}", f"{spread[i]:.6f}"] for i in range(len(rows))]
    path = write_csv(
        out.predictions, [*header, "Probability", "uncertainty"], [[*r, *c] for r, c in zip(rows, cells, strict=True)]
    )
    write_csv(
        results / MEMBER_PROBABILITIES_CSV,
        ["Filenames", *member_columns(chosen.names, chosen.classes)],
        [[n, *(f"{v:.6f}" for v in row.ravel())] for n, row in zip(images.names, scores, strict=True)],
    )
    summary = metrics.multiclass_metrics(
        images.labels, combined, chosen.classes, n_boot=config.bootstrap, seed=config.seed
    )
    member_auc = {
        name: float(metrics.ovr_auc(images.labels, scores[:, i, :]).mean()) for i, name in enumerate(chosen.names)
    }
    figures = plots.multiclass_evaluation_plots(results, images.labels, combined, chosen.classes, "Ensemble on Test")
    note = "; multi-class: of the predicted class's probability"
    _publish(config, chosen, out, images, combined, spread, summary, figures, {"member_macro_auc": member_auc}, note)
    log.info(
        "Test (%d classes): macro AUC %.4f (95%% CI %s), accuracy %.3f; %s",
        len(chosen.classes),
        summary["macro"]["auc"],
        _interval(summary["macro_auc_ci95"]),
        summary["accuracy"],
        path,
    )
    return path
