"""build_dataset.py: labels table -> seeded patient-wise split -> each image decoded and segmented
once -> its four views written under one name; split_manifest.csv is the report and the resume journal.
Images the input check flags are left out (status left_out, the reason in input_check) unless
--keep-flagged.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from deepcovidxr import layout
from deepcovidxr.batch import ERROR, BatchReport
from deepcovidxr.configs import DatasetConfig
from deepcovidxr.cropping import crop_columns, segment_files
from deepcovidxr.dataset import LEFT_OUT, MANIFEST_COLUMNS, patient_split, read_labels
from deepcovidxr.imageio import write_gray
from deepcovidxr.input_check import OK
from deepcovidxr.layout import CropMode, DataTree
from deepcovidxr.lungs.cropper import LungCropper, locate
from deepcovidxr.reports import QcCollector, QcItem, write_qc_montage
from deepcovidxr.stages.common import StageResult
from deepcovidxr.views import make_views

log = logging.getLogger(__name__)


def run(config: DatasetConfig, cropper: LungCropper | None = None) -> StageResult:
    rows = read_labels(config.labels)
    splits = patient_split(rows, config.fractions, config.seed)
    tree = DataTree(config.output)
    for directory in tree.leaf_dirs(config.sizes, classes=tuple(sorted({row.label for row in rows}))):
        directory.mkdir(parents=True, exist_ok=True)
    report = BatchReport(config.output / layout.SPLIT_MANIFEST, MANIFEST_COLUMNS, overwrite=config.overwrite)
    planned = {}
    for row in rows:
        split, name = splits[row.file], layout.flat_name(row.file)
        outputs = [tree.class_dir(s, c, split, row.label) / name for s in config.sizes for c in CropMode]
        planned[row.file] = (row, split, name, outputs)
    clashes = layout.collisions({file: item[3] for file, item in planned.items()})
    for file, reason in clashes.items():
        row = planned[file][0]
        report.add({"file": file, "label": row.label, "patient_id": row.patient_id, "status": ERROR, "error": reason})
    todo = [
        (config.images / file, row, split, name)
        for file, (row, split, name, outputs) in planned.items()
        if file not in clashes and not report.finished(file, *outputs)
    ]
    log.info("dataset: %d images of %d patients; %d to do", len(rows), len({r.patient_id for r in rows}), len(todo))

    def base_row(item: tuple) -> dict:
        _, row, split, name = item
        return {
            "file": row.file,
            "label": row.label,
            "patient_id": row.patient_id,
            "split": split.value,
            "name": name,
        }

    def handle(item: tuple, gray: np.ndarray, probability: np.ndarray, check: str) -> tuple[dict, QcItem]:
        _, row, split, name = item
        result = locate(gray, probability)
        if check != OK and not config.keep_flagged:
            row_out = {**base_row(item), **crop_columns(result), "status": LEFT_OUT, "input_check": check}
            return row_out, QcItem.of(row.file, gray, result.square, f"left out: {check}")
        wanted = tuple((size, mode) for size in config.sizes for mode in CropMode)
        for (size, mode), image in make_views(gray, result.square, wanted).items():
            write_gray(tree.class_dir(size, mode, split, row.label) / name, image)
        return {**base_row(item), **crop_columns(result)}, QcItem.of(row.file, gray, result.square, result.status.value)

    def failed(item: tuple, reason: str) -> dict:
        return {**base_row(item), "status": ERROR, "error": reason}

    qc = QcCollector()
    if todo:
        cropper = cropper or LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)
        segment_files(
            todo, cropper, handle, failed, report, qc, workers=config.workers, desc="dataset", pass_check=True
        )
    path = report.close()
    if qc.items:
        write_qc_montage(config.output / layout.QC_MONTAGE, qc.items)
    counts = report.status_counts()
    written = [r for r in report.rows.values() if r["status"] not in (ERROR, LEFT_OUT)]
    split_counts = Counter((r["split"], r["label"]) for r in written)
    log.info("dataset: %s", ", ".join(f"{s}/{lab} {n}" for (s, lab), n in sorted(split_counts.items())))
    left_out = Counter(r["input_check"] for r in report.rows.values() if r["status"] == LEFT_OUT)
    for value, count in sorted(left_out.items()):
        log.warning("dataset: %d image(s) left out by the input check (%s); see %s", count, value, path)
    kept = sum(1 for r in written if r.get("input_check") not in ("", OK))
    if kept:
        log.warning("dataset: %d flagged image(s) kept (--keep-flagged); see %s", kept, path)
    return StageResult(path, counts)
