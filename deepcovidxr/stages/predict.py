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
import hashlib
import logging
import resource
import threading
import time
from pathlib import Path

import numpy as np

from deepcovidxr import DISCLAIMER
from deepcovidxr.config.stages import PredictConfig
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract import layout
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.file_report import ERROR, digest, file_stamp, stamped
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.reader import iter_input_files
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference import reliability
from deepcovidxr.inference.ensemble import (
    THRESHOLD,
    decision,
    member_columns,
    resolve_ensemble,
    views_of,
    write_csv,
)
from deepcovidxr.inference.streaming import (
    MemberLoader,
    ScoreJournal,
    ViewStore,
    image_seed,
    member_opener,
    score_members,
)
from deepcovidxr.lungs.input_check import OK
from deepcovidxr.lungs.pipeline import segment_files
from deepcovidxr.runtime.engines import default_cache_folder
from deepcovidxr.stages.common import StageResult, ensemble_options, relative_name

log = logging.getLogger(__name__)


PREDICTION_COLUMNS = ["Filenames", "Scores", "Binary pred", "Predictions", "crop_status", "error"]
# Ours, after the original's columns and the members' (scripts reading by position keep working):
# the calibrated probability (binary, when the weights carry a Validation fit), the uncertainty and
# the input check (ok, or why the image was not scored).
TRUST_COLUMNS = ["Probability", "uncertainty", "input_check"]
# Members opened at once in background threads: with OpenVINO/ONNX Runtime the open (hash check,
# compile) is mostly outside the GIL, so two overlap on two cores; one more model in memory.
LOADER_AHEAD = 2


def shard_files(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """Every n-th file of the sorted list, starting at the k-th: deterministic for job arrays."""
    if shard is None:
        return files
    k, n = shard
    if not 1 <= k <= n:
        raise UsageError(f"--shard {k}/{n}: K must be between 1 and N")
    return files[k - 1 :: n]


def resolved_precision(engine: str, precision: str) -> str:
    """``--precision`` as the members run it: auto -> the engine's default (engines.default_precision)."""
    if precision != "auto":
        return precision
    from deepcovidxr.runtime.engines import default_precision

    return default_precision(engine)


def unet_precision(engine: str, precision: str) -> str:
    """The U-Net's precision: the members' fp32/bf16; for int8 (members only) the engine's default.
    On Keras the U-Net keeps its compute policy (auto: mixed bfloat16 on CPUs with native bf16)."""
    if engine == "keras":
        return {"fp32": "float32", "bf16": "mixed"}.get(precision, "auto")
    return precision if precision in ("fp32", "bf16") else resolved_precision(engine, "auto")


def columns(classes: tuple[str, ...], names: list[str]) -> list[str]:
    """predictions.csv's header: the original's binary columns, or for a multi-class ensemble
    p_<class> per class and Predictions (the class name), then one column per member (per member
    and class when multi-class: ``<member>.p_<class>``)."""
    if class_names.is_binary(classes):
        return PREDICTION_COLUMNS + names + TRUST_COLUMNS
    probabilities = [class_names.probability_column(c) for c in classes]
    members = member_columns(names, classes)  # <member>.p_<class>, as evaluate.py and ensemble.py write them
    return ["Filenames", *probabilities, "Predictions", "crop_status", "error", *members, *TRUST_COLUMNS]


class _LazyCropper:
    """The segment loop's cropper, opened on its first batch of readable images (never for an
    input whose files all fail), and starting the member loader at that moment, so the members
    open while the crop runs."""

    def __init__(self, open_cropper, loader: MemberLoader | None, batch_size: int) -> None:
        self._open, self._loader, self.batch_size = open_cropper, loader, batch_size
        self.cropper = None
        self.seconds = 0.0

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        if self.cropper is None:
            if self._loader is not None:
                self._loader.start()
            started = time.perf_counter()
            self.cropper = self._open()
            self.seconds = time.perf_counter() - started
        return self.cropper.probabilities(inputs)


def folder_calibration(
    folder: Path, members: list[tuple[Member, Path]], open_cropper, workers: int, unet: tuple[Path, str]
):
    """int8 calibration from a folder of X-rays: each file is decoded, cropped and viewed like a
    predicted image, lazily (only when a member's quantised export has to be built; a warm cache
    never crops them). The cache key's digest covers the files' names and bytes and the U-Net that
    crops them (``unet``: its file and precision; another U-Net moves the crop views)."""
    from deepcovidxr.runtime.engines import Calibration, file_sha256

    files = [f for f in iter_input_files(folder)]
    if not files:
        raise MissingInputError(f"--calibration {folder}: no files")
    digest = hashlib.sha256(b"views-v1\0")
    digest.update(f"unet {file_sha256(unet[0])} {unet[1]}\0".encode())
    for path in files:
        digest.update(relative_name(path, folder).as_posix().encode() + b"\0" + file_sha256(path).encode())
    views = views_of(members)
    lock = threading.Lock()
    made: dict = {}

    def make(member: Member) -> np.ndarray:
        from deepcovidxr.imaging.preprocess import to_model_input
        from deepcovidxr.lungs.cropper import locate

        with lock:
            if not made:
                images: dict = {view: [] for view in views}

                class Rows:
                    def add(self, row: dict) -> None:
                        if row["status"] == ERROR:
                            log.warning("calibration image skipped: %s", row.get("error"))

                def handle(item, gray, probability):
                    for view, image in make_views(gray, locate(gray, probability).square, views).items():
                        images[view].append(to_model_input(image))
                    return {"status": "ok"}, None

                segment_files(
                    [(f,) for f in files],
                    open_cropper(),
                    handle,
                    lambda item, reason: {"status": ERROR, "error": f"{item[0]}: {reason}"},
                    Rows(),
                    _NoQc(),
                    workers=workers,
                    desc="calibration",
                )
                if not images[views[0]]:
                    raise UsageError(f"--calibration {folder}: none of its {len(files)} files could be read")
                made.update({view: np.stack(arrays) for view, arrays in images.items()})
                log.info("int8 calibration: %d images from %s", len(made[views[0]]), folder)
        return made[(member.size, member.crop)]

    return Calibration(digest.hexdigest(), len(files), make)


class _NoQc:
    def add(self, item) -> None:
        pass


def run(config: PredictConfig) -> StageResult | Path:
    from deepcovidxr.lungs.cropper import LungCropper, default_unet_path, locate
    from deepcovidxr.reports.montage import QcCollector, QcItem

    started = time.perf_counter()
    if config.merge:
        return merge_predictions(list(config.merge), config.output)
    chosen = resolve_ensemble(config.weights, config.ensemble_weights, config.members)
    classes = getattr(chosen, "classes", None) or class_names.common(chosen.members)
    binary = class_names.is_binary(classes)
    # Before any work: a named operating point the weights lack (or hold for other members) is refused.
    cut = reliability.threshold(chosen, config.threshold) if binary else None
    files = shard_files(list(iter_input_files(config.input)), config.shard)
    names = [relative_name(f, config.input).as_posix() for f in files]
    engine, precision = config.engine, resolved_precision(config.engine, config.precision)
    cache = Path(config.engine_cache) if config.engine_cache is not None else None
    log.info(
        "predict: %d files, %d members on %s/%s%s",
        len(files),
        len(chosen.members),
        engine,
        precision,
        f", shard {config.shard[0]}/{config.shard[1]}" if config.shard else "",
    )

    unet = (Path(config.unet) if config.unet else default_unet_path(), unet_precision(engine, precision))

    def open_cropper() -> LungCropper:
        return LungCropper(
            config.unet,
            batch_size=config.batch_size,
            precision=unet[1],
            engine=engine,
            cache_dir=cache if cache is not None else default_cache_folder(config.weights),
        )

    calibration = None
    if precision == "int8":
        if config.calibration is None:
            raise UsageError(
                "--precision int8 needs --calibration DIR: chest X-rays that are not the ones predicted "
                "(e.g. a Validation set); or use --precision fp32/bf16"
            )
        calibration = folder_calibration(config.calibration, chosen.members, open_cropper, config.workers, unet)
    elif config.calibration is not None:
        log.warning("--calibration is used by --precision int8 only; ignored at %s", precision)
    # Checks the engine/precision pair (installed runtime, bf16 CPU, calibration) before any work.
    opener = member_opener(engine, precision, cache, calibration)
    header = columns(classes, chosen.names)
    info = {
        "disclaimer": DISCLAIMER,
        "members": chosen.names,
        "weights": chosen.weights.tolist(),
        "rule": chosen.rule,
        "classes": list(classes),
        "engine": engine,
        "precision": precision,
        "tta": config.tta,
        "threshold": THRESHOLD if binary else None,
        "shard": config.shard,
        "files": len(files),
    }
    status: dict[int, tuple[str, str]] = {}
    checks: dict[int, str] = {}
    flagged: set[int] = set()
    tta_variance: list[np.ndarray] = []
    timings: dict[str, float] = {}
    scored: list[int] = []
    scores = np.zeros((0, len(chosen.members)), np.float64)
    journal = ScoreJournal(
        config.output / layout.PREDICT_JOURNAL, _fingerprint(config, chosen, files, names, unet, info, calibration)
    )
    remaining = [(m, p) for m, p in chosen.members if not journal.has(m)]
    resumed = journal.load_crop() if files and not remaining else None
    if resumed is not None:  # a killed run scored every member: its outputs are all that is left
        log.info("predict: every member was scored by an interrupted run with these files and options")
        status.update({int(i): (v[0], v[1]) for i, v in resumed["status"].items()})
        checks.update({int(i): v for i, v in resumed["checks"].items()})
        flagged.update(resumed["flagged"])
        scored = resumed["scored"]
        if scored:
            scores, _ = score_members(
                None,
                len(scored),
                chosen.members,
                config.batch_size,
                config.tta,
                tta_variance=tta_variance,
                journal=journal,
            )
    if files and resumed is None:
        loader = MemberLoader(remaining, opener, ahead=LOADER_AHEAD)
        store = ViewStore(layout.scratch_dir(config.output), len(files), views_of(chosen.members))
        try:

            class Rows:  # the segment loop's report interface, kept in memory
                def add(self, row: dict) -> None:
                    status[row["index"]] = (row["status"], row.get("error", ""))
                    if row["status"] == ERROR:  # on stderr as well as in the table
                        log.error("%s: %s", names[row["index"]], row.get("error", "failed"))

            def handle(item: tuple, gray: np.ndarray, probability: np.ndarray, check: str) -> tuple[dict, QcItem]:
                _, index = item
                checks[index] = check
                result = locate(gray, probability)
                if check == OK or config.score_flagged:
                    store.put(index, make_views(gray, result.square, views_of(chosen.members)))
                else:
                    flagged.add(index)
                return {"index": index, "status": result.status.value}, QcItem.of(
                    names[index], gray, result.square, result.status.value
                )

            def failed(item: tuple, reason: str) -> dict:
                return {"index": item[1], "status": ERROR, "error": reason}

            cropper = _LazyCropper(open_cropper, loader, config.batch_size)
            crop_start = time.perf_counter()
            segment_files(
                [(f, i) for i, f in enumerate(files)],
                cropper,
                handle,
                failed,
                Rows(),
                QcCollector(limit=0),
                workers=config.workers,
                desc="crop",
                pass_check=True,
            )
            timings.update(crop_s=time.perf_counter() - crop_start, unet_open_s=cropper.seconds)
            del cropper
            scored = [i for i in range(len(files)) if status.get(i, (ERROR, ""))[0] != ERROR and i not in flagged]
            journal.save_crop({"status": status, "checks": checks, "flagged": sorted(flagged), "scored": scored})
            if flagged:
                log.warning(
                    "predict: %d image(s) not scored: the input check flags them (--score-flagged scores them)",
                    len(flagged),
                )
            if scored:
                if len(scored) < len(files):  # failed files leave holes: score the good ones only
                    for array in store.arrays.values():
                        array[: len(scored)] = array[scored]
                seeds = np.array([image_seed(names[i], config.seed) for i in scored], np.int64)
                scores, member_timings = score_members(
                    store,
                    len(scored),
                    chosen.members,
                    config.batch_size,
                    config.tta,
                    seeds,
                    loader=loader,
                    tta_variance=tta_variance,
                    journal=journal,
                )
                timings.update(member_timings)
            else:
                log.info("predict: no readable image; no member opened")
        finally:
            store.close()
    combined = chosen.combine(scores) if len(scored) else np.zeros((0, *(() if binary else (len(classes),))))
    extra = _trust_values(chosen, scores, combined, tta_variance if config.tta else None)
    rows = _rows(names, status, scored, scores, combined, classes, cut, extra, checks, flagged)
    path = write_csv(config.output / layout.PREDICTIONS_CSV, header, rows)
    info["threshold"] = cut
    info["threshold_rule"] = config.threshold if binary else None
    info["calibrated"] = chosen.calibration is not None
    timings["total_s"] = time.perf_counter() - started
    write_json(
        config.output / layout.PREDICTIONS_INFO,
        {**info, "timings": timings, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
    )
    report = _report(config, chosen, header, rows, files, names)
    journal.close()
    status_column = header.index("crop_status")
    errors = sum(1 for r in rows if r[status_column] == ERROR)
    for row in rows:
        if row[status_column] != ERROR:
            print(f"{row[0]}\t{row[1]}\t{row[3]}" if binary else f"{row[0]}\t{row[status_column - 1]}")
    log.info(
        "predict: %d scored, %d not scored (input check), %d errors; %s and %s",
        len(scored),
        len(flagged),
        errors,
        path,
        report,
    )
    return StageResult(path, {"ok": len(rows) - errors, ERROR: errors})


def _fingerprint(
    config: PredictConfig, chosen, files: list[Path], names: list[str], unet, info: dict, calibration
) -> str:
    """What a resumed run must share with the killed one: the files (names, sizes, modification
    times), the ensemble (member files, weights, rule), the crop (U-Net, precision), the engine,
    TTA, seed and what is scored."""
    # stamped: a member or U-Net retrained at the same path is another run, never resumed into
    return digest(
        stamped(
            {
                **ensemble_options(chosen),
                "unet": list(unet),
                "engine": [info["engine"], info["precision"]],
                "calibration": getattr(calibration, "digest", None),
                "tta": config.tta,
                "seed": config.seed,
                "score_flagged": config.score_flagged,
                "files": [[name, file_stamp(path)] for name, path in zip(names, files, strict=True)],
            }
        )
    )


def _trust_values(chosen, scores: np.ndarray, combined: np.ndarray, tta_variance: list | None) -> dict:
    """Per scored image: the calibrated probability (when stored) and the uncertainty."""
    if not len(scores):
        return {"probability": None, "uncertainty": np.zeros(0)}
    variance = tta_variance[0] if tta_variance else None  # reliability.image_uncertainty: evaluate's definition too
    return {
        "probability": reliability.probabilities(chosen, combined),
        "uncertainty": reliability.image_uncertainty(chosen, scores, variance),
    }


def _rows(
    names: list[str],
    status: dict[int, tuple[str, str]],
    scored: list[int],
    scores: np.ndarray,
    combined: np.ndarray,
    classes: tuple[str, ...],
    threshold: float | None,
    extra: dict,
    checks: dict[int, str],
    flagged: set[int],
) -> list[list]:
    binary = class_names.is_binary(classes)
    width = scores.shape[1] * (1 if binary else len(classes)) if scores.ndim > 1 else 0
    position = {index: row for row, index in enumerate(scored)}
    blanks = 3 if binary else len(classes) + 1
    rows = []
    for index, name in enumerate(names):
        crop_status, error = status.get(index, (ERROR, "not processed"))
        check = checks.get(index, "")
        tail = [""] * (len(TRUST_COLUMNS) - 1)
        if index in flagged:
            reason = f"not scored: input check {check} (--score-flagged scores it)"
            rows.append([name, *[""] * blanks, crop_status, reason, *[""] * width, *tail, check])
            continue
        if index not in position:
            rows.append([name, *[""] * blanks, ERROR, error, *[""] * width, *tail, check])
            continue
        row = position[index]
        if binary:
            result = decision(float(combined[row]), threshold)
        else:
            result = [*(f"{p:.6f}" for p in combined[row]), classes[int(np.argmax(combined[row]))]]
        probability = extra["probability"]
        trust_cells = [
            "" if probability is None else f"{probability[row]:.6f}",
            f"{extra['uncertainty'][row]:.6f}",
            check,
        ]
        rows.append([name, *result, crop_status, "", *(f"{s:.6f}" for s in np.ravel(scores[row])), *trust_cells])
    return rows


def _report(config: PredictConfig, chosen, header: list[str], rows: list[list], files, names) -> Path:
    """report.html beside predictions.csv: what was run, the images the input check flagged or that
    failed, the highest scores and the most uncertain with thumbnails (and Grad-CAM overlays when
    --gradcam names a visSample.py output)."""
    from deepcovidxr.reports.page import Failure, ImageRow, write_report

    column = {name: i for i, name in enumerate(header)}
    binary = chosen.binary
    failures, images = [], []
    for path, name, row in zip(files, names, rows, strict=True):
        reason = row[column["error"]]
        if reason or row[column["crop_status"]] == ERROR:
            failures.append(Failure(name, reason or row[column["crop_status"]]))
            continue
        if binary:
            score, prediction = float(row[column["Scores"]]), row[column["Predictions"]]
        else:
            prediction = row[column["Predictions"]]
            score = float(row[column[class_names.probability_column(prediction)]])
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
    return write_report(
        config.output,
        "deepcovidxr predictions",
        config=config.options(),
        members=chosen.names,
        engine=f"{config.engine} {config.precision}",
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
        path = shard / layout.PREDICTIONS_CSV if shard.is_dir() else shard
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
    return write_csv(Path(output) / layout.PREDICTIONS_CSV, header, [rows[k] for k in sorted(rows)])
