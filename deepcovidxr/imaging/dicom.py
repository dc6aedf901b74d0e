"""DICOM radiograph -> gray uint8, in the order the standard's display pipeline applies:

modality LUT (rescale slope/intercept) -> VOI LUT, else the header window, else the full range
-> MONOCHROME1 / INVERSE presentation-LUT inversion -> 8 bit.

Real exports carry wrong windows: when the VOI LUT or the header window leaves fewer than
``MIN_MIDTONE_FRACTION`` of the pixels between black and white (a window beside the data turns the
film blank, one far too narrow turns it binary), a robust window from the pixels is used instead:
the 1st..99th percentile of the body, the pixels strictly between the image's minimum and maximum
(padding, collimator and saturated background sit at those two values). A warning is logged and
``ReadInfo.window`` says so, for the report rows.

A last polarity check catches files whose header contradicts their pixels (say, a MONOCHROME2
image relabelled MONOCHROME1): on a frontal chest film the mediastinum is brighter than the lung
fields. When the decoded image clearly shows the reverse, it is flipped and a warning is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr.imaging.pixels import (
    MAX_PIXELS,
    DecodeError,
    ImageTooLargeError,
    ReadInfo,
    UnsupportedFormatError,
    stretch_to_uint8,
)

log = logging.getLogger(__name__)

# Both lung bands must be brighter than the central band (mediastinum) by this much, in 0..1
# grey, before a decoded chest image is called inverted. On 866 real radiographs in the
# right polarity the largest value seen was 0.09 (median -0.27, so an inverted one scores +0.27).
POLARITY_MARGIN = 0.12

# A header window that leaves fewer pixels than this strictly between black and white (after
# rounding to 8 bits) missed the data. Even a film with wide black borders and a burnt-out
# background keeps well over half of its pixels in the mid-tones.
MIN_MIDTONE_FRACTION = 0.05
# The robust window: these percentiles of the body (pixels strictly between the minimum and the
# maximum), when the body holds at least BODY_MIN_FRACTION of the pixels; else of all pixels.
ROBUST_PERCENTILES = (1.0, 99.0)
BODY_MIN_FRACTION = 0.01


def read_dicom_gray(path: Path) -> np.ndarray:
    return read_dicom_gray_info(path)[0]


def read_dicom_gray_info(path: Path) -> tuple[np.ndarray, ReadInfo]:
    """The displayed radiograph as uint8 and the window it was displayed with."""
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
        unit, window = _display_values(pixels, ds)
    except (ValueError, TypeError, AttributeError, IndexError) as error:
        raise DecodeError(path, f"invalid LUT or window attributes: {error}") from error
    if window != "full_range" and missed_the_pixels(unit):
        fallback = f"robust ({'VOI LUT' if window == 'voi_lut' else 'header window'} missed the pixels)"
        log.warning(
            "%s: its %s maps %.1f %% of the pixels to black or white; displayed with a window from the pixels instead",
            path,
            "VOI LUT" if window == "voi_lut" else f"window {_header_window(ds)}",
            100.0 * (1.0 - midtone_fraction(unit)),
        )
        unit, window = robust_window(_modality_values(pixels, ds)), fallback
    invert = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    if invert:
        unit = 1.0 - unit
    body_part = str(ds.get("BodyPartExamined", "")).upper()
    if body_part in {"", "CHEST", "THORAX", "LUNG"} and looks_inverted(unit):
        log.warning("%s: pixels look inverted for its header (%s); flipped to dark lungs", path, photometric)
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8), ReadInfo(window)


def _modality_values(pixels: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)


def _header_window(ds) -> str:
    return f"{ds.get('WindowCenter')}/{ds.get('WindowWidth')}"


def _display_values(pixels: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """Apply modality and VOI transforms; return values in [0, 1] (not yet inverted) and which
    transform was used (``voi_lut``, ``header`` or ``full_range``)."""
    from pydicom.pixels import apply_voi

    values = _modality_values(pixels, ds)
    if "VOILUTSequence" in ds:
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2])
        # A LUT is indexed by stored values: pydicom wants integers (floats only warn and may misindex).
        lookup = values.astype(np.int64) if np.array_equal(values, np.round(values)) else values
        return np.clip(np.asarray(apply_voi(lookup, ds), dtype=np.float64) / (2**bits - 1), 0.0, 1.0), "voi_lut"
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        center = float(center[0] if isinstance(center, pydicom_multivalue()) else center)
        width = float(width[0] if isinstance(width, pydicom_multivalue()) else width)
        if width >= 1:
            function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
            if function == "SIGMOID":
                return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width)), "header"
            # DICOM PS3.3 C.11.2.1.2.1, linear window, scaled to [0, 1].
            return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0), "header"
    return stretch_to_uint8(values).astype(np.float64) / 255.0, "full_range"


def midtone_fraction(unit: np.ndarray) -> float:
    """Fraction of the pixels that display neither black nor white at 8 bits."""
    levels = np.round(unit * 255.0)
    return float(np.mean((levels > 0) & (levels < 255)))


def missed_the_pixels(unit: np.ndarray) -> bool:
    return midtone_fraction(unit) < MIN_MIDTONE_FRACTION


def robust_window(values: np.ndarray) -> np.ndarray:
    """Values -> [0, 1] through a linear window over the body's 1st..99th percentile (see the
    module docstring); the full range when that window is empty."""
    body = values[(values > values.min()) & (values < values.max())]
    if body.size < BODY_MIN_FRACTION * values.size:
        body = values.ravel()
    low, high = (float(v) for v in np.percentile(body, ROBUST_PERCENTILES))
    if high <= low:
        return stretch_to_uint8(values).astype(np.float64) / 255.0
    return np.clip((values - low) / (high - low), 0.0, 1.0)


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


__all__ = ["looks_inverted", "read_dicom_gray", "read_dicom_gray_info", "robust_window"]
