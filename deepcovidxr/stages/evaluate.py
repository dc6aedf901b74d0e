"""evaluate.py: the ensemble on the Test split of a dataset tree: predictions, metrics with
bootstrap intervals, figures (also as TensorBoard images).
"""

from __future__ import annotations

import logging
from pathlib import Path

from deepcovidxr import DISCLAIMER, layout
from deepcovidxr.atomic import write_json
from deepcovidxr.configs import EvaluateConfig
from deepcovidxr.inference import THRESHOLD, decision, resolve_ensemble, score_split, write_csv
from deepcovidxr.layout import Split

log = logging.getLogger(__name__)


def run(config: EvaluateConfig) -> Path:
    from deepcovidxr import metrics, plots

    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    out = layout.EvaluationPaths(Path(config.output))
    results = out.folder
    images, scores = score_split(
        config.image, Split.TEST, chosen, out.scratch, config.batch_size, config.tta, config.seed
    )
    combined = chosen.combine(scores)
    rows = []
    for name, label, score, member_row in zip(images.names, images.labels, combined, scores, strict=True):
        rows.append(
            [
                name,
                *decision(float(score)),
                int(label),
                *(f"{s:.6f}" for s in member_row),
            ]
        )
    path = write_csv(
        out.predictions,
        ["Filenames", "Scores", "Binary prediction", "Predictions", "Actual", *chosen.names],
        rows,
    )
    summary = metrics.evaluate(images.labels, combined, n_boot=config.bootstrap, seed=config.seed)
    summary["member_auc"] = {
        name: metrics.auc_or_nan(images.labels, scores[:, i]) for i, name in enumerate(chosen.names)
    }
    write_json(
        out.metrics,
        {
            "disclaimer": DISCLAIMER,
            "split": "Test",
            "tta": config.tta,
            "ensemble_weights": dict(zip(chosen.names, chosen.weights.tolist(), strict=True)),
            "ensemble_rule": chosen.rule,
            **summary,
        },
    )
    figures = plots.evaluation_plots(results, images.labels, combined, THRESHOLD, "Ensemble on Test")
    from deepcovidxr.tensorboard_images import write_images

    # The same figures in TensorBoard, beside the members' training curves (tensorboard --logdir).
    write_images(results / layout.TENSORBOARD, {f.stem: f for f in figures})
    log.info(
        "Test: AUC %.4f (95%% CI %.4f-%.4f), sensitivity %.3f, specificity %.3f at 0.5; %s",
        summary["auc"],
        *summary["auc_ci95"],
        summary["at_0.5"]["sensitivity"],
        summary["at_0.5"]["specificity"],
        path,
    )
    return path
