"""The resize stage: every image under a folder -> size x size Lanczos copy, same relative name.

Gray stays gray and RGB stays RGB (other modes become gray); DICOM input is written as PNG.
JPEGs are re-encoded at quality 95 rather than Pillow's default 75.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.imaging.preprocess import lanczos_resize
from deepcovidxr.imaging.reader import MAX_PIXELS, is_dicom, read_gray

log = logging.getLogger(__name__)


def load_for_resize(path: Path) -> np.ndarray:
    """uint8 gray (H, W) or RGB (H, W, 3) kept as stored; every other mode, and DICOM, through
    the gray reader (which also produces the typed errors)."""
    if not is_dicom(path):
        try:
            with Image.open(path) as image:
                if image.mode in {"L", "RGB"} and image.width * image.height <= MAX_PIXELS:
                    image.load()
                    return np.asarray(image).copy()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            pass
    return read_gray(path)


def resize_one(path: Path, destination: Path, size: int) -> dict:
    image = load_for_resize(path)
    resized = lanczos_resize(image, size)
    suffix = destination.suffix.lower()
    with atomic_path(destination) as tmp:
        if suffix in {".jpg", ".jpeg", ".jpe"}:
            Image.fromarray(resized).save(tmp, format="JPEG", quality=95)
        else:
            Image.fromarray(resized).save(tmp, format="PNG" if suffix not in {".bmp", ".tif", ".tiff"} else None)
    return {"status": "ok", "width": image.shape[1], "height": image.shape[0], "error": ""}
