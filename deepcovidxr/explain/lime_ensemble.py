"""LIME explanations of the whole ensemble (``visSample.py --method lime``; the stage,
:func:`deepcovidxr.stages.vis_sample.run_lime`, plans, crops and keeps the report).

Per image: the lung crop is found once by the U-Net (the Grad-CAM stage's batched loop), the
image is brought to the display size (longest side ``DISPLAY_SIDE``, never enlarged) and cut into
SLIC superpixels; ``lime`` switches superpixels off (each replaced by its mean grey, lime's
default) in ``--num-samples`` seeded random patterns, and every perturbed copy goes through the
ensemble exactly as an image does in the Grad-CAM stage: each member's view made by
``views.make_views`` from that copy (the crop view from the same square box, mapped to the
display size: the U-Net is not re-run per copy), ``preprocess.to_model_input``, the member's
scores combined by the ensemble's rule and weights (binary: ``[1 - p, p]``; multi-class: the
combined probability row). A weighted linear model over "superpixel kept" then gives each
superpixel's weight for the chosen class; the figure colours the strongest ones on the original
image (green for the class, red against it). The explainer is rebuilt from the config for every
image (nothing pickled), so the same seed gives the same explanation, alone or in a folder.

Cost: every image costs ``num_samples`` forward passes of every member (1000 samples x 24
members = 24 000 passes per image), plus LIME's own masking (~10 ms per sample at 512 px), where
Grad-CAM costs one forward and one backward pass per member. All members are held in memory for
the run (each copy needs every member).

Because the copies are made at the display size, the members see views made from that copy,
not from the full-resolution file: the ``score`` in ``lime_report.csv`` is the ensemble's score of
the explained image and may differ slightly from predict.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.explain.gradcam import PREDICTED
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.preprocess import to_model_input
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference.ensemble import Ensemble
from deepcovidxr.scoring.metrics import DISCLAIMER
from deepcovidxr.scoring.task import task_for

log = logging.getLogger(__name__)

SUPERPIXELS = 60  # SLIC's target count: lung zones at a useful grain, few enough for 1000 samples
COMPACTNESS = 10.0  # SLIC on 0..255 grey: superpixels follow edges but stay roughly round
SHOWN = 6  # superpixels coloured for and against the class (the strongest of each sign)
FLOOR = 0.1  # ... whose |weight| is at least this share of the strongest (near-zero ones are noise)
FOR_COLOUR, AGAINST_COLOUR = (40, 190, 40), (40, 40, 220)  # BGR: green for, red against


def report_columns(classes: tuple[str, ...]) -> list[str]:
    return [
        "file",
        "status",
        "predicted",
        "score",
        "target",
        "target_score",
        *map(class_names.probability_column, classes),
        "superpixels",
        "explanation",
        "input_check",
        "error",
    ]


def superpixels(image: np.ndarray) -> np.ndarray:
    """SLIC superpixels of an (H, W, 3) grey-in-RGB image, labelled 0..n-1 (lime indexes its
    features by label). Deterministic: SLIC draws nothing at random."""
    from skimage.segmentation import slic

    labels = slic(image, n_segments=SUPERPIXELS, compactness=COMPACTNESS, start_label=0, channel_axis=-1)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


class EnsembleClassifier:
    """LIME's ``classifier_fn``: (n, H, W, 3) uint8 copies of one display-size image -> (n,
    classes) ensemble probabilities. Each member sees its view of each copy (the crop view from
    ``box``), made and normalised as in the Grad-CAM stage; a fixed batch shape (the last batch
    padded), so each member's graph is traced once."""

    def __init__(self, chosen: Ensemble, models: list, box: Box, batch_size: int) -> None:
        self.chosen, self.models, self.box, self.batch_size = chosen, models, box, batch_size
        self.views = tuple(dict.fromkeys((m.size, m.crop) for m, _ in chosen.members))
        self.task = chosen.task

    def member_scores(self, images: np.ndarray) -> np.ndarray:
        """(n, members) sigmoid scores, or (n, members, classes) softmax rows."""
        from deepcovidxr.inference.streaming import _compiled_forward

        views = [make_views(np.ascontiguousarray(image[..., 0]), self.box, self.views) for image in images]
        columns = []
        for (member, _), model in zip(self.chosen.members, self.models, strict=True):
            forward = _compiled_forward(model)
            outputs = []
            for start in range(0, len(views), self.batch_size):
                chunk = np.stack(
                    [to_model_input(v[(member.size, member.crop)]) for v in views[start : start + self.batch_size]]
                )
                count = len(chunk)
                if count < self.batch_size:
                    chunk = np.concatenate([chunk, np.zeros((self.batch_size - count, *chunk.shape[1:]), np.float32)])
                outputs.append(np.asarray(forward(chunk), np.float64)[:count])
            scores = np.concatenate(outputs)
            columns.append(self.task.member_scores(scores))
        return np.stack(columns, axis=1)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.task.class_probabilities(self.chosen.combine(self.member_scores(np.asarray(images))))


def explain(
    image: np.ndarray, classifier, classes: tuple[str, ...], target: str, num_samples: int, seed: int, batch_size: int
):
    """LIME of one display-size grey image (uint8 (H, W)) for ``target`` (a class name or
    ``predicted``): (explanation, explained class index, the ensemble's probabilities of the
    unperturbed image). The explainer is built here, from the seed, for every image."""
    from lime.lime_image import LimeImageExplainer

    rgb = np.repeat(image[..., None], 3, axis=-1)
    probabilities = np.asarray(classifier(rgb[None])[0], np.float64)
    label = predicted_index(probabilities, classes) if target == PREDICTED else classes.index(target)
    explainer = LimeImageExplainer(random_state=seed)
    explanation = explainer.explain_instance(
        rgb,
        classifier,
        labels=(label,),
        top_labels=None,
        hide_color=None,  # a switched-off superpixel takes its own mean grey
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=superpixels,
        random_seed=seed,
    )
    return explanation, label, probabilities


def predicted_index(probabilities: np.ndarray, classes: tuple[str, ...]) -> int:
    """The ensemble's call on one probability row: binary at THRESHOLD on P(Positive) (as every
    stage), else the argmax (:meth:`deepcovidxr.scoring.task.Task.predicted`)."""
    return int(task_for(classes).predicted(np.asarray(probabilities)[None])[0])


def weight_map(explanation, label: int) -> np.ndarray:
    """Each pixel's superpixel weight for ``label`` (float32, signed: > 0 for the class)."""
    weights = np.zeros(int(explanation.segments.max()) + 1, np.float32)
    for feature, weight in explanation.local_exp[label]:
        weights[feature] = weight
    return weights[explanation.segments]


def draw(path: Path, gray: np.ndarray, explanation, label: int, title: str, subtitle: str) -> Path:
    """Input and overlay side by side (OpenCV): the SHOWN strongest superpixels for the class in
    green and against it in red (those above FLOOR of the strongest weight), opacity growing with
    the weight, outlined; two title lines
    above, the disclaimer below (also in the PNG's metadata)."""
    import cv2
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    weights = weight_map(explanation, label)
    strongest = float(np.abs(weights).max()) or 1.0
    floor = FLOOR * strongest
    _, for_mask = explanation.get_image_and_mask(
        label, positive_only=True, num_features=SHOWN, hide_rest=False, min_weight=floor
    )
    _, against_mask = explanation.get_image_and_mask(
        label, positive_only=False, negative_only=True, num_features=SHOWN, hide_rest=False, min_weight=floor
    )
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    overlay = base.copy()
    for mask, colour in ((for_mask, FOR_COLOUR), (against_mask, AGAINST_COLOUR)):
        chosen = mask.astype(bool)
        alpha = (0.25 + 0.35 * np.abs(weights) / strongest)[chosen][:, None]
        overlay[chosen] = (1 - alpha) * overlay[chosen] + alpha * np.asarray(colour, np.float32)
    overlay = overlay.round().astype(np.uint8)
    for mask, colour in ((for_mask, FOR_COLOUR), (against_mask, AGAINST_COLOUR)):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, colour, 1, cv2.LINE_AA)
    height, width = gray.shape
    gap, top, bottom = 10, 56, 26
    canvas = np.full((top + height + bottom, 2 * width + 3 * gap, 3), 255, np.uint8)
    canvas[top : top + height, gap : gap + width] = base.astype(np.uint8)
    canvas[top : top + height, 2 * gap + width : 2 * gap + 2 * width] = overlay
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(0.55, canvas.shape[1] / 1900))
    for row, (text, colour) in enumerate(((title, (0, 0, 0)), (subtitle, (60, 60, 60)))):
        room = canvas.shape[1] - 2 * gap
        if cv2.getTextSize(text, font, scale, 1)[0][0] > room:  # cut to the width, marked
            while text and cv2.getTextSize(text + "...", font, scale, 1)[0][0] > room:
                text = text[:-1]
            text += "..."
        cv2.putText(canvas, text, (gap, 22 + 22 * row), font, scale, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, DISCLAIMER, (gap, top + height + 18), font, scale, (34, 34, 178), 1, cv2.LINE_AA)
    metadata = PngInfo()
    metadata.add_text("Title", f"LIME {title} - {DISCLAIMER}")
    metadata.add_text("Description", DISCLAIMER)
    with atomic_path(path) as tmp:
        Image.fromarray(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)).save(tmp, format="PNG", pnginfo=metadata)
    return path


def explain_to_files(
    name: str,
    gray: np.ndarray,
    box: Box,
    chosen: Ensemble,
    models: list,
    target: str,
    num_samples: int,
    seed: int,
    batch_size: int,
    figure: Path,
    raw: Path,
) -> dict:
    """LIME of one display-size image (``box``: its crop square at that size) for ``target`` (a
    class or ``predicted``): the figure (:func:`draw`) and the weight map (.npy) written; returns
    the report row's values (status, predicted, score, target, target_score, superpixels and every
    class's probability)."""
    classes = tuple(chosen.classes)
    classifier = EnsembleClassifier(chosen, models, box, batch_size)
    explanation, label, probabilities = explain(gray, classifier, classes, target, num_samples, seed, batch_size)
    predicted = classes[predicted_index(probabilities, classes)]
    score = float(probabilities[classes.index(predicted)])
    count = len(np.unique(explanation.segments))
    draw(
        figure,
        gray,
        explanation,
        label,
        f"{name}: ensemble predicts {predicted} ({score:.3f})",
        f"LIME for {classes[label]}: green for, red against; {num_samples} samples, seed "
        f"{seed}; strongest {SHOWN} each of {count} superpixels, |w| >= {FLOOR:.0%} of the top",
    )
    with atomic_path(raw) as tmp:
        np.save(tmp, weight_map(explanation, label))
    row = {
        "status": "ok",
        "predicted": predicted,
        "score": f"{score:.6f}",
        "target": classes[label],
        "target_score": f"{probabilities[label]:.6f}",
        "superpixels": count,
    }
    return row | {class_names.probability_column(c): f"{p:.6f}" for c, p in zip(classes, probabilities, strict=True)}
