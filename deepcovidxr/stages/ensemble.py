"""ensemble.py: member weights fitted on Validation (or a fixed rule), every member and the
ensemble reported on Test; the weights file records the rule.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER, ensemble, layout
from deepcovidxr.atomic import write_json
from deepcovidxr.configs import EnsembleConfig
from deepcovidxr.errors import UsageError
from deepcovidxr.inference import THRESHOLD, Ensemble, available_members, score_split, write_csv
from deepcovidxr.layout import Split

log = logging.getLogger(__name__)


def run(config: EnsembleConfig) -> Path:
    """Fit the combination on Validation (never on Test) and report every member and the
    ensemble on Test."""
    from deepcovidxr import metrics, plots

    if config.method not in ensemble.METHODS:
        raise UsageError(f"unknown method {config.method!r}; choose one of {ensemble.METHODS}")
    members = available_members(config.weights, config.members)
    names = [m.short_name for m, _ in members]
    out = layout.EnsemblePaths(Path(config.output))
    results, scratch = out.folder, out.scratch
    candidate = Ensemble(members, np.full(len(members), 1.0 / len(members)))
    validation, val_scores = score_split(config.data, Split.VALIDATION, candidate, scratch, config.batch_size)
    if config.method == "weighted":
        search = ensemble.dirichlet_search(val_scores, validation.labels, draws=config.draws, seed=config.seed)
        weights = np.asarray(search.weights, np.float64)
        log.info("Dirichlet search (%d draws, seed %d): validation AUC %.4f", config.draws, config.seed, search.auc)
    else:
        weights = candidate.weights
    pickle_path, json_path = ensemble.save_weights(
        dict(zip(names, weights.tolist(), strict=True)), results, rule=config.method
    )
    test, test_scores = score_split(config.data, Split.TEST, candidate, scratch, config.batch_size)
    combined = ensemble.combine_rule(test_scores, config.method, weights if config.method == "weighted" else None)
    member_rows = [
        [name, f"{metrics.auc_or_nan(test.labels, test_scores[:, i]):.6f}", f"{weights[i]:.6f}"]
        for i, name in enumerate(names)
    ]
    summary = metrics.evaluate(test.labels, combined, seed=config.seed)
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
            "test": summary,
        },
    )
    for name, auc, _ in member_rows:
        print(f"{name}\t{auc}")
    log.info("ensemble weights: %s and %s", pickle_path, json_path)
    return json_path
