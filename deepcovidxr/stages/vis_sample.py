"""The Grad-CAM stage (visSample.py): per image, ensemble-weighted Grad-CAM in original-image
coordinates, written under the names of ``layout.gradcam_names`` (figure: input, heatmap,
overlay; the raw heatmap as float32 .npy in [0, 1] and an 8-bit PNG), one report row per input in
``gradcam_report.csv``.

``--target``: ``predicted`` (default) or a class of the members (binary: ``positive`` /
``negative``, today's behaviour; multi-class: a class name, the Grad-CAM of its softmax unit).
``--method lime`` hands the run to :mod:`deepcovidxr.explain.lime_ensemble` (LIME of the whole ensemble).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.config.stages import GradcamConfig
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import layout
from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.contract.file_report import BatchReport
from deepcovidxr.contract.layout import CropMode
from deepcovidxr.explain.display import display_image, fit_scale, scaled_box
from deepcovidxr.explain.gradcam import BINARY_KEYS, PREDICTED, class_cams, member_cams, resolve_target, to_original
from deepcovidxr.imaging.preprocess import to_model_input
from deepcovidxr.imaging.reader import write_gray
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference.ensemble import THRESHOLD, resolve_ensemble
from deepcovidxr.reports import plots
from deepcovidxr.stages.common import StageResult, crop_for_explanation, explanation_options, plan_outputs

log = logging.getLogger(__name__)


ACCUMULATOR_SIDE = 256  # fused maps are summed on disk at this longest side (they are smooth)
REPORT_COLUMNS = ["file", "status", "score", "target", "input_check", "error"]


def report_columns(classes: tuple[str, ...]) -> list[str]:
    """The binary report's columns as before; a multi-class one adds the predicted class (its
    probability is ``score``) and every class's ensemble probability."""
    if class_names.is_binary(classes):
        return REPORT_COLUMNS
    return [
        "file",
        "status",
        "predicted",
        "score",
        "target",
        *map(class_names.probability_column, classes),
        "input_check",
        "error",
    ]


class _Maps:
    """Per image: the running ensemble-weighted sums of every class's maps at ACCUMULATOR_SIDE
    (on-disk memmaps; binary: ``positive`` and ``negative``, multi-class: one per class name), the
    crop box and the display image. Members run model-major, so each member's maps are added as
    it finishes instead of being kept per member."""

    def __init__(self, folder: Path, count: int, keys: tuple[str, ...] = tuple(BINARY_KEYS)) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        shape = (max(1, count), ACCUMULATOR_SIDE, ACCUMULATOR_SIDE)
        binary = set(keys) == set(BINARY_KEYS)
        self.sums = {
            key: np.lib.format.open_memmap(
                folder / (f"{key}.npy" if binary else f"class_{i}.npy"), "w+", np.float32, shape
            )
            for i, key in enumerate(keys)
        }
        self.shapes = np.zeros((max(1, count), 2), np.int64)
        self.boxes = np.zeros((max(1, count), 4), np.int64)

    def display_path(self, index: int) -> Path:
        return self.folder / f"display_{index}.npy"

    def _frame(self, index: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        shape = tuple(int(v) for v in self.shapes[index])
        return scaled_box(shape, tuple(int(v) for v in self.boxes[index]), fit_scale(shape, ACCUMULATOR_SIDE))

    def add(
        self,
        index: int,
        positive: np.ndarray,
        negative: np.ndarray,
        weights: tuple[float, float],
        cropped: bool,
        replace: bool = False,
    ) -> None:
        """Add one member's maps with (positive, negative) weights, or replace the sums (max rule)."""
        self.add_maps(
            index,
            {"positive": positive, "negative": negative},
            dict(zip(BINARY_KEYS, weights, strict=True)),
            cropped,
            replace,
        )

    def add_maps(
        self, index: int, cams: dict[str, np.ndarray], weights: dict[str, float], cropped: bool, replace: bool = False
    ) -> None:
        """Add one member's map of each class in ``cams`` with its weight, or replace those sums."""
        (height, width), box = self._frame(index)
        where = box if cropped else None
        for key, cam in cams.items():
            total, weight = self.sums[key], weights[key]
            placed = weight * to_original(cam, (height, width), where)
            if replace:
                total[index, :height, :width] = placed
            else:
                total[index, :height, :width] += placed

    def fused(self, index: int, target: str, display_shape: tuple[int, int]) -> np.ndarray:
        """The fused map of ``target`` at the display size, rescaled to [0, 1]."""
        import cv2

        (height, width), _ = self._frame(index)
        summed = np.asarray(self.sums[target][index, :height, :width])
        heatmap = cv2.resize(summed, display_shape[::-1], interpolation=cv2.INTER_LINEAR)
        peak = float(heatmap.max())
        return (heatmap / peak if peak > 0 else heatmap).astype(np.float32)


def run(config: GradcamConfig) -> StageResult:
    """Crop in U-Net batches (the crop stage's pipelined loop), then Grad-CAM member by member
    over all images in batches, summing each image's fused map on disk; figures are written one
    image at a time at the end, so memory does not grow with the folder."""
    from deepcovidxr.contract.backbones import get as backbone
    from deepcovidxr.inference.streaming import ViewStore
    from deepcovidxr.lungs.cropper import locate
    from deepcovidxr.networks.members import load_member
    from deepcovidxr.reports.montage import QcItem

    if config.method == "lime":
        from deepcovidxr.explain.lime_ensemble import run as run_lime

        return run_lime(config)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    classes = tuple(chosen.classes)
    binary = class_names.is_binary(classes)
    wanted = resolve_target(config.target, classes)
    report = BatchReport(
        config.output / layout.GRADCAM_REPORT,
        report_columns(classes),
        overwrite=config.overwrite,
        options=explanation_options(config, chosen),
    )
    found, todo = plan_outputs(config.path, config.output, report, layout.gradcam_names)
    log.info("Grad-CAM: %d files, %d to do, %d members", found, len(todo), len(chosen.members))
    views = tuple(dict.fromkeys((m.size, m.crop) for m, _ in chosen.members))
    store = ViewStore(layout.scratch_dir(config.output), len(todo), views)
    maps = _Maps(store.folder / "maps", len(todo), tuple(BINARY_KEYS) if binary else classes)
    index_of = {name: i for i, (_, name) in enumerate(todo)}
    cropped: set[int] = set()
    checks: dict[int, str] = {}
    scores = np.zeros((max(1, len(todo)), len(chosen.members), *(() if binary else (len(classes),))), np.float64)
    try:

        def handle(item: tuple, gray: np.ndarray, probability: np.ndarray, check: str) -> tuple[dict, QcItem]:
            index = index_of[item[1]]
            checks[index] = check  # reported, not refused: an explanation of a flagged image is still wanted
            result = locate(gray, probability)
            box = result.square
            store.put(index, make_views(gray, box, views))
            maps.shapes[index], maps.boxes[index] = gray.shape, (box.x0, box.y0, box.x1, box.y1)
            np.save(maps.display_path(index), display_image(gray))
            cropped.add(index)
            return {"file": item[1], "status": result.status.value}, QcItem.of(item[1], gray, box, result.status.value)

        crop_for_explanation(todo, config, report, handle)
        ready = sorted(cropped)
        weights = chosen.weights / chosen.weights.sum()
        for column, (member, file) in enumerate(tqdm(chosen.members, desc="Grad-CAM", unit="model")):
            if not ready:
                break
            model = load_member(file, member)
            layer = backbone(member.backbone).gradcam_layer
            images = store.arrays[(member.size, member.crop)]
            for start in range(0, len(ready), config.batch_size):
                batch = ready[start : start + config.batch_size]
                inputs = np.stack([to_model_input(images[i]) for i in batch])
                if not binary:
                    _add_class_maps(maps, scores, column, batch, *class_cams(model, layer, inputs), member, chosen)
                    continue
                positive, negative, member_scores = member_cams(model, layer, inputs)
                for i, pos, neg, score in zip(batch, positive, negative, member_scores, strict=True):
                    scores[i, column] = float(score)
                    crop_view = member.crop is CropMode.CROP
                    if chosen.rule == "max":  # the map of the member whose score the ensemble reports
                        if column == 0 or score > scores[i, :column].max():
                            maps.add(i, pos, neg, (1.0, 1.0), crop_view, replace=True)
                    elif chosen.rule == "vote":  # each member's evidence for the class it votes for
                        voted = float(score >= THRESHOLD)
                        maps.add(i, pos, neg, (voted, 1.0 - voted), crop_view)
                    else:
                        maps.add(i, pos, neg, (float(weights[column]),) * 2, crop_view)
            del model
            gc.collect()
        combined = chosen.combine(scores[ready]) if ready else np.zeros(0)
        for i, score in zip(ready, combined, strict=True):
            name = todo[i][1]
            if not binary:
                _write_class_outputs(config, maps, report, i, name, score, classes, wanted, checks.get(i, ""))
                continue
            predicted = "positive" if score >= THRESHOLD else "negative"
            target = predicted if wanted == PREDICTED else wanted
            display = np.load(maps.display_path(i))
            heatmap = maps.fused(i, target, display.shape)
            figure, raw, small = (config.output / n for n in layout.gradcam_names(Path(name)))
            plots.plot_gradcam(figure, display, heatmap, name, float(score), target)
            with atomic_path(raw) as tmp:
                np.save(tmp, heatmap)
            write_gray(small, np.round(heatmap * 255).astype(np.uint8))
            report.add(
                {
                    "file": name,
                    "status": "ok",
                    "score": f"{score:.6f}",
                    "target": target,
                    "input_check": checks.get(i, ""),
                }
            )
    finally:
        store.close()
    path = report.close()
    counts = report.status_counts()
    log.info("Grad-CAM: %s; %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), config.output)
    return StageResult(path, counts)


def _add_class_maps(
    maps: _Maps,
    scores: np.ndarray,
    column: int,
    batch: list[int],
    cams: np.ndarray,
    probabilities: np.ndarray,
    member,
    chosen,
) -> None:
    """One multi-class member's maps of one batch into the sums, by the ensemble's rule: weighted
    and mean: every class's map with the member's weight; vote: only the map of the class the
    member votes for; max: each class's map of the member most sure of that class so far (the
    rule's per-class maximum)."""
    classes = tuple(chosen.classes)
    weights = chosen.weights / chosen.weights.sum()
    crop_view = member.crop is CropMode.CROP
    for position, i in enumerate(batch):
        scores[i, column] = probabilities[position]
        cams_here = {c: cams[k, position] for k, c in enumerate(classes)}
        if chosen.rule == "max":
            better = [
                c for k, c in enumerate(classes) if column == 0 or scores[i, column, k] > scores[i, :column, k].max()
            ]
            maps.add_maps(i, {c: cams_here[c] for c in better}, dict.fromkeys(better, 1.0), crop_view, replace=True)
        elif chosen.rule == "vote":
            voted = classes[int(np.argmax(probabilities[position]))]
            maps.add_maps(i, {voted: cams_here[voted]}, {voted: 1.0}, crop_view)
        else:
            maps.add_maps(i, cams_here, dict.fromkeys(classes, float(weights[column])), crop_view)


def _write_class_outputs(
    config: GradcamConfig,
    maps: _Maps,
    report: BatchReport,
    i: int,
    name: str,
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    wanted: str,
    check: str = "",
) -> None:
    predicted = classes[int(np.argmax(probabilities))]
    target = predicted if wanted == PREDICTED else wanted
    score = float(probabilities[classes.index(predicted)])
    display = np.load(maps.display_path(i))
    heatmap = maps.fused(i, target, display.shape)
    figure, raw, small = (config.output / n for n in layout.gradcam_names(Path(name)))
    plots.plot_gradcam(figure, display, heatmap, f"{name} ({predicted})", score, target)
    with atomic_path(raw) as tmp:
        np.save(tmp, heatmap)
    write_gray(small, np.round(heatmap * 255).astype(np.uint8))
    row = {
        "file": name,
        "status": "ok",
        "predicted": predicted,
        "score": f"{score:.6f}",
        "target": target,
        "input_check": check,
    }
    row.update({class_names.probability_column(c): f"{p:.6f}" for c, p in zip(classes, probabilities, strict=True)})
    report.add(row)
