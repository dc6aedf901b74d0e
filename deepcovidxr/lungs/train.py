"""Train our lung U-Net on image/mask pairs (Montgomery + Shenzhen from ``../shared/data/lungmasks``).

Part of the pairs is held out by file (stratified by source data set) and never trained on; the
validation Dice written to the metadata is measured on them, at the masks' own resolution, on
the exact mask ``crop_img.py --save-masks`` writes (threshold, opening, two largest components).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr import __version__
from deepcovidxr.config.data_stages import UnetTrainConfig
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.geometry import resize_gray
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.lungs import segment

log = logging.getLogger(__name__)

MASK_THRESHOLD = 127  # the masks are anti-aliased (data README)


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    dataset: str


def find_pairs(root: Path) -> list[Pair]:
    """Image/mask pairs from ``manifest.csv`` when present, else ``*/images`` + ``*/masks``."""
    manifest = root / "manifest.csv"
    pairs: list[Pair] = []
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                pairs.append(Pair(root / row["image"], root / row["mask"], row["image"].split("/")[0]))
    else:
        for images in sorted(root.glob("*/images")):
            for image in sorted(images.iterdir()):
                mask = images.parent / "masks" / image.name
                if mask.is_file():
                    pairs.append(Pair(image, mask, images.parent.name))
    if not pairs:
        raise MissingInputError(f"no image/mask pairs under {root} (expected manifest.csv or */images + */masks)")
    return sorted(pairs, key=lambda p: str(p.image))


def split_heldout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Seeded per-data-set split by file: (train, held_out)."""
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for dataset in sorted({p.dataset for p in pairs}):
        group = [p for p in pairs if p.dataset == dataset]
        order = rng.permutation(len(group))
        n_held = max(1, round(fraction * len(group)))
        held_idx = set(order[:n_held].tolist())
        for i, pair in enumerate(group):
            (heldout if i in held_idx else train).append(pair)
    return train, heldout


def load_256(pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([resize_gray(read_gray(p.image), 256, 256) for p in pairs])
    masks = []
    for p in pairs:
        mask = (read_gray(p.mask) > MASK_THRESHOLD).astype(np.float32)
        masks.append(cv2.resize(mask, (256, 256), interpolation=cv2.INTER_AREA) > 0.5)
    return images, np.stack(masks).astype(np.float32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = pred.astype(bool), truth.astype(bool)
    denominator = pred.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2.0 * np.logical_and(pred, truth).sum() / denominator)


def heldout_dice(model, pairs: list[Pair], batch_size: int = 16) -> list[float]:
    """Dice of the post-processed mask at the true mask's resolution, one value per pair."""
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        grays = [read_gray(p.image) for p in chunk]
        batch = np.stack([segment.unet_input(g) for g in grays])
        probabilities = np.asarray(model.predict_on_batch(batch), dtype=np.float32)[..., 0]
        for pair, gray, probability in zip(chunk, grays, probabilities, strict=True):
            truth = read_gray(pair.mask) > MASK_THRESHOLD
            small = resize_gray(gray, 256, 256)
            lung = segment.lung_box(probability, small)
            predicted = segment.full_resolution_mask(probability, lung, truth.shape[1], truth.shape[0])
            scores.append(dice(predicted > 0, truth))
    return scores


def initial_model(config: UnetTrainConfig, policy: str):
    """Random weights, or ``config.init`` (ours or imlab's .hdf5) in the same architecture."""
    from deepcovidxr.lungs.unet import build_unet, load_unet

    if config.init is None:
        return build_unet(config.architecture, policy)
    model, meta = load_unet(config.init, dtype=policy, fold=False)
    if meta["architecture"] != config.architecture:
        raise UsageError(
            f"{config.init} holds the {meta['architecture']!r} U-Net; pass --architecture {meta['architecture']}"
            " to fine-tune it"
        )
    log.info("U-Net starts from %s", config.init)
    return model


def _parent_summary(init: Path | None) -> dict | None:
    """What a fine-tuned U-Net started from: the file, and its own metadata's date, validation and
    training sections when it has a sidecar (imlab's .hdf5 has none)."""
    from deepcovidxr.lungs.unet import sidecar_path

    if init is None:
        return None
    summary: dict = {"file": str(init)}
    sidecar = sidecar_path(init)
    if init.name.endswith(".weights.h5") and sidecar.is_file():
        parent = json.loads(sidecar.read_text(encoding="utf-8"))
        kept = ("date", "validation", "training", "started_from")
        summary.update({key: parent[key] for key in kept if key in parent})
    return summary


def write_unet_metadata(
    model,
    config: UnetTrainConfig,
    pairs: list[Pair],
    train_pairs: list[Pair],
    held_pairs: list[Pair],
    history: list[dict],
    best: dict,
    seconds: float,
    note: str = "",
) -> Path:
    """Measure the held-out Dice of ``model`` and write ``lung_unet.json`` beside the weights."""
    import keras

    from deepcovidxr.lungs.unet import sidecar_path

    scores = heldout_dice(model, held_pairs)
    by_set = {
        name: float(np.mean([s for s, p in zip(scores, held_pairs, strict=True) if p.dataset == name]))
        for name in sorted({p.dataset for p in held_pairs})
    }
    meta = {
        "name": "deepcovidxr lung U-Net",
        "architecture": config.architecture,
        "parameters": int(model.count_params()),
        "input": {
            "shape": [256, 256, 1],
            "preprocessing": "gray uint8 -> area/bilinear resize to 256x256 -> /255 -> "
            "skimage equalize_hist -> standardise with the image's own mean and std",
        },
        "output": "sigmoid lung probability, 256x256; threshold 0.5",
        "training_data": {
            "root": config.data.name,
            "datasets": sorted({p.dataset for p in pairs}),
            "train_pairs": len(train_pairs),
            "heldout_pairs": len(held_pairs),
            "heldout_files": [str(p.image.relative_to(config.data)) for p in held_pairs],
            "licences": "Montgomery and Shenzhen images: NLM TB CXR sets, free for research, cite "
            "Jaeger et al. 2014; Shenzhen masks CC BY-NC-SA 4.0 (Stirenko et al.); Montgomery masks NLM",
        },
        "validation": {
            "dice_mean": float(np.mean(scores)),
            "dice_median": float(np.median(scores)),
            "dice_min": float(np.min(scores)),
            "dice_mean_by_dataset": by_set,
            "heldout_dice256_best": best["dice256"],
            "measured_on": "held-out pairs at mask resolution, post-processed as crop_img.py --save-masks",
        },
        "training": {
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "best_epoch": best["epoch"],
            "seconds": round(seconds, 1),
            "history": history,
            "note": note,
        },
        "started_from": _parent_summary(config.init),
        "date": dt.date.today().isoformat(),
        "deepcovidxr_version": __version__,
        "keras_version": keras.__version__,
    }
    path = sidecar_path(config.output / "lung_unet.weights.h5")
    write_json(path, meta)
    log.info(
        "held-out Dice %.4f (median %.4f, min %.4f); wrote %s",
        meta["validation"]["dice_mean"],
        meta["validation"]["dice_median"],
        meta["validation"]["dice_min"],
        path,
    )
    return path
