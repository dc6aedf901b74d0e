"""resize_img.py: every image under a folder resized to size x size with Lanczos, same relative
name, one row per input in resize_report.csv.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from deepcovidxr.config.data_stages import ResizeConfig
from deepcovidxr.contract import layout
from deepcovidxr.contract.file_report import ERROR, BatchReport
from deepcovidxr.errors import UsageError
from deepcovidxr.imaging.reader import ImageReadError, iter_input_files
from deepcovidxr.imaging.resizing import resize_one
from deepcovidxr.stages.common import StageResult, refuse_collisions, relative_name

log = logging.getLogger(__name__)


REPORT_COLUMNS = ["file", "status", "width", "height", "error"]


def run(config: ResizeConfig) -> StageResult:
    if config.size < 8:
        raise UsageError(f"size must be at least 8 pixels, got {config.size}")
    files = list(iter_input_files(config.input))
    report = BatchReport(
        config.output / layout.RESIZE_REPORT, REPORT_COLUMNS, overwrite=config.overwrite, options={"size": config.size}
    )
    planned = {}
    for path in files:
        relative = relative_name(path, config.input)
        planned[relative.as_posix()] = (path, relative, config.output / layout.output_name(relative))
    clashes = refuse_collisions(report, {name: [item[2]] for name, item in planned.items()})
    todo = [
        item
        for name, item in planned.items()
        if name not in clashes and not report.finished(name, item[2], source=item[0])
    ]
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
