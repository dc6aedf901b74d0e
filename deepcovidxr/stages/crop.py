"""crop_img.py: every image under a folder -> its square lung crop (same relative name), its
mask with --save-masks, one row per input in crop_report.csv and a QC montage.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from deepcovidxr.config.data_stages import CropConfig
from deepcovidxr.contract import layout
from deepcovidxr.contract.file_report import ERROR, BatchReport
from deepcovidxr.imaging.reader import iter_input_files, write_gray
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.cropper import LungCropper, locate
from deepcovidxr.lungs.input_check import OK
from deepcovidxr.lungs.pipeline import crop_columns, segment_files
from deepcovidxr.reports.montage import QcCollector, QcItem, write_qc_montage
from deepcovidxr.stages.common import StageResult, crop_options, refuse_collisions, relative_name

log = logging.getLogger(__name__)


# window: how the file's values became 8-bit (imageio.ReadInfo.window), e.g. a DICOM's header
# window, or "robust (...)" when that window missed the pixels. input_check: "ok" or why the image
# does not look like a frontal chest film (input_check.VALUES); flagged images are still cropped.
REPORT_COLUMNS = ["file", "status", "x0", "y0", "x1", "y1", "lung_fraction", "input_check", "window", "error"]


def crop_outputs(relative: Path, config: CropConfig) -> list[Path]:
    """The image files this stage writes for one input (the square crop first)."""
    name = layout.output_name(relative)
    if config.legacy_names:
        tight, square = layout.legacy_crop_names(name)
        return [config.output / square, config.output / tight]
    return [config.output / name]


def mask_output(relative: Path, config: CropConfig) -> Path | None:
    return None if config.save_masks is None else config.save_masks / layout.png_name(relative)


def _locate_and_write(
    relative: Path, gray: np.ndarray, probability: np.ndarray, config: CropConfig
) -> tuple[dict, QcItem]:
    result = locate(gray, probability)
    outputs = crop_outputs(relative, config)
    write_gray(outputs[0], result.square.crop(gray))
    if config.legacy_names:
        write_gray(outputs[1], result.tight.crop(gray))
    mask_path = mask_output(relative, config)
    if mask_path is not None:
        write_gray(mask_path, result.full_resolution_mask(gray.shape[1], gray.shape[0]))
    row = {"file": relative.as_posix(), **crop_columns(result)}
    return row, QcItem.of(relative.as_posix(), gray, result.square, result.status.value)


def run(config: CropConfig, cropper: LungCropper | None = None) -> StageResult:
    root = config.input
    files = list(iter_input_files(root))
    report = BatchReport(
        config.output / layout.CROP_REPORT, REPORT_COLUMNS, overwrite=config.overwrite, options=crop_options(config)
    )
    planned = {}
    for path in files:
        relative = relative_name(path, root)
        mask_path = mask_output(relative, config)
        planned[relative.as_posix()] = (
            path,
            relative,
            [*crop_outputs(relative, config), *([mask_path] if mask_path else [])],
        )
    clashes = refuse_collisions(report, {name: outputs for name, (_, _, outputs) in planned.items()})
    todo = [
        (path, relative)
        for name, (path, relative, outputs) in planned.items()
        if name not in clashes and not report.finished(name, *outputs, source=path)
    ]
    log.info("crop: %d files, %d already done, %d to do", len(files), len(files) - len(todo), len(todo))
    qc = QcCollector()
    if todo:
        cropper = cropper or LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)

        def handle(item: tuple[Path, Path], gray: np.ndarray, probability: np.ndarray) -> tuple[dict, QcItem]:
            return _locate_and_write(item[1], gray, probability, config)

        def failed(item: tuple[Path, Path], reason: str) -> dict:
            return {"file": item[1].as_posix(), "status": ERROR, "error": reason}

        segment_files(todo, cropper, handle, failed, report, qc, workers=config.workers, desc="crop")
    path = report.close()
    if config.qc_montage and qc.items:
        write_qc_montage(config.output / layout.QC_MONTAGE, qc.items)
    counts = report.status_counts()
    log.info("crop: %s; report %s", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), path)
    for status in (segment.CropStatus.FALLBACK.value, segment.CropStatus.ONE_LUNG.value):
        if counts.get(status):
            log.warning("crop: %d image(s) with status %s; see %s", counts[status], status, path)
    flagged = Counter(r["input_check"] for r in report.rows.values() if r.get("input_check") not in ("", OK))
    for value, count in sorted(flagged.items()):
        log.warning("crop: %d image(s) flagged by the input check as %s; see %s", count, value, path)
    return StageResult(path, counts)
