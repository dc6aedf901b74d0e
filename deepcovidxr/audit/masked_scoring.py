"""The three ways an audit scores every image, with the lung mask of our U-Net:

- ``as_is``: the film as it is;
- ``lungs_only``: every pixel outside the mask replaced by a neutral fill;
- ``lungs_removed``: every pixel inside the mask replaced by the same kind of fill.

The fill (:mod:`deepcovidxr.imaging.masking`) is the mean gray of the pixels kept (``kept``,
default), or of the whole film (``image``): a flat region at the image's own brightness carries no
texture and no edge for a member to read, and moves the film's brightness as little as a constant
can. All three modes use the box and mask the U-Net found on the film as it is (never a box found
on a masked film) and are cut into the members' views the way predict.py cuts them, so the
modes differ by the masking alone. The views of all three go into one store, mode after mode, so
each member is opened once for the three.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.contract.file_report import chunked
from deepcovidxr.imaging import masking
from deepcovidxr.imaging.geometry import Box
from deepcovidxr.imaging.reader import ImageReadError, read_gray
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference.streaming import ViewStore

log = logging.getLogger(__name__)

MODES = ("as_is", "lungs_only", "lungs_removed")


def variants(gray: np.ndarray, mask: np.ndarray, fill: str | float = "kept") -> dict[str, np.ndarray]:
    """The film in each mode (``mask``: bool or 0/255 at the film's shape)."""
    mask = np.asarray(mask).astype(bool)
    return {
        "as_is": gray,
        "lungs_only": masking.lungs_only(gray, mask, fill),
        "lungs_removed": masking.lungs_removed(gray, mask, fill),
    }


@dataclass
class MaskedFilms:
    """What the masking found per image (index into the split): the film's shape, the lung box,
    the mask (packed bits, to keep a large split small in memory), the lungs' share of the film,
    the U-Net's crop status, or the reason the film could not be read."""

    count: int
    shapes: dict[int, tuple[int, int]] = field(default_factory=dict)
    squares: dict[int, Box] = field(default_factory=dict)
    packed: dict[int, np.ndarray] = field(default_factory=dict)
    lung_share: dict[int, float] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def ready(self) -> list[int]:
        """The images read and masked, in order."""
        return sorted(self.shapes)

    def mask(self, index: int) -> np.ndarray:
        """The bool lung mask of image ``index`` at its film's shape."""
        shape = self.shapes[index]
        return np.unpackbits(self.packed[index], count=shape[0] * shape[1]).reshape(shape).astype(bool)


def store_index(mode: str, index: int, count: int) -> int:
    """Where image ``index`` of a split of ``count`` images sits in the store in ``mode``."""
    return MODES.index(mode) * count + index


def mask_films(
    paths: Sequence[Path],
    segment: Callable[[list[np.ndarray]], list],
    store: ViewStore,
    views: tuple,
    fill: str | float = "kept",
    batch_size: int = 16,
    keep: Callable[[int, np.ndarray, object], None] | None = None,
) -> MaskedFilms:
    """Read each film, find its lungs (``segment``: gray films -> :class:`CropResult` per film,
    the lung cropper's ``crop``), and put the views of the three modes in ``store`` (capacity
    three times the films, :func:`store_index`). ``keep(index, gray, crop)``, if given, sees each
    masked film (e.g. to place its Grad-CAM frame). A film that cannot be read is recorded in
    ``errors`` and the rest go on."""
    found = MaskedFilms(len(paths))
    count = len(paths)
    for batch in tqdm(list(chunked(range(count), batch_size)), desc="mask", unit="batch"):
        grays: list[tuple[int, np.ndarray]] = []
        for index in batch:
            try:
                grays.append((index, read_gray(paths[index])))
            except ImageReadError as error:  # one bad film must not stop the audit
                found.errors[index] = error.reason
                log.error("%s: %s", paths[index], error.reason)
        if not grays:
            continue
        for (index, gray), crop in zip(grays, segment([g for _, g in grays]), strict=True):
            height, width = gray.shape
            mask = crop.full_resolution_mask(width, height) > 0
            for mode, film in variants(gray, mask, fill).items():
                store.put(store_index(mode, index, count), make_views(film, crop.square, views))
            found.shapes[index] = (height, width)
            found.squares[index] = crop.square
            found.packed[index] = np.packbits(mask.ravel())
            found.lung_share[index] = masking.mask_share(mask)
            found.status[index] = crop.status.value
            if keep is not None:
                keep(index, gray, crop)
    return found
