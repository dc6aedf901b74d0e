"""The Grad-CAM stage (visSample.py): per image, ensemble-weighted Grad-CAM in original-image
coordinates, written as ``gradCAM_img/<stem>_gradCAM.png`` (input, heatmap, overlay) plus the raw
heatmap (``<stem>_heatmap.npy``, float32 in [0, 1], and an 8-bit ``<stem>_heatmap.png``).
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr import DISCLAIMER
from deepcovidxr.atomic import atomic_path
from deepcovidxr.batch import ERROR
from deepcovidxr.configs import GradcamConfig
from deepcovidxr.cropping import StageResult, ensure_outside, relative_name
from deepcovidxr.errors import UsageError
from deepcovidxr.gradcam import TARGETS, fuse, member_cams, to_original
from deepcovidxr.imageio import ImageReadError, iter_input_files, read_gray
from deepcovidxr.inference import THRESHOLD, resolve_ensemble
from deepcovidxr.layout import CropMode
from deepcovidxr.lungs import segment
from deepcovidxr.preprocess import to_model_input
from deepcovidxr.views import make_views

log = logging.getLogger(__name__)

DISPLAY_SIDE = 512  # maps and figures are made at this longest side


@dataclass
class Explained:
    name: str
    gray: np.ndarray  # at display size
    box: tuple[int, int, int, int]  # square crop box at display size
    positive: list[np.ndarray]
    negative: list[np.ndarray]
    scores: list[float]


def _display(gray: np.ndarray, box: segment.Box) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    scale = DISPLAY_SIDE / max(gray.shape)
    if scale >= 1:
        return gray, (box.x0, box.y0, box.x1, box.y1)
    height, width = round(gray.shape[0] * scale), round(gray.shape[1] * scale)
    small = segment.resize_gray(gray, width, height)
    x0, y0 = int(box.x0 * scale), int(box.y0 * scale)
    return small, (x0, y0, max(x0 + 1, round(box.x1 * scale)), max(y0 + 1, round(box.y1 * scale)))


def run_gradcam(config: GradcamConfig) -> StageResult:
    from deepcovidxr.backbones import get as backbone
    from deepcovidxr.lungs.cropper import LungCropper
    from deepcovidxr.models import load_member

    if config.target not in TARGETS:
        raise UsageError(f"unknown target {config.target!r}; choose one of {TARGETS}")
    ensure_outside(config.path, config.output)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    files = list(iter_input_files(config.path))
    cropper = LungCropper(config.unet, precision=config.precision)
    items: list[Explained] = []
    views_of: list[dict] = []
    errors = 0
    for path in files:
        name = relative_name(path, config.path).as_posix()
        try:
            gray = read_gray(path)
        except ImageReadError as error:
            log.error("%s: %s", name, error.reason)
            errors += 1
            continue
        result = cropper.crop([gray])[0]
        small, box = _display(gray, result.square)
        items.append(Explained(name, small, box, [], [], []))
        views_of.append(
            make_views(gray, result.square, tuple(dict.fromkeys((m.size, m.crop) for m, _ in chosen.members)))
        )
    del cropper
    for member, file in tqdm(chosen.members, desc="Grad-CAM", unit="model"):
        model = load_member(file, member)
        layer = backbone(member.backbone).gradcam_layer
        inputs = np.stack([to_model_input(v[(member.size, member.crop)]) for v in views_of]) if items else None
        if inputs is not None:
            positive, negative, scores = member_cams(model, layer, inputs)
            for item, pos, neg, score in zip(items, positive, negative, scores, strict=True):
                shape = item.gray.shape
                box = item.box if member.crop is CropMode.CROP else None
                item.positive.append(to_original(pos, shape, box))
                item.negative.append(to_original(neg, shape, box))
                item.scores.append(float(score))
        del model
        gc.collect()
    folder = config.output / "gradCAM_img"
    for item in items:
        ensemble_score = float(chosen.combine(np.asarray(item.scores)[np.newaxis])[0])
        target = (
            config.target
            if config.target != "predicted"
            else ("positive" if ensemble_score >= THRESHOLD else "negative")
        )
        heatmap = fuse(item.positive if target == "positive" else item.negative, list(chosen.weights))
        stem = Path(item.name).with_suffix("").as_posix().replace("/", "__")
        _write_figure(folder / f"{stem}_gradCAM.png", item.gray, heatmap, item.name, ensemble_score, target)
        with atomic_path(folder / f"{stem}_heatmap.npy") as tmp:
            np.save(tmp, heatmap)
        from deepcovidxr.imageio import write_gray

        write_gray(folder / f"{stem}_heatmap.png", np.round(heatmap * 255).astype(np.uint8))
    log.info("Grad-CAM: %d images explained, %d unreadable; %s", len(items), errors, folder)
    return StageResult(folder, {"ok": len(items), ERROR: errors})


def _write_figure(
    destination: Path, gray: np.ndarray, heatmap: np.ndarray, name: str, score: float, target: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    axes[0].imshow(gray, cmap="gray")
    axes[0].set_title("Input")
    axes[1].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title(f"Grad-CAM ({target} class)")
    axes[2].imshow(gray, cmap="gray")
    axes[2].imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    axes[2].set_title("Overlay")
    for axis in axes:
        axis.axis("off")
    figure.suptitle(f"{name}: ensemble score {score:.3f}\n{DISCLAIMER}", fontsize=9)
    figure.tight_layout()
    with atomic_path(destination) as tmp:
        figure.savefig(tmp, dpi=80)
    plt.close(figure)
