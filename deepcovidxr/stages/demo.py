"""The embedded default run: the whole pipeline on bundled synthetic phantoms, no data needed.

phantoms (with true lung masks and labels) -> dataset tree (U-Net crop + Lanczos resize, patient
split) -> crop check against the true masks -> two members trained -> ensemble weights fitted on
Validation -> evaluation on Test -> prediction on the raw files -> Grad-CAM -> ``index.html``
listing what a reader opens first.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.config.stages import DatasetConfig, DemoConfig
from deepcovidxr.contract import layout
from deepcovidxr.contract.atomic import write_text
from deepcovidxr.contract.layout import CropMode, DataTree, Member
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.reports.montage import write_view_strip
from deepcovidxr.stages import build_dataset
from deepcovidxr.synthetic.phantoms import write_class_set, write_phantom_set

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    report: Path  # index.html
    exit_code: int


def crop_check(manifest: Path, phantoms: Path, destination: Path) -> dict[str, float]:
    """Share of each phantom's true lung pixels inside its square crop, from the manifest boxes."""
    rows = [r for r in csv.DictReader(manifest.open(newline="", encoding="utf-8")) if r["status"] != "error"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "status", "lung_inside_crop"])
    coverages = []
    for row in rows:
        truth = read_gray(phantoms / row["file"].replace("images/", "masks/", 1)) > 127
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        coverage = float(truth[y0:y1, x0:x1].sum() / max(1, truth.sum()))
        coverages.append(coverage)
        writer.writerow([row["file"], row["status"], f"{coverage:.4f}"])
    write_text(destination, out.getvalue())
    values = np.array(coverages) if coverages else np.zeros(1)
    return {
        "images": len(coverages),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "at_least_99": float((values >= 0.99).mean()),
    }


def write_index(
    destination: Path, title: str, sections: list[tuple[str, list[tuple[str, str]]]], notes: list[str]
) -> Path:
    """A plain HTML page: per section, links (images are shown inline) with a caption."""
    base = destination.resolve().parent
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%;border:1px solid #ccc}"
        ".warn{background:#fff3cd;padding:.6em;border:1px solid #e0c36c}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='warn'>{html.escape(DISCLAIMER)}</p>",
    ]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for heading, entries in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><ul>")
        for path, caption in entries:
            # Relative to the page's own folder (a browser resolves links from there, not from the folder
            # the demo ran in), percent-encoded so names with spaces or '#' still resolve.
            relative = Path(os.path.relpath(Path(path).resolve(), base)).as_posix()
            link, text = html.escape(quote(relative)), html.escape(relative)
            parts.append(f"<li><a href='{link}'>{text}</a>: {html.escape(caption)}</li>")
            if relative.endswith(".png"):
                parts.append(f"<br><a href='{link}'><img src='{link}' alt='{text}'></a>")
        parts.append("</ul>")
    write_text(destination, "\n".join(parts) + "\n")
    return destination


def run(config: DemoConfig) -> DemoResult:
    """Phantoms -> dataset tree -> train members -> ensemble -> evaluate -> predict -> Grad-CAM."""
    from deepcovidxr.config.stages import EnsembleConfig, EvaluateConfig, GradcamConfig, PredictConfig, TrainAllConfig
    from deepcovidxr.stages import ensemble, evaluate, predict, train_all, vis_sample

    output = config.output
    phantoms = output / "phantoms"
    write = write_class_set if config.classes == 3 else write_phantom_set
    labels = write(phantoms, config.count, seed=config.seed, patients=max(3, config.count * 2 // 3))
    log.info("demo 1/7: %d synthetic phantoms (%d classes) in %s", config.count, config.classes, phantoms)
    dataset = output / "dataset"
    sizes = tuple(sorted({Member.parse(m).size for m in config.members}))
    built = build_dataset.run(
        DatasetConfig(
            images=phantoms,
            labels=labels,
            output=dataset,
            unet=config.unet,
            sizes=sizes,
            seed=config.seed,
            workers=config.workers,
        )
    )
    check = crop_check(built.report, phantoms, output / "crop_check.csv")
    log.info(
        "demo 2/7: dataset tree built; crops keep %.1f %% of the true lung on average (worst %.1f %%)",
        100 * check["mean"],
        100 * check["min"],
    )
    tree = DataTree(dataset)
    first_view = tree.view_dir(sizes[0], CropMode.UNCROP)
    examples = sorted(first_view.rglob("*.png"))[:6]
    strip = write_view_strip(
        output / "views.png",
        [[tree.view_dir(s, c) / e.relative_to(first_view) for s in sizes for c in CropMode] for e in examples],
        [f"{s} {c.value}" for s in sizes for c in CropMode],
    )
    members = output / "members"
    train_all.run(
        TrainAllConfig(
            data=dataset,
            output=members,
            members=config.members,
            weights=None,
            epochs=config.epochs,
            batch_size=8,
            seed=config.seed,
            optimizer="adam",  # at the default learning rate 1e-3: SGD barely moves from random weights
        )
    )
    log.info("demo 3/7: trained %s", ", ".join(config.members))
    weights_json = ensemble.run(
        EnsembleConfig(
            weights=members,
            data=dataset,
            output=output / "ensemble",
            draws=2000,
            members=config.members,
            seed=config.seed,
            batch_size=8,
        )
    ).report
    log.info("demo 4/7: ensemble weights fitted on Validation")
    evaluated = evaluate.run(
        EvaluateConfig(
            weights=members,
            image=dataset,
            output=output / "evaluation",
            ensemble_weights=weights_json,
            batch_size=8,
            seed=config.seed,
            bootstrap=500,
        )
    ).report
    log.info("demo 5/7: evaluated on Test")
    predicted = predict.run(
        PredictConfig(
            weights=members,
            input=phantoms / "images",
            output=output / "prediction",
            ensemble_weights=weights_json,
            unet=config.unet,
            batch_size=8,
            workers=config.workers,
        )
    )
    log.info("demo 6/7: predicted %s", predicted.report)
    explain_input = output / "gradcam_input"
    for path in sorted((phantoms / "images").glob("*.png"))[:4]:
        explain_input.mkdir(parents=True, exist_ok=True)
        (explain_input / path.name).write_bytes(path.read_bytes())
    explained = vis_sample.run(
        GradcamConfig(
            weights=members,
            path=explain_input,
            output=output / "gradcam",
            ensemble_weights=weights_json,
            unet=config.unet,
        )
    )
    log.info("demo 7/7: Grad-CAM in %s", explained.report)
    results = layout.EvaluationPaths(output / "evaluation")
    ensemble_dir = layout.EnsemblePaths(output / "ensemble")
    index = write_index(
        output / "index.html",
        "deepcovidxr demo run (synthetic phantoms)",
        [
            (
                "Lung crops",
                [
                    (str(dataset / layout.QC_MONTAGE), "U-Net square crop boxes; non-ok crops come first"),
                    (str(strip), "the views the ensemble members see, per image"),
                    (
                        str(output / "crop_check.csv"),
                        f"true lung pixels inside each crop: mean {check['mean']:.3f}, "
                        f"worst {check['min']:.3f}, share >= 0.99: {check['at_least_99']:.2f}",
                    ),
                ],
            ),
            (
                "Training",
                [
                    (
                        str(layout.RunPaths(members, Member.parse(m)).curves),
                        f"training curves of {m}",
                    )
                    for m in config.members
                ],
            ),
            (
                "Ensemble (weights fitted on Validation, reported on Test)",
                [
                    (str(ensemble_dir.plots.roc), "ROC of the ensemble on Test"),
                    (str(ensemble_dir.member_auc), "Test AUC of every member and of the ensemble"),
                    (str(ensemble_dir.weights_json), "the fitted member weights"),
                ],
            ),
            (
                "Evaluation on Test",
                [
                    (
                        str(results.metrics),
                        "AUC with 95 % CI, sensitivity, specificity, PPV, NPV, "
                        "F1 at 0.5 and at the Youden threshold, Brier score"
                        if config.classes == 2
                        else "per-class sensitivity, specificity, precision, F1 and one-vs-rest AUC, "
                        "macro and weighted averages, accuracy, macro AUC with 95 % CI",
                    ),
                    (str(results.report), "the evaluation report: metrics with intervals, figures, images"),
                    *(
                        [
                            (str(results.plots.confusion), "confusion matrix at 0.5"),
                            (str(results.plots.calibration), "calibration of the raw ensemble score"),
                            (str(results.calibration_fit), "calibration before/after the Validation fit"),
                        ]
                        if config.classes == 2
                        else [
                            (str(results.plots.roc), "one-vs-rest ROC curves of every class"),
                            (str(results.plots.confusion), "row-normalised confusion matrix"),
                        ]
                    ),
                    (str(results.referral), "AUC and accuracy as the most uncertain images are referred"),
                    (str(evaluated), "per-image predictions, labels and probabilities"),
                ],
            ),
            ("Prediction on raw files", [(str(predicted.report), "one row per input file, crop status and errors")]),
            (
                "Grad-CAM",
                [
                    (str(p), "input, ensemble Grad-CAM, overlay")
                    for p in sorted(layout.gradcam_dir(output / "gradcam").glob("*_gradCAM.png"))
                ],
            ),
            (
                "Dataset and inputs",
                [
                    (str(built.report), "per image: label, patient, split, crop status and box"),
                    (str(labels), "phantom labels and patient ids"),
                ],
            ),
        ],
        notes=[
            f"{config.count} phantoms, seed {config.seed}; members {', '.join(config.members)} trained for "
            f"{config.epochs} epochs from random weights (no ImageNet weights offline), so their scores mean little: "
            "this run shows the pipeline and its outputs, not a classifier. Crop statuses: "
            + ", ".join(f"{k} {v}" for k, v in sorted(built.counts.items()))
        ],
    )
    return DemoResult(index, max(built.exit_code, predicted.exit_code))
