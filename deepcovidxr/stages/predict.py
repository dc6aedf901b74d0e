"""predict.py: crop in memory, stream the views through the members model-major, one row per
input in predictions.csv; shards and their merge.

Engines (``--engine``/``--precision``): the members and, on ONNX Runtime / OpenVINO, the lung U-Net
run from exports cached beside the members, so a warm start imports no TensorFlow. Nothing is
opened that the run does not need: an empty input (or one whose every file failed) writes the CSV
header and returns before the U-Net or any member is opened, and member opening starts with the
U-Net's first batch, overlapping the rest of the crop.
"""

from __future__ import annotations

import csv
import logging
import resource
import time
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.config.inference_stages import PredictConfig
from deepcovidxr.contract import layout, run_paths
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.file_report import ERROR, digest, file_stamp, stamped
from deepcovidxr.errors import UsageError
from deepcovidxr.imaging.reader import iter_input_files
from deepcovidxr.inference.ensemble import write_csv
from deepcovidxr.inference.prediction import Crop, Prediction, PredictOptions
from deepcovidxr.inference.streaming import ScoreJournal, ViewStore
from deepcovidxr.stages.common import StageResult, ensemble_options, refuse_missing_ray, relative_name, report_page

log = logging.getLogger(__name__)


def shard_files(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Every n-th file of the sorted list, starting at the k-th: deterministic for job arrays."""
    if shard is None:
        return files
    k, n = shard
    if not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N")
    return files[k - 1 :: n]


def run(config: PredictConfig) -> StageResult:
    """List the input (this shard of it), score it through :class:`Prediction` (resuming a killed
    run from its journal), write predictions.csv, predictions_info.json and report.html."""
    started = time.perf_counter()
    if config.merge:
        return StageResult(merge_predictions(list(config.merge), config.output), {})
    # Before any work: Ray missing, a named operating point the weights lack, an engine not installed, ...
    refuse_missing_ray(config)
    prediction = Prediction(PredictOptions.of(config))
    files = shard_files(list(iter_input_files(config.input)), config.shard)
    names = [relative_name(f, config.input).as_posix() for f in files]
    log.info(
        "predict: %d files, %d members on %s/%s%s",
        len(files),
        len(prediction.chosen.members),
        prediction.engine,
        prediction.precision,
        f", shard {config.shard[0]}/{config.shard[1]}" if config.shard else "",
    )
    info = _info(config, prediction, len(files))
    fingerprint = _fingerprint(config, prediction, files, names, info)
    if config.backend == "ray":  # the same crop and scores from a Ray Data dataflow (docs/distributed.md)
        from deepcovidxr.inference.ray_scoring import RayScoring, score_files
        from deepcovidxr.inference.row_journal import RowJournal

        journal = RowJournal(config.output / run_paths.PREDICT_ROWS, fingerprint)
        crop, scores, variance, timings = score_files(prediction, files, names, journal, RayScoring.of(config))
    else:
        journal = ScoreJournal(config.output / run_paths.PREDICT_JOURNAL, fingerprint)
        crop, scores, variance, timings = _scores(config, prediction, files, names, journal)
    table = prediction.table(names, crop, scores, variance)
    rows = table.csv_rows()
    path = write_csv(config.output / run_paths.PREDICTIONS_CSV, table.header, rows)
    timings["total_s"] = time.perf_counter() - started
    write_json(
        config.output / run_paths.PREDICTIONS_INFO,
        {**info, "timings": timings, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    )
    report = _report(config, prediction.chosen, table.header, rows, files, names)
    journal.close()
    status_column = table.header.index("crop_status")
    printed = [table.header.index(name) for name in prediction.task.printed_columns]
    for row in rows:  # the results, on stdout
        if row[status_column] != ERROR:
            print("\t".join([row[0], *(row[i] for i in printed)]))
    log.info(
        "predict: %d scored, %d not scored (input check), %d errors; %s and %s",
        len(crop.scored),
        len(crop.flagged),
        table.errors,
        path,
        report,
    )
    return StageResult(path, {"ok": len(rows) - table.errors, ERROR: table.errors})


def _scores(
    config: PredictConfig, prediction: Prediction, files: list[Path], names: list[str], journal: ScoreJournal
) -> tuple[Crop, np.ndarray, np.ndarray | None, dict[str, float]]:
    """The crop and the members' scores: read back from ``journal`` when a killed run scored every
    member, else cropped into a scratch ViewStore and scored, each member kept in the journal."""
    members = prediction.chosen.members
    remaining = [(m, p) for m, p in members if not journal.has(m)]
    resumed = journal.load_crop() if files and not remaining else None
    if resumed is not None:  # a killed run scored every member: its outputs are all that is left
        log.info("predict: every member was scored by an interrupted run with these files and options")
        crop = Crop.from_state(resumed)
        return crop, *prediction.score(None, crop, names, journal=journal)
    if not files:
        return Crop(), np.zeros((0, len(members)), np.float64), None, {}
    loader = prediction.loader(remaining)
    store = ViewStore(run_paths.scratch_dir(config.output), len(files), prediction.views)
    try:
        crop, timings = prediction.crop(files, names, store, loader)
        journal.save_crop(crop.state())
        scores, variance, member_timings = prediction.score(store, crop, names, loader, journal)
    finally:
        store.close()
    return crop, scores, variance, {**timings, **member_timings}


def _info(config: PredictConfig, prediction: Prediction, files: int) -> dict:
    """predictions_info.json without the timings: what was run on how many files."""
    chosen = prediction.chosen
    return {
        "disclaimer": DISCLAIMER,
        "members": chosen.names,
        "weights": chosen.weights.tolist(),
        "rule": chosen.rule,
        "classes": list(prediction.classes),
        "engine": prediction.engine,
        "precision": prediction.precision,
        "tta": config.tta,
        "threshold": prediction.threshold,
        "shard": config.shard,
        "files": files,
        "threshold_rule": None if prediction.threshold is None else config.threshold,
        "calibrated": chosen.calibration is not None,
    }


def _fingerprint(config: PredictConfig, prediction: Prediction, files: list[Path], names: list[str], info: dict) -> str:
    """What a resumed run must share with the killed one: the files (names, sizes, modification
    times), the ensemble (member files, weights, rule), the crop (U-Net, precision), the engine,
    TTA, seed and what is scored."""
    # stamped: a member or U-Net retrained at the same path is another run, never resumed into
    return digest(
        stamped(
            {
                **ensemble_options(prediction.chosen),
                "unet": list(prediction.unet),
                "engine": [info["engine"], info["precision"]],
                "calibration": getattr(prediction.calibration, "digest", None),
                "tta": config.tta,
                "seed": config.seed,
                "score_flagged": config.score_flagged,
                "files": [[name, file_stamp(path)] for name, path in zip(names, files, strict=True)],
            }
        )
    )


def _report(config: PredictConfig, chosen, header: list[str], rows: list[list], files, names) -> Path:
    """report.html beside predictions.csv: what was run, the images the input check flagged or that
    failed, the highest scores and the most uncertain with thumbnails (and Grad-CAM overlays when
    --gradcam names a visSample.py output)."""
    from deepcovidxr.reports.page import Failure, ImageRow

    column = {name: i for i, name in enumerate(header)}
    failures, images = [], []
    for path, name, row in zip(files, names, rows, strict=True):
        reason = row[column["error"]]
        if reason or row[column["crop_status"]] == ERROR:
            failures.append(Failure(name, reason or row[column["crop_status"]]))
            continue
        prediction = row[column["Predictions"]]
        score = float(row[column[chosen.task.score_column(prediction)]])
        overlay = None
        if config.gradcam is not None:
            candidate = Path(config.gradcam) / layout.gradcam_names(Path(name))[0]
            overlay = candidate if candidate.is_file() else None
        images.append(
            ImageRow(
                name,
                path,
                score=score,
                uncertainty=float(row[column["uncertainty"]]),
                prediction=prediction,
                overlay=overlay,
                extra={"input_check": row[column["input_check"]]},
            )
        )
    return report_page(
        config.output,
        "deepcovidxr predictions",
        config,
        chosen,
        failures=failures,
        images=images,
        limit=config.report_limit,
        notes=[
            f"{len(images)} images scored, {len(failures)} not scored (input check or unreadable). "
            "Scores rank images; they are not diagnoses."
        ],
    )


def merge_predictions(shards: list[Path], output: Path) -> Path:
    """Join shard folders' predictions.csv into one, sorted by file name; duplicates are an error."""
    header: list[str] | None = None
    rows: dict[str, list[str]] = {}
    for shard in shards:
        path = shard / run_paths.PREDICTIONS_CSV if shard.is_dir() else shard
        with path.open(newline="", encoding="utf-8") as handle:
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
    return write_csv(Path(output) / run_paths.PREDICTIONS_CSV, header, [rows[k] for k in sorted(rows)])
