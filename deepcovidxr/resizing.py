"""The resize stage: every image under a folder -> size x size Lanczos copy, same relative name.

Gray stays gray and RGB stays RGB (other modes become gray); DICOM input is written as PNG.
JPEGs are re-encoded at quality 95 rather than Pillow's default 75.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from deepcovidxr import layout
from deepcovidxr.atomic import atomic_path
from deepcovidxr.batch import ERROR, BatchReport
from deepcovidxr.config import ensure_outside
from deepcovidxr.configs import ResizeConfig
from deepcovidxr.errors import UsageError
from deepcovidxr.imageio import MAX_PIXELS, ImageReadError, is_dicom, iter_input_files, read_gray
from deepcovidxr.preprocess import lanczos_resize
from deepcovidxr.stages.common import StageResult, refuse_collisions, relative_name

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["file", "status", "width", "height", "error"]


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


def run_resize(config: ResizeConfig) -> StageResult:
    if config.size < 8:
        raise UsageError(f"size must be at least 8 pixels, got {config.size}")
    ensure_outside(config.input, config.output)
    files = list(iter_input_files(config.input))
    report = BatchReport(config.output / layout.RESIZE_REPORT, REPORT_COLUMNS, overwrite=config.overwrite)
    planned = {}
    for path in files:
        relative = relative_name(path, config.input)
        planned[relative.as_posix()] = (path, relative, config.output / layout.output_name(relative))
    clashes = refuse_collisions(report, {name: [item[2]] for name, item in planned.items()})
    todo = [item for name, item in planned.items() if name not in clashes and not report.finished(name, item[2])]
    log.info("resize to %d: %d files, %d already done", config.size, len(files), len(files) - len(todo))

    def work(item: tuple[Path, Path, Path]) -> dict:
        path, relative, destination = item
        try:
            row = resize_one(path, destination, config.size)
        except ImageReadError as error:
            row = {"status": ERROR, "error": error.reason}
        except Exception as error:  # decoder or disk failure: record it and go on
            row = {"status": ERROR, "error": f"{type(error).__name__}: {error}"}
        return {"file": relative.as_posix(), **row}

    with ThreadPoolExecutor(max(1, config.workers)) as pool:
        for row in tqdm(pool.map(work, todo), total=len(todo), desc=f"resize {config.size}", unit="img"):
            report.add(row)
    path = report.close()
    counts = report.status_counts()
    log.info("resize: %s; report %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), path)
    return StageResult(path, counts)
