"""The crop stage: every image under a folder -> its square lung crop, same relative name.

Decoding runs in a thread pool one batch ahead of the U-Net; writing runs in the same pool
behind it. One row per input file goes to ``<output>/crop_report.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr import layout
from deepcovidxr.batch import ERROR, BatchReport, chunked
from deepcovidxr.config import ensure_outside
from deepcovidxr.configs import CropConfig
from deepcovidxr.imageio import ImageReadError, ReadInfo, iter_input_files, read_gray_info, write_gray
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.cropper import CropResult, LungCropper, locate
from deepcovidxr.reports import QcCollector, QcItem, write_qc_montage
from deepcovidxr.stages.common import StageResult, refuse_collisions, relative_name

log = logging.getLogger(__name__)

# window: how the file's values became 8-bit (imageio.ReadInfo.window), e.g. a DICOM's header
# window, or "robust (...)" when that window missed the pixels.
REPORT_COLUMNS = ["file", "status", "x0", "y0", "x1", "y1", "lung_fraction", "window", "error"]


def crop_outputs(relative: Path, config: CropConfig) -> list[Path]:
    """The image files this stage writes for one input (the square crop first)."""
    name = layout.output_name(relative)
    if config.legacy_names:
        tight, square = layout.legacy_crop_names(name)
        return [config.output / square, config.output / tight]
    return [config.output / name]


def mask_output(relative: Path, config: CropConfig) -> Path | None:
    return None if config.save_masks is None else config.save_masks / layout.png_name(relative)


def _decode(path: Path) -> tuple[np.ndarray, np.ndarray, ReadInfo] | ImageReadError:
    try:
        gray, info = read_gray_info(path)
        return gray, segment.unet_input(gray), info
    except ImageReadError as error:
        return error
    except Exception as error:  # a decoder bug must not end the batch either
        return ImageReadError(path, f"{type(error).__name__}: {error}")


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


def crop_columns(result: CropResult) -> dict:
    """The report columns every cropping stage writes: status, square box, lung fraction."""
    box = result.square
    return {
        "status": result.status.value,
        "x0": box.x0,
        "y0": box.y0,
        "x1": box.x1,
        "y1": box.y1,
        "lung_fraction": f"{result.lung.lung_fraction:.4f}",
        "error": "",
    }


def run_crop(config: CropConfig, cropper: LungCropper | None = None) -> StageResult:
    ensure_outside(config.input, config.output, config.save_masks)
    root = config.input
    files = list(iter_input_files(root))
    report = BatchReport(config.output / layout.CROP_REPORT, REPORT_COLUMNS, overwrite=config.overwrite)
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
        if name not in clashes and not report.finished(name, *outputs)
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
    return StageResult(path, counts)


def segment_files(
    items: list[tuple],
    cropper: LungCropper,
    handle: Callable[[tuple, np.ndarray, np.ndarray], tuple[dict, QcItem]],
    failed: Callable[[tuple, str], dict],
    report: BatchReport,
    qc: QcCollector,
    workers: int = 4,
    desc: str = "segment",
) -> None:
    """Run every item (whose first field is the input path) through decode -> U-Net -> ``handle``.

    Decoding runs in a thread pool one batch ahead of the U-Net and ``handle`` (box rules and
    writing) one batch behind it, so the U-Net is rarely idle. ``handle`` returns the report row
    and a QC thumbnail; unreadable files get ``failed``'s row.
    """
    chunks = list(chunked(items, cropper.batch_size))
    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(items), desc=desc, unit="img") as bar:
        pending = [pool.submit(_decode, item[0]) for item in chunks[0]] if chunks else []
        writing: list[tuple[tuple, Future]] = []
        for index, chunk in enumerate(chunks):
            decoded = [f.result() for f in pending]
            if index + 1 < len(chunks):
                pending = [pool.submit(_decode, item[0]) for item in chunks[index + 1]]
            good = []
            for item, result in zip(chunk, decoded, strict=True):
                if isinstance(result, ImageReadError):
                    report.add(failed(item, result.reason))
                    bar.update()
                else:
                    good.append((item, *result))
            probabilities = cropper.probabilities(np.stack([g[2] for g in good])) if good else []
            finished, writing = writing, []
            for (item, gray, _, info), probability in zip(good, probabilities, strict=True):
                writing.append((item, pool.submit(_with_window, handle, item, gray, probability, info)))
            _collect(finished, failed, report, qc, bar)
        _collect(writing, failed, report, qc, bar)


def _with_window(handle: Callable, item: tuple, gray: np.ndarray, probability: np.ndarray, info: ReadInfo) -> tuple:
    """``handle``'s row with the reader's window added (kept only by reports with that column)."""
    row, thumbnail = handle(item, gray, probability)
    return {"window": info.window, **row}, thumbnail


def _collect(
    writing: list[tuple[tuple, Future]], failed: Callable, report: BatchReport, qc: QcCollector, bar: tqdm
) -> None:
    for item, future in writing:
        try:
            row, thumbnail = future.result()
            qc.add(thumbnail)
        except Exception as error:  # disk full, permission denied, a geometry bug: record it and go on
            row = failed(item, f"{type(error).__name__}: {error}")
        report.add(row)
        bar.update()
