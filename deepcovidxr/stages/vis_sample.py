"""The Grad-CAM stage (visSample.py): per image, ensemble-weighted Grad-CAM in original-image
coordinates, written under the names of ``layout.gradcam_names`` (figure: input, heatmap,
overlay; the raw heatmap as float32 .npy in [0, 1] and an 8-bit PNG), one report row per input in
``gradcam_report.csv``.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr import layout, plots
from deepcovidxr.atomic import atomic_path
from deepcovidxr.batch import ERROR, BatchReport
from deepcovidxr.configs import GradcamConfig
from deepcovidxr.errors import UsageError
from deepcovidxr.gradcam import TARGETS, member_cams, to_original
from deepcovidxr.imageio import iter_input_files, write_gray
from deepcovidxr.inference import THRESHOLD, resolve_ensemble
from deepcovidxr.layout import CropMode
from deepcovidxr.lungs import segment
from deepcovidxr.preprocess import to_model_input
from deepcovidxr.stages.common import StageResult, relative_name
from deepcovidxr.views import make_views

log = logging.getLogger(__name__)

DISPLAY_SIDE = 512  # maps and figures are made at this longest side


ACCUMULATOR_SIDE = 256  # fused maps are summed on disk at this longest side (they are smooth)
REPORT_COLUMNS = ["file", "status", "score", "target", "error"]


def _fit(shape: tuple[int, int], side: int) -> float:
    """The scale that brings an image's longest side down to ``side`` (never up)."""
    return min(1.0, side / max(shape))


def _scaled(shape: tuple[int, int], box: tuple[int, int, int, int], scale: float):
    height, width = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    x0, y0 = min(width - 1, int(box[0] * scale)), min(height - 1, int(box[1] * scale))
    x1, y1 = max(x0 + 1, min(width, round(box[2] * scale))), max(y0 + 1, min(height, round(box[3] * scale)))
    return (height, width), (x0, y0, x1, y1)


def _display(gray: np.ndarray) -> np.ndarray:
    scale = _fit(gray.shape, DISPLAY_SIDE)
    if scale >= 1:
        return gray
    return segment.resize_gray(gray, round(gray.shape[1] * scale), round(gray.shape[0] * scale))


class _Maps:
    """Per image: the running ensemble-weighted sums of both classes' maps at ACCUMULATOR_SIDE
    (on-disk memmaps), the crop box and the display image. Members run model-major, so each
    member's maps are added as it finishes instead of being kept per member."""

    def __init__(self, folder: Path, count: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        shape = (max(1, count), ACCUMULATOR_SIDE, ACCUMULATOR_SIDE)
        self.positive = np.lib.format.open_memmap(folder / "positive.npy", "w+", np.float32, shape)
        self.negative = np.lib.format.open_memmap(folder / "negative.npy", "w+", np.float32, shape)
        self.shapes = np.zeros((max(1, count), 2), np.int64)
        self.boxes = np.zeros((max(1, count), 4), np.int64)

    def display_path(self, index: int) -> Path:
        return self.folder / f"display_{index}.npy"

    def _frame(self, index: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        shape = tuple(int(v) for v in self.shapes[index])
        return _scaled(shape, tuple(int(v) for v in self.boxes[index]), _fit(shape, ACCUMULATOR_SIDE))

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
        (height, width), box = self._frame(index)
        where = box if cropped else None
        for total, cam, weight in ((self.positive, positive, weights[0]), (self.negative, negative, weights[1])):
            placed = weight * to_original(cam, (height, width), where)
            if replace:
                total[index, :height, :width] = placed
            else:
                total[index, :height, :width] += placed

    def fused(self, index: int, target: str, display_shape: tuple[int, int]) -> np.ndarray:
        """The fused map of ``target`` at the display size, rescaled to [0, 1]."""
        import cv2

        (height, width), _ = self._frame(index)
        summed = np.asarray((self.positive if target == "positive" else self.negative)[index, :height, :width])
        heatmap = cv2.resize(summed, display_shape[::-1], interpolation=cv2.INTER_LINEAR)
        peak = float(heatmap.max())
        return (heatmap / peak if peak > 0 else heatmap).astype(np.float32)


def run(config: GradcamConfig) -> StageResult:
    """Crop in U-Net batches (the crop stage's pipelined loop), then Grad-CAM member by member
    over all images in batches, summing each image's fused map on disk; figures are written one
    image at a time at the end, so memory does not grow with the folder."""
    from deepcovidxr.backbones import get as backbone
    from deepcovidxr.cropping import segment_files
    from deepcovidxr.lungs.cropper import LungCropper, locate
    from deepcovidxr.models import load_member
    from deepcovidxr.predictor import ViewStore
    from deepcovidxr.reports import QcCollector, QcItem
    from deepcovidxr.stages.common import refuse_collisions

    if config.target not in TARGETS:
        raise UsageError(f"unknown target {config.target!r}; choose one of {TARGETS}")
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    report = BatchReport(config.output / layout.GRADCAM_REPORT, REPORT_COLUMNS, overwrite=config.overwrite)
    planned = {}
    for path in iter_input_files(config.path):
        relative = relative_name(path, config.path)
        planned[relative.as_posix()] = (path, [config.output / n for n in layout.gradcam_names(relative)])
    clashes = refuse_collisions(report, {name: outputs for name, (_, outputs) in planned.items()})
    todo = [
        (path, name)
        for name, (path, outputs) in planned.items()
        if name not in clashes and not report.finished(name, *outputs)
    ]
    log.info("Grad-CAM: %d files, %d to do, %d members", len(planned), len(todo), len(chosen.members))
    views = tuple(dict.fromkeys((m.size, m.crop) for m, _ in chosen.members))
    store = ViewStore(layout.scratch_dir(config.output), len(todo), views)
    maps = _Maps(store.folder / "maps", len(todo))
    index_of = {name: i for i, (_, name) in enumerate(todo)}
    cropped: set[int] = set()
    scores = np.zeros((max(1, len(todo)), len(chosen.members)), np.float64)
    try:

        def handle(item: tuple, gray: np.ndarray, probability: np.ndarray) -> tuple[dict, QcItem]:
            index = index_of[item[1]]
            result = locate(gray, probability)
            box = result.square
            store.put(index, make_views(gray, box, views))
            maps.shapes[index], maps.boxes[index] = gray.shape, (box.x0, box.y0, box.x1, box.y1)
            np.save(maps.display_path(index), _display(gray))
            cropped.add(index)
            return {"file": item[1], "status": result.status.value}, QcItem.of(item[1], gray, box, result.status.value)

        def failed(item: tuple, reason: str) -> dict:
            return {"file": item[1], "status": ERROR, "error": reason}

        class Failures:  # the segment loop's report: here only its failures are final rows
            def add(self, row: dict) -> None:
                if row["status"] == ERROR:
                    report.add(row)

        if todo:
            cropper = LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)
            segment_files(todo, cropper, handle, failed, Failures(), QcCollector(limit=0), config.workers, "crop")
            del cropper
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
            predicted = "positive" if score >= THRESHOLD else "negative"
            target = predicted if config.target == "predicted" else config.target
            display = np.load(maps.display_path(i))
            heatmap = maps.fused(i, target, display.shape)
            figure, raw, small = (config.output / n for n in layout.gradcam_names(Path(name)))
            plots.plot_gradcam(figure, display, heatmap, name, float(score), target)
            with atomic_path(raw) as tmp:
                np.save(tmp, heatmap)
            write_gray(small, np.round(heatmap * 255).astype(np.uint8))
            report.add({"file": name, "status": "ok", "score": f"{score:.6f}", "target": target})
    finally:
        store.close()
    path = report.close()
    counts = report.status_counts()
    log.info("Grad-CAM: %s; %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), config.output)
    return StageResult(path, counts)
