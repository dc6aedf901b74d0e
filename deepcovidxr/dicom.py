"""DICOM radiograph -> gray uint8, in the order the standard's display pipeline applies:

modality LUT (rescale slope/intercept) -> VOI LUT, else the header window, else the full range
-> MONOCHROME1 / INVERSE presentation-LUT inversion -> 8 bit.

A last polarity check catches files whose header contradicts their pixels (say, a MONOCHROME2
image relabelled MONOCHROME1): on a frontal chest film the mediastinum is brighter than the lung
fields. When the decoded image clearly shows the reverse, it is flipped and a warning is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr.imageio import (
    MAX_PIXELS,
    DecodeError,
    ImageReadError,
    ImageTooLargeError,
    UnsupportedFormatError,
    stretch_to_uint8,
)

log = logging.getLogger(__name__)

# Both lung bands must be brighter than the central band (mediastinum) by this much, in 0..1
# grey, before a decoded chest image is called inverted. On 866 real radiographs in the
# right polarity the largest value seen was 0.09 (median -0.27, so an inverted one scores +0.27).
POLARITY_MARGIN = 0.12


def read_dicom_gray(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DecodeError(path, f"not a readable DICOM file: {error}") from error
    if "PixelData" not in ds:
        raise UnsupportedFormatError(path, "DICOM file holds no pixel data")
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * columns * frames > MAX_PIXELS:
        raise ImageTooLargeError(path, f"{columns}x{rows}x{frames} pixels exceeds the {MAX_PIXELS:,} pixel limit")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in {"MONOCHROME1", "MONOCHROME2"}:
        raise UnsupportedFormatError(path, f"photometric interpretation {photometric} is not a grey radiograph")
    try:
        pixels = ds.pixel_array
    except Exception as error:  # pydicom raises RuntimeError/ValueError/NotImplementedError per plugin
        detail = " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        raise DecodeError(path, f"cannot decode pixel data ({syntax}): {detail}") from error
    if pixels.ndim == 3:  # multi-frame: the first frame is the radiograph
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise UnsupportedFormatError(path, f"unexpected pixel array shape {pixels.shape}")
    try:
        unit = _display_values(pixels, ds)
    except (ValueError, TypeError, AttributeError, IndexError) as error:
        raise DecodeError(path, f"invalid LUT or window attributes: {error}") from error
    invert = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if invert:
        unit = 1.0 - unit
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part in {"", "CHEST", "THORAX", "LUNG"} and looks_inverted(unit):
        log.warning("%s: pixels look inverted for its header (%s); flipped to dark lungs", path, photometric)
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


def _display_values(pixels: np.ndarray, ds) -> np.ndarray:
    """Apply modality and VOI transforms; return values in [0, 1] (not yet inverted)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        return np.clip(np.asarray(apply_voi(values, ds), dtype=np.float64) / (2**bits - 1), 0.0, 1.0)
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, pydicom_multivalue()) else center)
        width = float(width[0] if isinstance(width, pydicom_multivalue()) else width)
        if width >= 1:
            function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
            if function == "SIGMOID":
                return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
            # DICOM PS3.3 C.11.2.1.2.1, linear window, scaled to [0, 1].
            return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    return stretch_to_uint8(values).astype(np.float64) / 255.0


def pydicom_multivalue() -> type:
    from pydicom.multival import MultiValue

    return MultiValue


def looks_inverted(unit: np.ndarray) -> bool:
    """True when the central vertical band is clearly darker than both lung bands."""
    height, width = unit.shape
    rows = slice(int(0.25 * height), int(0.70 * height))
    center = float(np.median(unit[rows, int(0.45 * width) : int(0.55 * width)]))
    left = float(np.median(unit[rows, int(0.15 * width) : int(0.35 * width)]))
    right = float(np.median(unit[rows, int(0.65 * width) : int(0.85 * width)]))
    return center + POLARITY_MARGIN < min(left, right)


__all__ = ["ImageReadError", "looks_inverted", "read_dicom_gray"]
