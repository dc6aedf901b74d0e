"""predict.py: crop in memory, stream the views through the members model-major, one row per
input in predictions.csv; shards and their merge.
"""

from __future__ import annotations

import csv
import logging
import resource
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER, layout
from deepcovidxr.atomic import write_json
from deepcovidxr.batch import ERROR
from deepcovidxr.configs import PredictConfig
from deepcovidxr.cropping import segment_files
from deepcovidxr.errors import UsageError
from deepcovidxr.imageio import iter_input_files
from deepcovidxr.inference import (
    THRESHOLD,
    decision,
    load_member_file,
    resolve_ensemble,
    views_of,
    write_csv,
)
from deepcovidxr.predictor import MemberLoader, ViewStore, image_seed, score_members
from deepcovidxr.stages.common import StageResult, relative_name
from deepcovidxr.views import make_views

log = logging.getLogger(__name__)


PREDICTION_COLUMNS = ["Filenames", "Scores", "Binary pred", "Predictions", "crop_status", "error"]


def shard_files(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Every n-th file of the sorted list, starting at the k-th: deterministic for job arrays."""
    if shard is None:
        return files
    k, n = shard
    if not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N")
    return files[k - 1 :: n]


def run(config: PredictConfig) -> StageResult | Path:
    from deepcovidxr.lungs.cropper import LungCropper, locate
    from deepcovidxr.reports import QcCollector, QcItem

    if config.merge:
        return merge_predictions(list(config.merge), config.output)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    files = shard_files(list(iter_input_files(config.input)), config.shard)
    names = [relative_name(f, config.input).as_posix() for f in files]
    log.info(
        "predict: %d files, %d members%s",
        len(files),
        len(chosen.members),
        f", shard {config.shard[0]}/{config.shard[1]}" if config.shard else "",
    )
    loader = MemberLoader(chosen.members, load_member_file).start()  # the first member builds while images are cropped
    store = ViewStore(layout.scratch_dir(config.output), len(files), views_of(chosen.members))
    status: dict[int, tuple[str, str]] = {}
    try:

        class Rows:  # the segment loop's report interface, kept in memory
            def add(self, row: dict) -> None:
                status[row["index"]] = (row["status"], row.get("error", ""))

        def handle(item: tuple, gray: np.ndarray, probability: np.ndarray) -> tuple[dict, QcItem]:
            _, index = item
            result = locate(gray, probability)
            store.put(index, make_views(gray, result.square, views_of(chosen.members)))
            return {"index": index, "status": result.status.value}, QcItem.of(
                names[index], gray, result.square, result.status.value
            )

        def failed(item: tuple, reason: str) -> dict:
            return {"index": item[1], "status": ERROR, "error": reason}

        cropper = LungCropper(config.unet, batch_size=config.batch_size, precision=config.precision)
        segment_files(
            [(f, i) for i, f in enumerate(files)],
            cropper,
            handle,
            failed,
            Rows(),
            QcCollector(limit=0),
            workers=config.workers,
            desc="crop",
        )
        del cropper
        seeds = np.array([image_seed(n, config.seed) for n in names], np.int64)
        scores, timings = score_members(
            store, len(files), chosen.members, config.batch_size, config.tta, seeds, loader=loader
        )
    finally:
        store.close()
    ensemble_scores = chosen.combine(scores)
    rows = []
    for index, name in enumerate(names):
        crop_status, error = status.get(index, (ERROR, "not processed"))
        if crop_status == ERROR:
            rows.append([name, "", "", "", crop_status, error, *[""] * len(chosen.members)])
            continue
        rows.append(
            [
                name,
                *decision(float(ensemble_scores[index])),
                crop_status,
                "",
                *(f"{s:.6f}" for s in scores[index]),
            ]
        )
    path = write_csv(config.output / layout.PREDICTIONS_CSV, PREDICTION_COLUMNS + chosen.names, rows)
    write_json(
        config.output / layout.PREDICTIONS_INFO,
        {
            "disclaimer": DISCLAIMER,
            "members": chosen.names,
            "weights": chosen.weights.tolist(),
            "rule": chosen.rule,
            "tta": config.tta,
            "threshold": THRESHOLD,
            "shard": config.shard,
            "files": len(files),
            "timings": timings,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    )
    errors = sum(1 for r in rows if r[4] == ERROR)
    for row in rows:
        if row[4] != ERROR:
            print(f"{row[0]}\t{row[1]}\t{row[3]}")
    log.info("predict: %d scored, %d errors; %s", len(rows) - errors, errors, path)
    return StageResult(path, {"ok": len(rows) - errors, ERROR: errors})


def merge_predictions(shards: list[Path], output: Path) -> Path:
    """Join shard folders' predictions.csv into one, sorted by file name; duplicates are an error."""
    header: list[str] | None = None
    rows: dict[str, list[str]] = {}
    for shard in shards:
        path = shard / layout.PREDICTIONS_CSV if shard.is_dir() else shard
        with path.open(newline="") as handle:
            reader = csv.reader(handle)
            this_header = next(reader)
            if header is not None and this_header != header:
                raise UsageError(f"{path}: columns differ from the first shard's")
            header = this_header
            for row in reader:
                if row[0] in rows:
                    raise UsageError(f"{row[0]} appears in more than one shard")
                rows[row[0]] = row
    if header is None:
        raise UsageError("no shards given")
    return write_csv(Path(output) / layout.PREDICTIONS_CSV, header, [rows[k] for k in sorted(rows)])
