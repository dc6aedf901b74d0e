"""The Grad-CAM stage (visSample.py): per image, ensemble-weighted Grad-CAM in original-image
coordinates, written under the names of ``layout.gradcam_names`` (figure: input, heatmap,
overlay; the raw heatmap as float32 .npy in [0, 1] and an 8-bit PNG), one report row per input in
``gradcam_report.csv``.

``--target``: ``predicted`` (default) or a class of the members (binary: ``positive`` /
``negative``, today's behaviour; multi-class: a class name, the Grad-CAM of its softmax unit).
``--method lime``: LIME of the whole ensemble instead (:func:`run_lime`; the explainer is
:mod:`deepcovidxr.explain.lime_ensemble`). The maps themselves are made by the explain layer
(:mod:`deepcovidxr.explain.ensemble_cam`); this module plans, crops, and writes files and rows.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.config.inference_stages import GradcamConfig
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import layout, run_paths
from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.contract.file_report import BatchReport
from deepcovidxr.explain.display import DISPLAY_SIDE, display_image, fit_scale, scaled_box
from deepcovidxr.explain.ensemble_cam import CamSums, cam_keys, ensemble_cams, explained
from deepcovidxr.explain.gradcam import BINARY_KEYS, resolve_target
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.reader import write_gray
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference.ensemble import resolve_ensemble, views_of
from deepcovidxr.inference.streaming import ViewStore, scratch_folder
from deepcovidxr.reports import plots
from deepcovidxr.scoring.task import task_for
from deepcovidxr.stages.common import StageResult, crop_for_explanation, explanation_options, plan_outputs

log = logging.getLogger(__name__)


REPORT_COLUMNS = ["file", "status", "score", "target", "input_check", "error"]


def report_columns(classes: tuple[str, ...]) -> list[str]:
    """The binary report's columns as before; a multi-class one adds the predicted class (its
    probability is ``score``) and every class's ensemble probability."""
    return task_for(classes).pick(
        binary=REPORT_COLUMNS,
        multiclass=[
            "file",
            "status",
            "predicted",
            "score",
            "target",
            *map(class_names.probability_column, classes),
            "input_check",
            "error",
        ],
    )


def run(config: GradcamConfig) -> StageResult:
    """Crop in U-Net batches (the crop stage's pipelined loop), then Grad-CAM member by member
    over all images in batches, summing each image's fused map on disk; figures are written one
    image at a time at the end, so memory does not grow with the folder."""
    if config.method == "lime":
        return run_lime(config)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    classes = tuple(chosen.classes)
    wanted = resolve_target(config.target, classes)
    report, todo = _plan(
        config, chosen, layout.GRADCAM_REPORT, report_columns(classes), layout.gradcam_names, "Grad-CAM"
    )
    views = views_of(chosen.members)
    store = ViewStore(run_paths.scratch_dir(config.output), len(todo), views)
    sums = CamSums(store.folder / "maps", len(todo), cam_keys(classes))
    index_of = {name: i for i, (_, name) in enumerate(todo)}
    checks: dict[int, str] = {}
    try:

        def keep(item: tuple, gray: np.ndarray, crop, check: str) -> None:
            index = index_of[item[1]]
            checks[index] = check  # reported, not refused: an explanation of a flagged image is still wanted
            store.put(index, make_views(gray, crop.square, views))
            sums.place(index, gray.shape, crop.square)
            np.save(_display_path(store, index), display_image(gray))

        ready = sorted(index_of[name] for name in crop_for_explanation(todo, config, report, keep))
        scores = ensemble_cams(chosen, store, ready, sums, config.batch_size)
        combined = chosen.combine(scores[ready]) if ready else np.zeros(0)
        for i, row in zip(ready, combined, strict=True):
            _write_outputs(config, store, sums, report, i, todo[i][1], row, classes, wanted, checks.get(i, ""))
    finally:
        store.close()
    return _finish(report, "Grad-CAM", config.output)


def _display_path(store: ViewStore, index: int) -> Path:
    return store.folder / f"display_{index}.npy"


def _write_outputs(
    config: GradcamConfig,
    store: ViewStore,
    sums: CamSums,
    report: BatchReport,
    i: int,
    name: str,
    combined,
    classes: tuple[str, ...],
    wanted: str,
    check: str = "",
) -> None:
    """One image's figure, raw map (.npy) and 8-bit map, and its report row."""
    predicted, target, score = explained(combined, classes, wanted)
    task = task_for(classes)
    display = np.load(_display_path(store, i))
    heatmap = sums.fused(i, target, display.shape)
    figure, raw, small = (config.output / n for n in layout.gradcam_names(Path(name)))
    title = task.pick(binary=name, multiclass=f"{name} ({predicted})")  # the original's figure: the name alone
    plots.plot_gradcam(figure, display, heatmap, title, score, target)
    with atomic_path(raw) as tmp:
        np.save(tmp, heatmap)
    write_gray(small, np.round(heatmap * 255).astype(np.uint8))
    row = {"file": name, "status": "ok", "score": f"{score:.6f}", "target": target, "input_check": check}

    # The multi-class report's extra columns (report_columns): the call and every class's probability.
    def probabilities() -> dict[str, str]:
        cells = zip(classes, combined, strict=True)
        return {"predicted": predicted, **{class_names.probability_column(c): f"{p:.6f}" for c, p in cells}}

    row |= task.pick(binary=dict, multiclass=probabilities)()
    report.add(row)


def run_lime(config: GradcamConfig) -> StageResult:
    """``--method lime``: crop in U-Net batches, then one image at a time: LIME over the whole
    ensemble (:mod:`deepcovidxr.explain.lime_ensemble`), the figure and weight map written, one
    report row (``lime_report.csv``)."""
    from deepcovidxr.explain import lime_ensemble as lime
    from deepcovidxr.networks.members import load_member

    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    wanted = resolve_target(config.target, chosen.classes)
    target = BINARY_KEYS.get(wanted, wanted)  # binary keys name the classes Positive / Negative
    columns = lime.report_columns(chosen.classes)
    report, todo = _plan(
        config, chosen, layout.LIME_REPORT, columns, layout.lime_names, f"LIME ({config.num_samples} samples)"
    )
    scratch = scratch_folder(run_paths.scratch_dir(config.output), "lime")
    index_of = {name: i for i, (_, name) in enumerate(todo)}
    boxes: dict[str, Box] = {}  # in display-size coordinates; the display image is in scratch
    checks: dict[str, str] = {}
    try:

        def keep(item: tuple, gray: np.ndarray, crop, check: str) -> None:
            checks[item[1]] = check  # reported beside the explanation, not refused
            square = crop.square
            scale = fit_scale(gray.shape, DISPLAY_SIDE)
            _, box = scaled_box(gray.shape, (square.x0, square.y0, square.x1, square.y1), scale)
            np.save(scratch / f"{index_of[item[1]]}.npy", display_image(gray))
            boxes[item[1]] = Box(*box)

        ready = crop_for_explanation(todo, config, report, keep)
        models = [load_member(file, member) for member, file in chosen.members] if ready else []
        for name in tqdm(ready, desc="LIME", unit="img"):
            started = time.perf_counter()
            figure, raw = (config.output / n for n in layout.lime_names(Path(name)))
            gray = np.load(scratch / f"{index_of[name]}.npy")
            row = lime.explain_to_files(
                name,
                gray,
                boxes[name],
                chosen,
                models,
                target,
                config.num_samples,
                config.seed,
                config.batch_size,
                figure,
                raw,
            )
            explanation = figure.relative_to(config.output).as_posix()
            report.add({"file": name, **row, "explanation": explanation, "input_check": checks.get(name, "")})
            log.info("LIME %s: %.1f s", name, time.perf_counter() - started)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _finish(report, "LIME", config.output)


def _plan(
    config: GradcamConfig, chosen, report_name: str, columns: list[str], names, method: str
) -> tuple[BatchReport, list]:
    """The explanation's report (kept rows are finished work, a rerun resumes) and the inputs
    ``(path, name)`` left to do."""
    report = BatchReport(
        config.output / report_name, columns, overwrite=config.overwrite, options=explanation_options(config, chosen)
    )
    found, todo = plan_outputs(config.path, config.output, report, names)
    log.info("%s: %d files, %d to do, %d members", method, found, len(todo), len(chosen.members))
    return report, todo


def _finish(report: BatchReport, method: str, output: Path) -> StageResult:
    path = report.close()
    counts = report.status_counts()
    log.info("%s: %s; %s", method, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), output)
    return StageResult(path, counts)
