"""ensemble.py: member weights fitted on Validation (or a fixed rule), every member and the
ensemble reported on Test; the weights file records the rule.

Multi-class members (three or more classes): the weighted rule's search maximises the macro
one-vs-rest AUC on Validation (:func:`deepcovidxr.scoring.combination.dirichlet_search`), the weights JSON
records the classes, ``member_auc.csv`` holds macro AUCs (``member, test_macro_auc, weight``),
``ensemble_predictions.csv`` holds ``Filenames, Predictions, Actual, p_<class>...`` (class names,
rows summing to 1), ``individual_predictions.csv`` every member's ``<member>.p_<class>``, and the
figures are the one-vs-rest ROC curves and the row-normalised confusion matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.config.inference_stages import EnsembleConfig
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import layout, run_paths
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.file_report import ERROR
from deepcovidxr.contract.layout import Split
from deepcovidxr.errors import UsageError
from deepcovidxr.inference.ensemble import (
    THRESHOLD,
    EngineChoice,
    Ensemble,
    available_members,
    class_rows,
    member_columns,
    score_split,
    write_csv,
    write_unreadable,
)
from deepcovidxr.scoring import combination, multiclass_calibration, weights_file
from deepcovidxr.scoring.task import task_for
from deepcovidxr.stages.common import StageResult, write_model_card

log = logging.getLogger(__name__)


def run(config: EnsembleConfig) -> StageResult:
    """Fit the combination on Validation (never on Test) and report every member and the
    ensemble on Test. A file no view can read is left out of its split, listed in
    ``Ensemble_Results/unreadable.csv`` and makes the exit code 1 (the weights are still written)."""

    if config.method not in weights_file.METHODS:
        raise UsageError(f"unknown method {config.method!r}; choose one of {weights_file.METHODS}")
    members = available_members(config.weights, config.members)
    names = [m.short_name for m, _ in members]
    out = run_paths.EnsemblePaths(Path(config.output))
    results, scratch = out.folder, out.scratch
    classes = class_names.common(members)
    task = task_for(classes)
    published = {m for m, _ in members} & set(layout.ensemble_members())
    if not config.members and task.published_weights and len(published) == len(members) < 24:
        log.warning(
            "%d of 24 members have no file in %s; ensembling the %d present",
            24 - len(members),
            config.weights,
            len(members),
        )
    candidate = Ensemble(members, np.full(len(members), 1.0 / len(members)), classes=classes)
    engine = EngineChoice.of(config, Split.TRAIN)
    validation, val_scores = score_split(
        config.data, Split.VALIDATION, candidate, scratch, config.batch_size, engine=engine
    )
    if config.method == "weighted":
        search = combination.dirichlet_search(val_scores, validation.labels, draws=config.draws, seed=config.seed)
        weights = np.asarray(search.weights, np.float64)
        log.info(
            "Dirichlet search (%d draws, seed %d): validation %sAUC %.4f",
            config.draws,
            config.seed,
            task.pick(binary="", multiclass="macro one-vs-rest "),
            search.auc,
        )
    else:
        weights = candidate.weights
    # Calibration (and, binary, operating points) from Validation only, like the weights: Test is
    # scored after both are written, and nothing fitted reads it.
    val_combined = combination.combine_rule(val_scores, config.method, weights if config.method == "weighted" else None)
    fitted = task.fit_calibration(validation.labels, val_combined, config.calibrate)
    if fitted is not None:
        log.info("%s", fitted.describe())
    pickle_path, json_path = weights_file.save_weights(
        dict(zip(names, weights.tolist(), strict=True)),
        results,
        rule=config.method,
        classes=classes,
        calibration=fitted.to_dict() if fitted else None,
    )
    test, test_scores = score_split(config.data, Split.TEST, candidate, scratch, config.batch_size, engine=engine)
    combined = combination.combine_rule(test_scores, config.method, weights if config.method == "weighted" else None)
    report = task.pick(binary=_binary_report, multiclass=_multiclass)
    report(config, out, names, classes, weights, test, test_scores, combined, fitted)
    write_model_card(out.model_card, out.model_card_json, members, out.weights_json, out.summary)
    log.info("ensemble weights: %s and %s", pickle_path, json_path)
    errors = write_unreadable(out.unreadable, [(Split.VALIDATION.value, validation), (Split.TEST.value, test)])
    return StageResult(json_path, {"ok": len(validation.names) + len(test.names), ERROR: errors})


def _binary_report(config, out, names, classes, weights, test, test_scores, combined, fitted) -> None:
    """member_auc.csv, the Test predictions, the figures and the summary of a binary ensemble."""
    from deepcovidxr.reports import plots
    from deepcovidxr.scoring import metrics

    results = out.folder
    member_rows = [
        [name, f"{metrics.auc_or_nan(test.labels, test_scores[:, i]):.6f}", f"{weights[i]:.6f}"]
        for i, name in enumerate(names)
    ]
    # at_youden at the Validation threshold stored with the weights, never one chosen on Test.
    summary = metrics.evaluate(test.labels, combined, seed=config.seed, youden=fitted.operating_points["youden"])
    member_rows.append([f"ensemble ({config.method})", f"{summary['auc']:.6f}", "1.000000"])
    write_csv(out.member_auc, ["member", "test_auc", "weight"], member_rows)
    write_csv(
        out.ensemble_predictions,
        ["Filenames", "Scores", "Binary prediction", "Actual"],
        [
            [n, f"{s:.6f}", int(s >= THRESHOLD), int(y)]
            for n, s, y in zip(test.names, combined, test.labels, strict=True)
        ],
    )
    write_csv(
        out.individual_predictions,
        ["Filenames", *names],
        [[n, *(f"{v:.6f}" for v in row)] for n, row in zip(test.names, test_scores, strict=True)],
    )
    plots.evaluation_plots(results, test.labels, combined, THRESHOLD, f"Ensemble ({config.method}) on Test")
    write_json(
        out.summary,
        {
            "disclaimer": DISCLAIMER,
            "method": config.method,
            "fitted_on": "Validation",
            "reported_on": "Test",
            "draws": config.draws,
            "seed": config.seed,
            "weights": dict(zip(names, weights.tolist(), strict=True)),
            "calibration": {
                **fitted.to_dict(),
                "test": fitted.held_out(test.labels, combined, seed=config.seed),
            },
            "test": summary,
        },
    )
    for name, auc, _ in member_rows:
        print(f"{name}\t{auc}")


def _multiclass(config, out, names, classes, weights, test, test_scores, combined, fitted) -> None:
    """The multi-class counterpart of :func:`_binary_report`."""
    from deepcovidxr.reports import plots
    from deepcovidxr.scoring import metrics

    results = out.folder
    summary = metrics.multiclass_metrics(test.labels, combined, classes, seed=config.seed)
    member_rows = [
        [name, f"{float(metrics.ovr_auc(test.labels, test_scores[:, i, :]).mean()):.6f}", f"{weights[i]:.6f}"]
        for i, name in enumerate(names)
    ]
    member_rows.append([f"ensemble ({config.method})", f"{summary['macro']['auc']:.6f}", "1.000000"])
    write_csv(out.member_auc, ["member", "test_macro_auc", "weight"], member_rows)
    header, rows = class_rows(test.names, test.labels, combined, classes)
    write_csv(out.ensemble_predictions, header, rows)
    write_csv(
        out.individual_predictions,
        ["Filenames", *member_columns(names, classes)],
        [[n, *(f"{v:.6f}" for v in row.ravel())] for n, row in zip(test.names, test_scores, strict=True)],
    )
    plots.multiclass_evaluation_plots(results, test.labels, combined, classes, f"Ensemble ({config.method}) on Test")
    write_json(
        out.summary,
        {
            "disclaimer": DISCLAIMER,
            "method": config.method,
            "classes": list(classes),
            "fitted_on": "Validation",
            "fit_objective": "macro one-vs-rest ROC AUC" if config.method == "weighted" else None,
            "reported_on": "Test",
            "draws": config.draws,
            "seed": config.seed,
            "weights": dict(zip(names, weights.tolist(), strict=True)),
            "test": summary,
            "calibration": None
            if fitted is None
            else {
                "method": multiclass_calibration.METHOD,
                "fitted_on": "Validation",
                "validation": fitted.validation,
                "test": fitted.held_out(test.labels, combined),
            },
        },
    )
    for name, auc, _ in member_rows:
        print(f"{name}\t{auc}")
