"""What the raster reader (:mod:`deepcovidxr.imaging.reader`) and the DICOM reader (:mod:`deepcovidxr.imaging.dicom`)
share: the typed read errors, the pixel limit, the record of how a file's values became 8-bit, and
the min-max stretch. Its own module so that neither reader imports the other's internals (imageio
dispatches to dicom; dicom needs only what is here).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Larger than any radiograph (a 43x43 cm detector at 100 um is 18 MP); stops decompression bombs
# before their pixels are allocated.
MAX_PIXELS = 80_000_000


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


@dataclass(frozen=True)
class ReadInfo:
    """How a file's stored values were mapped to 0..255; ``window`` goes into report rows.

    Rasters: ``8-bit``; ``8-bit in 16 (x257)`` / ``8-bit in 16 (<<8)`` for an 8-bit image widened
    to 16 bits; ``<N>-bit`` for other 16-bit data (N inferred, see :func:`deepcovidxr.imaging.reader.read_gray`);
    ``min-max`` for 32-bit integer and float data. DICOM: ``voi_lut``, ``header`` (WindowCenter /
    WindowWidth), ``full_range``, or ``robust (... missed the pixels)`` when the header's VOI LUT or
    window mapped nearly every pixel to black or white and a window from the pixels was used instead.
    """

    window: str

    @property
    def fallback(self) -> bool:
        return self.window.startswith("robust")


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max stretch to 0..255 (a constant image becomes all zeros)."""
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
