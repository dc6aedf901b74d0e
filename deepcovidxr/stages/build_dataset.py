"""build_dataset.py: labels table -> seeded patient-wise split -> each image decoded and segmented
once -> its four views written under one name; split_manifest.csv is the report and the resume journal.
Images the input check flags are left out (status left_out, the reason in input_check) unless
--keep-flagged.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from deepcovidxr.config.data_stages import DatasetConfig
from deepcovidxr.contract import layout
from deepcovidxr.contract.file_report import ERROR, BatchReport, stamped
from deepcovidxr.contract.layout import CropMode, DataTree, Split
from deepcovidxr.data.dataset import LEFT_OUT, MANIFEST_COLUMNS, patient_split, read_labels
from deepcovidxr.errors import UsageError
from deepcovidxr.imaging.reader import write_gray
from deepcovidxr.imaging.views import make_views
from deepcovidxr.lungs.cropper import LungCropper, locate
from deepcovidxr.lungs.input_check import OK
from deepcovidxr.lungs.pipeline import crop_columns, segment_files
from deepcovidxr.reports.montage import QcCollector, QcItem, write_qc_montage
from deepcovidxr.stages.common import StageResult, crop_options

log = logging.getLogger(__name__)


def run(config: DatasetConfig, cropper: LungCropper | None = None) -> StageResult:
    rows = read_labels(config.labels)
    tree = DataTree(config.output)
    options = {**crop_options(config), "sizes": config.sizes, "keep_flagged": config.keep_flagged}
    split_rule = {"seed": config.seed, "fractions": config.fractions}
    report = BatchReport(
        config.output / layout.SPLIT_MANIFEST,
        MANIFEST_COLUMNS,
        overwrite=config.overwrite,
        options=options | split_rule,
    )
    recorded = report.recorded_rows()
    splits = patient_split(rows, config.fractions, config.seed, _pinned(report, recorded, split_rule))
    planned = {}
    for row in rows:
        split, name = splits[row.file], layout.flat_name(row.file)
        outputs = [tree.class_dir(s, c, split, row.label) / name for s in config.sizes for c in CropMode]
        planned[row.file] = (row, split, name, outputs)
    _remove_stale(tree, {path for *_, outputs in planned.values() for path in outputs}, recorded)
    for directory in tree.leaf_dirs(config.sizes, classes=tuple(sorted({row.label for row in rows}))):
        directory.mkdir(parents=True, exist_ok=True)
    clashes = layout.collisions({file: item[3] for file, item in planned.items()})
    for file, reason in clashes.items():
        row = planned[file][0]
        report.add({**_identity(row), "status": ERROR, "error": reason})
    todo = [
        (config.images / file, row, split, name)
        for file, (row, split, name, outputs) in planned.items()
        if file not in clashes
        and not report.finished(file, *outputs, source=config.images / file, extra=_decided_by(row, split, name))
    ]
    log.info("dataset: %d images of %d patients; %d to do", len(rows), len({r.patient_id for r in rows}), len(todo))

    def base_row(item: tuple) -> dict:
        _, row, split, name = item
        return {**_identity(row), "split": split.value, "name": name}

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
    for file, row in report.rows.items():  # a film now unreadable or left out keeps no views of an earlier run
        if row["status"] in (ERROR, LEFT_OUT) and file in planned:
            for output in planned[file][3]:
                output.unlink(missing_ok=True)
    if qc.items:
        write_qc_montage(config.output / layout.QC_MONTAGE, qc.items)
    _log_outcome(report, path)
    return StageResult(path, report.status_counts())


def _identity(row) -> dict:
    """The labels table's columns of ``row`` in the manifest."""
    return {"file": row.file, "label": row.label, "patient_id": row.patient_id, "site": row.site}


def _decided_by(row, split: Split, name: str) -> list:
    """What besides the file and the options decides a manifest row; the site only when given, so
    a table without sites keeps the fingerprints of trees built before sites were read."""
    return [row.label, split, name, *([row.site] if row.site else [])]


def _log_outcome(report: BatchReport, path: Path) -> None:
    """The images per split and class, and those the input check left out or ``--keep-flagged`` kept."""
    written = [r for r in report.rows.values() if r["status"] not in (ERROR, LEFT_OUT)]
    split_counts = Counter((r["split"], r["label"]) for r in written)
    log.info("dataset: %s", ", ".join(f"{s}/{lab} {n}" for (s, lab), n in sorted(split_counts.items())))
    left_out = Counter(r["input_check"] for r in report.rows.values() if r["status"] == LEFT_OUT)
    for value, count in sorted(left_out.items()):
        log.warning("dataset: %d image(s) left out by the input check (%s); see %s", count, value, path)
    kept = sum(1 for r in written if r.get("input_check") not in ("", OK))
    if kept:
        log.warning("dataset: %d flagged image(s) kept (--keep-flagged); see %s", kept, path)


def _pinned(report: BatchReport, recorded: dict[str, dict], split_rule: dict) -> dict[str, Split]:
    """The patients an earlier run into this folder split under the same seed and fractions keep
    their split (see :func:`dataset.patient_split`); another rule re-draws every patient."""
    previous = report.previous_options or {}
    if {k: previous.get(k) for k in split_rule} != stamped(split_rule):
        return {}
    return {row["patient_id"]: Split(row["split"]) for row in recorded.values() if row.get("split")}


def _remove_stale(tree: DataTree, expected: set[Path], recorded: dict[str, dict]) -> None:
    """Make the tree hold what this run's manifest lists and nothing else: images an earlier run
    wrote (its manifest names them) that are not at this run's place for them (another split,
    label, size or name) are removed, so no image sits in two splits; an image no manifest names
    was put there by someone else, and the run refuses before anything is touched."""
    splits = {split.value for split in Split}
    on_disk = {  # <size>/<crop>/<split>/<class>/<image>
        path
        for path in tree.root.glob("*/*/*/*/*")
        if path.is_file()
        and path.relative_to(tree.root).parts[0].isdigit()
        and path.relative_to(tree.root).parts[2] in splits
    }
    stale = on_disk - expected
    if not stale:
        return
    ours = {row["name"] for row in recorded.values() if row.get("name")}
    strangers = sorted(p for p in stale if p.name not in ours)
    if strangers:
        listed = ", ".join(str(p.relative_to(tree.root)) for p in strangers[:5])
        more = f" and {len(strangers) - 5} more" if len(strangers) > 5 else ""
        raise UsageError(
            f"{tree.root} holds {len(strangers)} image(s) that {layout.SPLIT_MANIFEST} does not list ({listed}{more}): "
            "a tree is rebuilt only from its own manifest; move them away or choose another -o"
        )
    for path in stale:
        path.unlink()
    log.warning(
        "dataset: removed %d image file(s) an earlier run wrote where this run's split, labels or sizes no "
        "longer put them (so no image sits in two splits)",
        len(stale),
    )
