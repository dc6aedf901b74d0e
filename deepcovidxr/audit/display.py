"""The few films the audit page shows, at display size: the film, its lung mask, the ensemble's
Grad-CAM of the class it explains, and (for the montage) the film in the two masked modes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr.audit.masked_scoring import variants
from deepcovidxr.explain.display import display_image
from deepcovidxr.explain.ensemble_cam import CamSums
from deepcovidxr.imaging.reader import read_gray
from deepcovidxr.reports.audit_page import AuditImage


def audit_image(
    path: Path,
    name: str,
    mask: np.ndarray,
    scores: Mapping[str, float],
    sums: CamSums,
    index: int,
    target: str,
    fill: str,
    with_variants: bool,
) -> AuditImage:
    """One film for the page (``mask``: at the film's shape; ``sums``: the run's Grad-CAM sums,
    ``index`` the film's place in them)."""
    display = display_image(read_gray(path))
    height, width = display.shape
    small = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    modes = variants(display, small, fill) if with_variants else {}
    return AuditImage(
        name=name,
        display=display,
        mask=small,
        heatmap=sums.fused(index, target, (height, width)),
        scores=dict(scores),
        lungs_only=modes.get("lungs_only"),
        lungs_removed=modes.get("lungs_removed"),
    )
