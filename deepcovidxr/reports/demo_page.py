"""The demo's output folder (demo.py) and its ``index.html``: per section, links to what a reader
opens first (pictures shown inline), relative to the page's own folder."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from deepcovidxr import DISCLAIMER
from deepcovidxr.contract import layout, run_paths
from deepcovidxr.contract.atomic import write_text
from deepcovidxr.contract.layout import Member
from deepcovidxr.scoring.task import Task


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo puts each stage's output under ``output``."""

    output: Path

    @property
    def phantoms(self) -> Path:  # the synthetic phantoms (images/, masks/, labels)
        return self.output / "phantoms"

    @property
    def dataset(self) -> Path:  # the dataset tree
        return self.output / "dataset"

    @property
    def views(self) -> Path:  # a strip of the views the members see
        return self.output / "views.png"

    @property
    def crop_check(self) -> Path:  # each crop's share of the true lung
        return self.output / "crop_check.csv"

    @property
    def members(self) -> Path:  # the trained members
        return self.output / "members"

    @property
    def ensemble(self) -> Path:  # ensemble.py's output
        return self.output / "ensemble"

    @property
    def evaluation(self) -> Path:  # evaluate.py's output
        return self.output / "evaluation"

    @property
    def prediction(self) -> Path:  # predict.py's output
        return self.output / "prediction"

    @property
    def gradcam_input(self) -> Path:  # the images Grad-CAM explains
        return self.output / "gradcam_input"

    @property
    def gradcam(self) -> Path:  # visSample.py's output
        return self.output / "gradcam"

    @property
    def index(self) -> Path:  # the page
        return self.output / "index.html"


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


def write_demo_index(
    paths: DemoPaths,
    members: Sequence[str],
    task: Task,
    check: dict[str, float],
    files: dict[str, Path],
    note: str,
) -> Path:
    """The demo's ``index.html``: the crops, training curves, ensemble, evaluation, prediction and
    Grad-CAM outputs. ``check``: :func:`deepcovidxr.stages.demo.crop_check`'s summary; ``files``:
    the outputs only the run knows (``dataset_report``, ``labels``, ``evaluated``, ``predicted``)."""
    results = run_paths.EvaluationPaths(paths.evaluation)
    ensemble_dir = run_paths.EnsemblePaths(paths.ensemble)
    metrics, figures = _evaluation_entries(results, task)
    crops = (
        f"true lung pixels inside each crop: mean {check['mean']:.3f}, worst {check['min']:.3f}, "
        f"share >= 0.99: {check['at_least_99']:.2f}"
    )
    sections: list[tuple[str, list[tuple[Path, str]]]] = [
        (
            "Lung crops",
            [
                (paths.dataset / layout.QC_MONTAGE, "U-Net square crop boxes; non-ok crops come first"),
                (paths.views, "the views the ensemble members see, per image"),
                (paths.crop_check, crops),
            ],
        ),
        (
            "Training",
            [(run_paths.RunPaths(paths.members, Member.parse(m)).curves, f"training curves of {m}") for m in members],
        ),
        (
            "Ensemble (weights fitted on Validation, reported on Test)",
            [
                (ensemble_dir.plots.roc, "ROC of the ensemble on Test"),
                (ensemble_dir.member_auc, "Test AUC of every member and of the ensemble"),
                (ensemble_dir.weights_json, "the fitted member weights"),
            ],
        ),
        (
            "Evaluation on Test",
            [
                (results.metrics, metrics),
                (results.report, "the evaluation report: metrics with intervals, figures, images"),
                *figures,
                (results.referral, "AUC and accuracy as the most uncertain images are referred"),
                (files["evaluated"], "per-image predictions, labels and probabilities"),
            ],
        ),
        ("Prediction on raw files", [(files["predicted"], "one row per input file, crop status and errors")]),
        (
            "Grad-CAM",
            [
                (p, "input, ensemble Grad-CAM, overlay")
                for p in sorted(layout.gradcam_dir(paths.gradcam).glob("*_gradCAM.png"))
            ],
        ),
        (
            "Dataset and inputs",
            [
                (files["dataset_report"], "per image: label, patient, split, crop status and box"),
                (files["labels"], "phantom labels and patient ids"),
            ],
        ),
    ]
    listed = [(heading, [(str(path), caption) for path, caption in entries]) for heading, entries in sections]
    return write_index(paths.index, "deepcovidxr demo run (synthetic phantoms)", listed, notes=[note])


def _evaluation_entries(results: run_paths.EvaluationPaths, task: Task) -> tuple[str, list[tuple[Path, str]]]:
    """What evaluate.py reports for the task: its metrics in a phrase, and its figures."""
    binary = (
        "AUC with 95 % CI, sensitivity, specificity, PPV, NPV, F1 at 0.5 and at the Youden threshold, Brier score",
        [
            (results.plots.confusion, "confusion matrix at 0.5"),
            (results.plots.calibration, "calibration of the raw ensemble score"),
            (results.calibration_fit, "calibration before/after the Validation fit"),
        ],
    )
    multiclass = (
        "per-class sensitivity, specificity, precision, F1 and one-vs-rest AUC, macro and weighted averages, "
        "accuracy, macro AUC with 95 % CI",
        [
            (results.plots.roc, "one-vs-rest ROC curves of every class"),
            (results.plots.confusion, "row-normalised confusion matrix"),
        ],
    )
    return task.pick(binary=binary, multiclass=multiclass)
