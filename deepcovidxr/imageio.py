"""Read any chest X-ray file (PNG, JPEG, BMP, TIFF or DICOM) into one gray uint8 array.

Every failure is an :class:`ImageReadError` naming the file and the reason, so a batch can
record it and go on. Writing goes through :mod:`deepcovidxr.atomic`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from deepcovidxr.atomic import atomic_path
from deepcovidxr.errors import MissingInputError
from deepcovidxr.layout import DICOM_SUFFIXES

log = logging.getLogger(__name__)

# Larger than any radiograph (a 43x43 cm detector at 100 um is 18 MP); stops decompression bombs
# before their pixels are allocated.
MAX_PIXELS = 80_000_000

# Never let Pillow silently pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageReadError(Exception):
    """A file that cannot be turned into an image; ``reason`` is fit for a report column."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class EmptyFileError(ImageReadError):
    pass


class UnsupportedFormatError(ImageReadError):
    pass


class ImageTooLargeError(ImageReadError):
    pass


class DecodeError(ImageReadError):
    pass


def is_dicom(path: Path) -> bool:
    """DICOM by suffix, or by the ``DICM`` magic at byte 128 (files often have no suffix)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def iter_input_files(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Every regular, non-hidden file under ``root`` (or ``root`` itself), sorted, recursively.

    Non-images are yielded too: the stages report them as errors rather than skip them
    silently. ``exclude`` (an output folder nested in the input) is never entered.
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise MissingInputError(f"input not found: {root}")
    exclude_resolved = exclude.resolve() if exclude is not None else None
    for directory, subdirs, files in os.walk(root):
        here = Path(directory)
        subdirs[:] = sorted(
            d
            for d in subdirs
            if not d.startswith(".") and (exclude_resolved is None or (here / d).resolve() != exclude_resolved)
        )
        for name in sorted(files):
            if not name.startswith("."):
                yield here / name


def read_gray(path: Path | str) -> np.ndarray:
    """Return the image as a 2-D uint8 array, dark lungs as on a MONOCHROME2 radiograph."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(path, f"cannot read file: {error.strerror or error}") from error
    if size == 0:
        raise EmptyFileError(path, "empty file (0 bytes)")
    if is_dicom(path):
        from deepcovidxr.dicom import read_dicom_gray

        return read_dicom_gray(path)
    return _read_raster(path)


def _read_raster(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageTooLargeError(path, f"{width}x{height} pixels exceeds the {MAX_PIXELS:,} pixel limit")
                image.load()
                return pil_to_gray(image)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError as error:
        raise UnsupportedFormatError(path, f"not a readable image ({path.suffix or 'no suffix'})") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(path, f"decompression bomb guard: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(path, f"corrupt or truncated image: {error}") from error


def pil_to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> gray uint8. 16/32-bit data are stretched from their own min to max."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        return stretch_to_uint8(np.asarray(image).astype(np.float64))
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA"}:
        # Composite onto black: transparent areas of an exported radiograph are background.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        image = Image.fromarray(np.round(rgba[..., :3] * alpha).astype(np.uint8), "RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8).copy()


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def write_gray(destination: Path, image: np.ndarray) -> None:
    """Write a gray uint8 image atomically; the format follows the suffix (PNG for DICOM)."""
    with atomic_path(destination) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(destination))


def _pil_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix, "PNG"
    )
