"""Pictures a person opens, drawn with OpenCV: the crop QC montage and the view strip (matplotlib
figures are in :mod:`deepcovidxr.reports.plots`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.imaging.geometry import Box

THUMB = 192
STATUS_COLOURS = {"ok": (60, 200, 60), "one_lung": (0, 200, 255), "fallback": (40, 40, 230)}  # BGR


@dataclass(frozen=True)
class QcItem:
    name: str
    thumbnail: np.ndarray  # THUMB x THUMB gray uint8
    box: Box  # in the original image's pixels
    shape: tuple[int, int]  # original (height, width)
    status: str

    @classmethod
    def of(cls, name: str, gray: np.ndarray, box: Box, status: str) -> QcItem:
        interpolation = cv2.INTER_AREA if min(gray.shape) > THUMB else cv2.INTER_LINEAR
        return cls(name, cv2.resize(gray, (THUMB, THUMB), interpolation=interpolation), box, gray.shape, status)


@dataclass
class QcCollector:
    """Keeps at most ``limit`` items for the montage: every non-ok crop first, then ok ones."""

    limit: int = 48
    items: list[QcItem] = field(default_factory=list)

    def add(self, item: QcItem) -> None:
        if len(self.items) < self.limit:
            self.items.append(item)
            return
        if item.status != "ok":
            for index, kept in enumerate(self.items):
                if kept.status == "ok":
                    self.items[index] = item
                    return


def write_qc_montage(destination: Path, items: list[QcItem], columns: int = 8) -> Path:
    """A grid of thumbnails with the square crop box drawn (green ok, orange one lung, red
    fallback) and the file name under each; non-ok images come first."""
    items = sorted(items, key=lambda i: (i.status == "ok", i.name))
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    label_height = 18
    canvas = np.full((rows * (THUMB + label_height), columns * THUMB, 3), 255, np.uint8)
    for index, item in enumerate(items):
        row, column = divmod(index, columns)
        top, left = row * (THUMB + label_height), column * THUMB
        tile = cv2.cvtColor(item.thumbnail, cv2.COLOR_GRAY2BGR)
        sy, sx = THUMB / item.shape[0], THUMB / item.shape[1]
        colour = STATUS_COLOURS.get(item.status, (255, 0, 255))
        cv2.rectangle(
            tile,
            (int(item.box.x0 * sx), int(item.box.y0 * sy)),
            (int(item.box.x1 * sx) - 1, int(item.box.y1 * sy) - 1),
            colour,
            2,
        )
        canvas[top : top + THUMB, left : left + THUMB] = tile
        caption = item.name if len(item.name) <= 26 else "..." + item.name[-23:]
        cv2.putText(
            canvas, caption, (left + 3, top + THUMB + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA
        )
    with atomic_path(destination) as tmp:
        cv2.imwrite(str(tmp), canvas)
    return destination


def write_view_strip(destination: Path, rows: list[list[Path]], titles: list[str], tile: int = 160) -> Path:
    """One row per image, one column per view (e.g. 224 uncrop, 224 crop, 331 uncrop, 331 crop)."""
    header = 22
    canvas = np.full((header + max(1, len(rows)) * tile, len(titles) * tile, 3), 255, np.uint8)
    for column, title in enumerate(titles):
        cv2.putText(canvas, title, (column * tile + 6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    for row, paths in enumerate(rows):
        for column, path in enumerate(paths):
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                continue
            thumb = cv2.resize(image, (tile - 4, tile - 4), interpolation=cv2.INTER_AREA)
            top, left = header + row * tile + 2, column * tile + 2
            canvas[top : top + tile - 4, left : left + tile - 4] = thumb[..., None]
    with atomic_path(destination) as tmp:
        cv2.imwrite(str(tmp), canvas)
    return destination
