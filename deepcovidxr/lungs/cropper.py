"""One U-Net instance, batched: gray images in, square lung boxes out.

Decoding and box geometry are numpy/OpenCV work that threads can share; the U-Net runs on the
caller's thread in fixed-size batches (the last one padded) so the graph is traced once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepcovidxr import shipped
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.segment import Box, CropStatus, LungBox

log = logging.getLogger(__name__)

# Package data, not a path from the repository root: an installed wheel has no checkout around it.
DEFAULT_UNET = shipped.unet_weights()


def default_unet_path() -> Path:
    """``$DEEPCOVIDXR_UNET`` if set, else our shipped weights (package data, ``deepcovidxr/assets/unet``)."""
    return Path(os.environ.get("DEEPCOVIDXR_UNET", DEFAULT_UNET))


@dataclass(frozen=True)
class CropResult:
    square: Box  # the square lung box in original pixels (the crop written downstream)
    tight: Box  # the padded lung box before squaring (the original's "crop" output)
    lung: LungBox
    probability256: np.ndarray

    @property
    def status(self) -> CropStatus:
        return self.lung.status

    def full_resolution_mask(self, width: int, height: int) -> np.ndarray:
        return segment.full_resolution_mask(self.probability256, self.lung, width, height)


def locate(gray: np.ndarray, probability256: np.ndarray) -> CropResult:
    """Box rules for one image, given its U-Net probability map (thread-safe, no model)."""
    height, width = gray.shape
    lung = segment.lung_box(probability256, segment.resize_gray(gray, segment.UNET_SIZE, segment.UNET_SIZE))
    if lung.status is CropStatus.FALLBACK:
        whole = Box(0, 0, width, height)
        return CropResult(whole, whole, lung, probability256)
    tight = segment.scale_box(lung.box256, segment.UNET_SIZE, width, height)
    return CropResult(segment.square_box(tight, width, height), tight, lung, probability256)


class LungCropper:
    """Holds one U-Net; ``probabilities`` runs it, ``crop`` does the whole job for a batch."""

    def __init__(
        self, unet_path: Path | None = None, batch_size: int = 16, precision: str = "auto", fold: bool = True
    ) -> None:
        from deepcovidxr.lungs.unet import load_unet

        self.path = Path(unet_path) if unet_path else default_unet_path()
        # "mixed" is the configs' spelling; "bfloat16" the library's older one.
        dtype = {"auto": None, "float32": "float32", "mixed": "mixed_bfloat16", "bfloat16": "mixed_bfloat16"}[precision]
        self.model, self.meta = load_unet(self.path, dtype, fold=fold)
        self.batch_size = batch_size
        log.info(
            "lung U-Net: %s (%s architecture, %s)",
            self.path,
            self.meta.get("architecture"),
            self.meta.get("inference_dtype"),
        )

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(n, 256, 256, 1) U-Net inputs -> (n, 256, 256) float32 probabilities."""
        results = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            count = len(batch)
            if count < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - count, *batch.shape[1:]), batch.dtype)])
            output = self.model.predict_on_batch(batch)
            results.append(np.asarray(output, dtype=np.float32)[:count, ..., 0])
        if not results:
            return np.zeros((0, segment.UNET_SIZE, segment.UNET_SIZE), np.float32)
        return np.concatenate(results)

    def crop(self, grays: list[np.ndarray]) -> list[CropResult]:
        inputs = np.stack([segment.unet_input(g) for g in grays]) if grays else np.zeros((0, 256, 256, 1), np.float32)
        return [locate(g, p) for g, p in zip(grays, self.probabilities(inputs), strict=True)]
