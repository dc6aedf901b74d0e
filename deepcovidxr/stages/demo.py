"""The embedded default run: the whole pipeline on bundled synthetic phantoms, no data needed.

phantoms (with true lung masks and labels) -> dataset tree (U-Net crop + Lanczos resize, patient
split) -> crop check against the true masks -> two members trained -> ensemble weights fitted on
Validation -> evaluation on Test -> prediction on the raw files -> Grad-CAM -> ``index.html``
listing what a reader opens first.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from deepcovidxr.config.data_stages import DatasetConfig, DemoConfig
from deepcovidxr.config.inference_stages import EnsembleConfig, EvaluateConfig, GradcamConfig, PredictConfig
from deepcovidxr.config.training_stages import TrainAllConfig
from deepcovidxr.contract.atomic import write_text
from deepcovidxr.contract.classes import discover
from deepcovidxr.contract.layout import CropMode, DataTree, Member
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.reports.demo_page import DemoPaths, write_demo_index
from deepcovidxr.reports.montage import write_view_strip
from deepcovidxr.scoring.task import task_for
from deepcovidxr.stages import build_dataset, ensemble, evaluate, predict, train_all, vis_sample
from deepcovidxr.stages.common import StageResult
from deepcovidxr.synthetic.phantoms import write_class_set, write_phantom_set

log = logging.getLogger(__name__)


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


def run(config: DemoConfig) -> StageResult:
    """Phantoms -> dataset tree -> train members -> ensemble -> evaluate -> predict -> Grad-CAM."""
    paths = DemoPaths(config.output)
    write = write_class_set if config.classes == 3 else write_phantom_set
    labels = write(paths.phantoms, config.count, seed=config.seed, patients=max(3, config.count * 2 // 3))
    log.info("demo 1/7: %d synthetic phantoms (%d classes) in %s", config.count, config.classes, paths.phantoms)
    built = _dataset(config, paths, labels)
    check = crop_check(built.report, paths.phantoms, paths.crop_check)
    log.info(
        "demo 2/7: dataset tree built; crops keep %.1f %% of the true lung on average (worst %.1f %%)",
        100 * check["mean"],
        100 * check["min"],
    )
    weights_json = _train_and_fit(config, paths)
    evaluated, predicted = _score(config, paths, weights_json)
    note = (
        f"{config.count} phantoms, seed {config.seed}; members {', '.join(config.members)} trained for "
        f"{config.epochs} epochs from random weights (no ImageNet weights offline), so their scores mean little: "
        "this run shows the pipeline and its outputs, not a classifier. Crop statuses: "
        + ", ".join(f"{k} {v}" for k, v in sorted(built.counts.items()))
    )
    files = {"dataset_report": built.report, "labels": labels, "evaluated": evaluated, "predicted": predicted.report}
    first = Member.parse(config.members[0])
    task = task_for(discover(DataTree(paths.dataset).view_dir(first.size, first.crop)))
    index = write_demo_index(paths, config.members, task, check, files, note)
    return StageResult(index, dict(Counter(built.counts) + Counter(predicted.counts)))


def _dataset(config: DemoConfig, paths: DemoPaths, labels: Path) -> StageResult:
    """The dataset tree of the phantoms at the members' sizes, and a strip of the views per image."""
    sizes = tuple(sorted({Member.parse(m).size for m in config.members}))
    built = build_dataset.run(
        DatasetConfig(
            images=paths.phantoms,
            labels=labels,
            output=paths.dataset,
            unet=config.unet,
            sizes=sizes,
            seed=config.seed,
            workers=config.workers,
        )
    )
    tree = DataTree(paths.dataset)
    first_view = tree.view_dir(sizes[0], CropMode.UNCROP)
    examples = sorted(first_view.rglob("*.png"))[:6]
    write_view_strip(
        paths.views,
        [[tree.view_dir(s, c) / e.relative_to(first_view) for s in sizes for c in CropMode] for e in examples],
        [f"{s} {c.value}" for s in sizes for c in CropMode],
    )
    return built


def _train_and_fit(config: DemoConfig, paths: DemoPaths) -> Path:
    """The members trained from random weights, then their weights fitted on Validation."""
    train_all.run(
        TrainAllConfig(
            data=paths.dataset,
            output=paths.members,
            members=config.members,
            weights=None,
            epochs=config.epochs,
            batch_size=8,
            seed=config.seed,
            optimizer="adam",  # at the default learning rate 1e-3: SGD barely moves from random weights
        )
    )
    log.info("demo 3/7: trained %s", ", ".join(config.members))
    fitted = ensemble.run(
        EnsembleConfig(
            weights=paths.members,
            data=paths.dataset,
            output=paths.ensemble,
            draws=2000,
            members=config.members,
            seed=config.seed,
            batch_size=8,
        )
    )
    log.info("demo 4/7: ensemble weights fitted on Validation")
    return fitted.report


def _score(config: DemoConfig, paths: DemoPaths, weights_json: Path) -> tuple[Path, StageResult]:
    """evaluate.py on Test, predict.py on the raw phantom files and visSample.py on four of them;
    returns evaluate's predictions CSV and predict's result."""
    ensemble_of = {"weights": paths.members, "ensemble_weights": weights_json}
    test = {"image": paths.dataset, "output": paths.evaluation, "seed": config.seed, "bootstrap": 500}
    evaluated = evaluate.run(EvaluateConfig(**ensemble_of, **test, batch_size=8))
    log.info("demo 5/7: evaluated on Test")
    raw = {"input": paths.phantoms / "images", "output": paths.prediction, "workers": config.workers}
    predicted = predict.run(PredictConfig(**ensemble_of, **raw, unet=config.unet, batch_size=8))
    log.info("demo 6/7: predicted %s", predicted.report)
    for path in sorted((paths.phantoms / "images").glob("*.png"))[:4]:
        paths.gradcam_input.mkdir(parents=True, exist_ok=True)
        (paths.gradcam_input / path.name).write_bytes(path.read_bytes())
    explained = vis_sample.run(
        GradcamConfig(**ensemble_of, path=paths.gradcam_input, output=paths.gradcam, unet=config.unet)
    )
    log.info("demo 7/7: Grad-CAM in %s", explained.report)
    return evaluated.report, predicted
