"""The crop stage: every image under a folder -> its square lung crop, same relative name.

Decoding runs in a thread pool one batch ahead of the U-Net; writing runs in the same pool
behind it. One row per input file goes to ``<output>/crop_report.csv``.

Every decoded image also gets its :func:`deepcovidxr.lungs.input_check.check` value (``ok`` or why it
does not look like a frontal chest film), from the U-Net map the crop computes anyway: rows carry
it as ``input_check`` (kept by reports with that column), and a ``handle`` that wants to act on it
(leave the image out) asks for it with ``segment_files(..., pass_check=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.contract.file_report import ERROR, BatchReport, chunked
from deepcovidxr.imaging.reader import ImageReadError, ReadInfo, read_gray_info
from deepcovidxr.lungs import input_check, segment
from deepcovidxr.lungs.cropper import CropResult, LungCropper, locate
from deepcovidxr.reports.montage import QcCollector, QcItem

log = logging.getLogger(__name__)


# The window of an image handed over in memory (the Python API): gray uint8 already, nothing mapped.
ARRAY_WINDOW = "array"


def _decode(source: Path | np.ndarray) -> tuple[np.ndarray, np.ndarray, ReadInfo] | ImageReadError:
    try:
        gray, info = (source, ReadInfo(ARRAY_WINDOW)) if isinstance(source, np.ndarray) else read_gray_info(source)
        return gray, segment.unet_input(gray), info
    except ImageReadError as error:
        return error
    except Exception as error:  # a decoder bug must not end the batch either
        name = "array" if isinstance(source, np.ndarray) else source
        return ImageReadError(name, f"{type(error).__name__}: {error}")


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


def segment_files(
    items: list[tuple],
    cropper: LungCropper,
    handle: Callable[[tuple, np.ndarray, np.ndarray], tuple[dict, QcItem]],
    failed: Callable[[tuple, str], dict],
    report: BatchReport,
    qc: QcCollector,
    workers: int = 4,
    desc: str = "segment",
    pass_check: bool = False,
) -> None:
    """Run every item (whose first field is the input path, or a gray uint8 array) through decode ->
    U-Net -> ``handle``.

    Decoding runs in a thread pool one batch ahead of the U-Net and ``handle`` (box rules and
    writing) one batch behind it, so the U-Net is rarely idle. ``handle`` returns the report row
    and a QC thumbnail; unreadable files get ``failed``'s row. Every row gets ``window`` (how the
    pixels were windowed) and ``input_check`` (:func:`input_check.check`); with ``pass_check`` the
    value is also ``handle``'s fourth argument: ``handle(item, gray, probability, input_check)``.
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
                writing.append((item, pool.submit(_with_window, handle, item, gray, probability, info, pass_check)))
            _collect(finished, failed, report, qc, bar)
        _collect(writing, failed, report, qc, bar)


def _with_window(
    handle: Callable, item: tuple, gray: np.ndarray, probability: np.ndarray, info: ReadInfo, pass_check: bool = False
) -> tuple:
    """``handle``'s row with the reader's window and the input check added (kept only by reports
    with those columns)."""
    value = input_check.check(gray, probability, info)
    row, thumbnail = handle(item, gray, probability, value) if pass_check else handle(item, gray, probability)
    return {"window": info.window, "input_check": value, **row}, thumbnail


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


class _NoThumbnails:
    """The QC collector of a crop that keeps no thumbnails."""

    def add(self, item: QcItem | None) -> None:
        pass


def crop_images(
    items: Sequence[tuple],
    cropper,
    keep: Callable[[tuple, np.ndarray, CropResult, str], None],
    workers: int = 4,
    desc: str = "crop",
) -> dict[Hashable, tuple[str, str]]:
    """The in-memory crop of predict.py, the explanation stages and the Python API (nothing is
    written): every item ``(source, key, ...)`` (``source`` a path or a gray uint8 array) is
    decoded, run through ``cropper`` (a :class:`LungCropper`, or anything with its ``batch_size`` and
    ``probabilities``) in batches and located; ``keep(item, gray, crop, input_check)`` takes what the
    caller needs (views, boxes), in the worker threads. Returns every key's (crop status, "") or
    (``error``, why): an unreadable file, or an exception in ``keep``."""
    outcome: dict[Hashable, tuple[str, str]] = {}

    class Outcome:  # segment_files' report interface, kept in memory
        def add(self, row: dict) -> None:
            outcome[row["key"]] = (row["status"], row.get("error", ""))

    def handle(item: tuple, gray: np.ndarray, probability: np.ndarray, check: str) -> tuple[dict, None]:
        crop = locate(gray, probability)
        keep(item, gray, crop, check)
        return {"key": item[1], "status": crop.status.value}, None

    def failed(item: tuple, reason: str) -> dict:
        return {"key": item[1], "status": ERROR, "error": reason}

    segment_files(list(items), cropper, handle, failed, Outcome(), _NoThumbnails(), workers, desc, pass_check=True)
    return outcome
