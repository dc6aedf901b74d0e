"""Read any chest X-ray file (PNG, JPEG, BMP, TIFF or DICOM) into one gray uint8 array.

:func:`read_gray` is the one decoder of the project: the crop, resize and dataset stages, the
training / tuning / pretraining tf.data pipelines, ensemble fitting, evaluation, prediction and
Grad-CAM all read through it, so the same file gives the same array in every stage. Listings skip
the same hidden files everywhere (:func:`is_hidden`).

Every failure is an :class:`ImageReadError` naming the file and the reason, so a batch can
record it and go on. Writing goes through :mod:`deepcovidxr.contract.atomic`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.contract.files import is_hidden, is_hidden_name
from deepcovidxr.contract.layout import DICOM_SUFFIXES, IMAGE_SUFFIXES
from deepcovidxr.errors import MissingInputError
from deepcovidxr.imaging.dicom import read_dicom_gray_info
from deepcovidxr.imaging.pixels import (
    MAX_PIXELS,
    DecodeError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    ReadInfo,
    UnsupportedFormatError,
    stretch_to_uint8,
)
from deepcovidxr.imaging.preprocess import lanczos_resize

log = logging.getLogger(__name__)

# Never let Pillow silently pad a truncated file with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Container depths a 16-bit file's significant bits are inferred from (see read_gray).
INFERRED_DEPTHS = (8, 10, 12, 14, 16)


# Every suffix the reader decodes: the dataset-tree readers (training, evaluation, ensemble, int8
# calibration) list exactly these, so no file the dataset builder or a user put in a tree is
# passed over without a word.
READABLE_SUFFIXES = IMAGE_SUFFIXES


def list_images(folder: Path | str, suffixes: Iterable[str] = READABLE_SUFFIXES) -> list[Path]:
    """Non-hidden files under ``folder`` (recursively) whose suffix is one of ``suffixes``, sorted
    by path: the listing of every dataset-tree reader."""
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in iter_input_files(Path(folder)) if p.suffix.lower() in wanted)


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
    """Every regular, non-hidden (:func:`is_hidden_name`) file under ``root`` (or ``root`` itself),
    sorted, recursively (a folder's files before its subfolders).

    Non-images are yielded too: the stages report them as errors rather than skip them
    silently. ``exclude`` (an output folder nested in the input) is never entered. Symbolic links
    to folders are followed (sites link their exports into one tree), each real folder once, so a
    link back up the tree cannot loop (that link is logged and passed over).
    """
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise MissingInputError(f"input not found: {root}")
    exclude_resolved = exclude.resolve() if exclude is not None else None
    visited = {root.resolve()}
    for directory, subdirs, files in os.walk(root, followlinks=True):
        here = Path(directory)
        kept = []
        for d in sorted(subdirs):
            real = (here / d).resolve()
            if is_hidden_name(d) or real == exclude_resolved:
                continue
            if real in visited:
                log.warning("%s: a link to a folder already listed (%s); passed over", here / d, real)
                continue
            visited.add(real)
            kept.append(d)
        subdirs[:] = kept
        for name in sorted(files):
            if not is_hidden_name(name):
                yield here / name


def read_gray(path: Path | str) -> np.ndarray:
    """Return the image as a 2-D uint8 array, dark lungs as on a MONOCHROME2 radiograph.

    8-bit files are returned as stored (colour as ITU-R 601 luma, transparency composited on
    black). DICOM goes through its display pipeline (:mod:`deepcovidxr.imaging.dicom`). 16-bit rasters
    (PNG, TIFF) follow one fixed rule, never a per-image min-max stretch, so that an image and
    its 16-bit copy read alike and brightness means the same in every image of a tree:

    1. every value a multiple of 257 (an 8-bit image widened the standard way, as libpng, Pillow,
       OpenCV and ImageMagick do): ``value / 257``, exactly the 8-bit image;
    2. every value a multiple of 256 (an 8-bit image shifted into the high byte): ``value >> 8``;
    3. otherwise the data's bit depth is taken as the smallest of 8, 10, 12, 14 or 16 bits that
       holds the image's maximum, and ``value * 255 / (2**bits - 1)`` is rounded. A 12-bit
       detector image stored in the low bits (0..4095) is scaled by 4095, the same image stored
       in the high bits (x16) by 65535: both read alike (within one grey level). Only an image
       that leaves the top three quarters of its depth unused is taken for a lower depth (and
       then reads brighter than its true depth would show).

    32-bit integer images outside 0..65535 and float images, which have no bit depth, are
    stretched from their own minimum to maximum. :func:`read_gray_info` also says which rule
    (or DICOM window) was used.
    """
    return read_gray_info(path)[0]


def read_view(path: Path | str, size: int) -> np.ndarray:
    """:func:`read_gray` at ``size`` x ``size``: a file of another size is Lanczos-resized (the
    resize stage's rule), though the resize stage normally made it the right size already. The
    dataset-tree reader of training, tuning, pretraining, ensemble fitting and evaluation."""
    gray = read_gray(path)
    return gray if gray.shape == (size, size) else lanczos_resize(gray, size)


def read_gray_info(path: Path | str) -> tuple[np.ndarray, ReadInfo]:
    """:func:`read_gray` and how the stored values became 8-bit (``ReadInfo.window``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise ImageReadError(path, f"cannot read file: {error.strerror or error}") from error
    if size == 0:
        raise EmptyFileError(path, "empty file (0 bytes)")
    if is_dicom(path):
        return read_dicom_gray_info(path)
    return _read_raster(path)


def _read_raster(path: Path) -> tuple[np.ndarray, ReadInfo]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageTooLargeError(path, f"{width}x{height} pixels exceeds the {MAX_PIXELS:,} pixel limit")
                image.load()
                return pil_to_gray_info(image)
    except ImageReadError:
        raise
    except Image.UnidentifiedImageError as error:
        raise UnsupportedFormatError(path, f"not a readable image ({path.suffix or 'no suffix'})") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageTooLargeError(path, f"decompression bomb guard: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(path, f"corrupt or truncated image: {error}") from error


def pil_to_gray_info(image: Image.Image) -> tuple[np.ndarray, ReadInfo]:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy(), ReadInfo("8-bit")
    if mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        values = np.asarray(image)
        if mode == "F" or values.size == 0 or values.min() < 0 or values.max() > 65535:
            return stretch_to_uint8(values.astype(np.float64)), ReadInfo("min-max")
        return wide_to_uint8(values.astype(np.uint32))
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in {"RGBA", "LA", "PA"}:
        # Composite onto black: transparent areas of an exported radiograph are background.
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        image = Image.fromarray(np.round(rgba[..., :3] * alpha).astype(np.uint8), "RGB")
    return np.asarray(image.convert("L"), dtype=np.uint8).copy(), ReadInfo("8-bit")


def wide_to_uint8(values: np.ndarray) -> tuple[np.ndarray, ReadInfo]:
    """Integer data in 0..65535 -> uint8 by the 16-bit rule of :func:`read_gray`."""
    if not np.any(values % 257):
        return (values // 257).astype(np.uint8), ReadInfo("8-bit in 16 (x257)")
    if not np.any(values % 256):
        return (values >> 8).astype(np.uint8), ReadInfo("8-bit in 16 (<<8)")
    top = int(values.max())
    bits = next(b for b in INFERRED_DEPTHS if top < 2**b)
    scaled = np.round(values.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
    return scaled, ReadInfo(f"{bits}-bit")


def write_gray(destination: Path, image: np.ndarray) -> None:
    """Write a gray uint8 image atomically; the format follows the suffix (PNG for DICOM)."""
    with atomic_path(destination) as tmp:
        Image.fromarray(image).save(tmp, format=_pil_format(destination))


def _pil_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}.get(
        suffix, "PNG"
    )


__all__ = [
    "MAX_PIXELS",
    "DecodeError",
    "EmptyFileError",
    "ImageReadError",
    "ImageTooLargeError",
    "ReadInfo",
    "UnsupportedFormatError",
    "is_dicom",
    "is_hidden",
    "is_hidden_name",
    "iter_input_files",
    "list_images",
    "read_gray",
    "read_gray_info",
    "read_view",
    "stretch_to_uint8",
    "write_gray",
]
