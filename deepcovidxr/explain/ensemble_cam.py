"""Grad-CAM of the whole ensemble, model-major: each member's maps of a set of images are added to
running sums on disk (:class:`CamSums`) by the ensemble's rule as the member finishes, so memory
grows with neither the folder nor the members. visSample.py and the Python API
(:meth:`deepcovidxr.Predictor.explain`) both run :func:`ensemble_cams` over views cropped in
memory, so a map is the same either way.

The rule decides what a member adds: weighted and mean, every class's map with the member's
weight; vote, only the map of the class the member votes for; max, the map of the member most
sure of the class so far (it replaces the sum).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.contract.layout import CropMode, Member
from deepcovidxr.explain.display import fit_scale, scaled_box
from deepcovidxr.explain.gradcam import BINARY_KEYS, PREDICTED, class_cams, member_cams, to_original
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.preprocess import to_model_input
from deepcovidxr.inference.ensemble import THRESHOLD, Ensemble
from deepcovidxr.inference.streaming import ViewStore
from deepcovidxr.scoring.task import task_for

ACCUMULATOR_SIDE = 256  # fused maps are summed on disk at this longest side (they are smooth)


def cam_keys(classes: tuple[str, ...]) -> tuple[str, ...]:
    """The fused maps' keys: binary ``negative`` / ``positive``, multi-class the class names."""
    return task_for(classes).cam_keys


class CamSums:
    """Per image: the running ensemble-weighted sums of every class's maps at ACCUMULATOR_SIDE
    (on-disk memmaps; binary: ``positive`` and ``negative``, multi-class: one per class name) and
    the image's shape and crop box (:meth:`place`), which say where a view's map lies."""

    def __init__(self, folder: Path, count: int, keys: tuple[str, ...] = tuple(BINARY_KEYS)) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        shape = (max(1, count), ACCUMULATOR_SIDE, ACCUMULATOR_SIDE)
        # Numbered, not named: a class name need not be a safe file name.
        self.sums = {
            key: np.lib.format.open_memmap(folder / f"class_{i}.npy", "w+", np.float32, shape)
            for i, key in enumerate(keys)
        }
        self.shapes = np.zeros((max(1, count), 2), np.int64)
        self.boxes = np.zeros((max(1, count), 4), np.int64)

    def place(self, index: int, shape: tuple[int, ...], square: Box) -> None:
        """Image ``index``'s (height, width) and its square crop box, in the image's pixels."""
        self.shapes[index], self.boxes[index] = shape[:2], (square.x0, square.y0, square.x1, square.y1)

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

    def fused(self, index: int, target: str, shape: tuple[int, int]) -> np.ndarray:
        """The fused map of ``target`` at ``shape`` (the display size, or the image's), rescaled to [0, 1]."""
        import cv2

        (height, width), _ = self._frame(index)
        summed = np.asarray(self.sums[target][index, :height, :width])
        heatmap = cv2.resize(summed, tuple(shape[:2])[::-1], interpolation=cv2.INTER_LINEAR)
        peak = float(heatmap.max())
        return (heatmap / peak if peak > 0 else heatmap).astype(np.float32)


def ensemble_cams(
    chosen: Ensemble,
    store: ViewStore,
    ready: list[int],
    sums: CamSums,
    batch_size: int,
    each_model: Callable[[Member, object, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Every member's Grad-CAM (Keras, one member in memory at a time) of the ``ready`` images,
    whose views are in ``store`` and whose frames are placed in ``sums``, added to ``sums`` by the
    ensemble's rule. Returns the members' scores, (images, members) or (images, members, classes),
    zero for images not ready. ``each_model(member, model, images)``, if given, sees each member
    while it is loaded, with its view array (audit.py reads the pooled features there, so no
    member is loaded twice)."""
    from deepcovidxr.contract.backbones import get as backbone
    from deepcovidxr.networks.members import load_member

    task = chosen.task
    scores = np.zeros((len(sums.shapes), len(chosen.members), *task.score_shape), np.float64)
    # A sigmoid member gives both maps from one gradient; a softmax member one gradient per class.
    cams, add = task.pick(binary=(member_cams, _add_binary_maps), multiclass=(class_cams, _add_class_maps))
    for column, (member, file) in enumerate(tqdm(chosen.members, desc="Grad-CAM", unit="model")):
        if not ready:
            break
        model = load_member(file, member)
        layer = backbone(member.backbone).gradcam_layer
        images = store.arrays[(member.size, member.crop)]
        for start in range(0, len(ready), batch_size):
            batch = ready[start : start + batch_size]
            inputs = np.stack([to_model_input(images[i]) for i in batch])
            add(sums, scores, column, batch, *cams(model, layer, inputs), member, chosen)
        if each_model is not None:
            each_model(member, model, images)
        del model
        gc.collect()
    return scores


def _add_binary_maps(
    sums: CamSums,
    scores: np.ndarray,
    column: int,
    batch: list[int],
    positive: np.ndarray,
    negative: np.ndarray,
    member_scores: np.ndarray,
    member,
    chosen: Ensemble,
) -> None:
    """One sigmoid member's maps of one batch into the sums, by the ensemble's rule."""
    weights = chosen.weights / chosen.weights.sum()
    crop_view = member.crop is CropMode.CROP
    for i, pos, neg, score in zip(batch, positive, negative, member_scores, strict=True):
        scores[i, column] = float(score)
        if chosen.rule == "max":  # the map of the member whose score the ensemble reports
            if column == 0 or score > scores[i, :column].max():
                sums.add(i, pos, neg, (1.0, 1.0), crop_view, replace=True)
        elif chosen.rule == "vote":  # each member's evidence for the class it votes for
            voted = float(score >= THRESHOLD)
            sums.add(i, pos, neg, (voted, 1.0 - voted), crop_view)
        else:
            sums.add(i, pos, neg, (float(weights[column]),) * 2, crop_view)


def _add_class_maps(
    sums: CamSums,
    scores: np.ndarray,
    column: int,
    batch: list[int],
    cams: np.ndarray,
    probabilities: np.ndarray,
    member,
    chosen: Ensemble,
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
            sums.add_maps(i, {c: cams_here[c] for c in better}, dict.fromkeys(better, 1.0), crop_view, replace=True)
        elif chosen.rule == "vote":
            voted = classes[int(np.argmax(probabilities[position]))]
            sums.add_maps(i, {voted: cams_here[voted]}, {voted: 1.0}, crop_view)
        else:
            sums.add_maps(i, cams_here, dict.fromkeys(classes, float(weights[column])), crop_view)


def explained(combined, classes: tuple[str, ...], wanted: str) -> tuple[str, str, float]:
    """(the ensemble's call, the map explained, the call's score) of one image's combined score
    (binary: P(Positive), called ``positive`` at THRESHOLD as every stage; multi-class: the class
    probabilities, the argmax called). ``wanted``: a map key or ``predicted``."""
    task = task_for(classes)
    call, score = task.call(combined)
    predicted = task.cam_keys[call]
    return predicted, predicted if wanted == PREDICTED else wanted, score
