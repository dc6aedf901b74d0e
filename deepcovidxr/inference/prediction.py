"""One prediction in memory, shared by predict.py and the Python API (:class:`deepcovidxr.Predictor`),
so an image scores the same either way.

:class:`Prediction` settles everything before an image is read: the ensemble (members, weights,
rule, classes, stored calibration), the operating point, the engine and precision of the members
and of the lung U-Net, int8 calibration, and predictions.csv's columns. For a list of images
(paths or gray arrays) it then crops them in memory into a :class:`ViewStore`
(:meth:`Prediction.crop`: the U-Net opens on the first readable batch and starts the member loader
at that moment), scores the views model-major (:meth:`Prediction.score`) and makes the rows
(:meth:`Prediction.table`: the ensemble's combination, the calibrated probability, the
uncertainty, the input check). What stays in the stage is what touches files: the input listing,
shards and their merge, the resume journal, the CSV, the info file and the report page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from deepcovidxr.config.options import DEFAULT_ENGINE, default_workers
from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.file_report import ERROR
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.reader import iter_input_files
from deepcovidxr.imaging.views import make_views
from deepcovidxr.inference import reliability
from deepcovidxr.inference.ensemble import resolve_ensemble, views_of
from deepcovidxr.inference.streaming import (
    MemberLoader,
    ScoreJournal,
    ViewStore,
    image_seed,
    member_opener,
    score_members,
)
from deepcovidxr.lungs.input_check import OK
from deepcovidxr.lungs.pipeline import crop_images
from deepcovidxr.runtime.cache import default_cache_folder
from deepcovidxr.runtime.precision import for_engine
from deepcovidxr.scoring.task import task_for

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ["Filenames", "Scores", "Binary pred", "Predictions", "crop_status", "error"]
# Ours, after the original's columns and the members' (scripts reading by position keep working):
# the calibrated probability (binary, when the weights carry a Validation fit), the uncertainty and
# the input check (ok, or why the image was not scored).
TRUST_COLUMNS = ["Probability", "uncertainty", "input_check"]
# The columns holding text; every other column holds a number (or nothing).
TEXT_COLUMNS = frozenset({"Filenames", "Predictions", "crop_status", "error", "input_check"})
# Members opened at once in background threads: with OpenVINO/ONNX Runtime the open (hash check,
# compile) is mostly outside the GIL, so two overlap on two cores; one more model in memory.
LOADER_AHEAD = 2


@dataclass(frozen=True)
class PredictOptions:
    """What shapes a prediction's scores and columns: predict.py's flags of the same names
    (``weights`` is the members folder, ``members`` a subset of it, ``threshold`` a number or a
    stored operating point: youden, sens90, sens95)."""

    weights: Path
    ensemble_weights: Path | None = None
    members: tuple[str, ...] = ()
    unet: Path | None = None
    batch_size: int = 16
    engine: str = DEFAULT_ENGINE
    precision: str = "auto"
    calibration: Path | None = None
    engine_cache: Path | None = None
    tta: int = 0
    threshold: str | float = "0.5"
    score_flagged: bool = False
    seed: int = 0
    workers: int = field(default_factory=default_workers)

    @classmethod
    def of(cls, config) -> PredictOptions:
        """The options of a config that has these fields (predict.py's ``PredictConfig``)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def columns(classes: tuple[str, ...], names: list[str]) -> list[str]:
    """predictions.csv's header: the task's result columns (the original's binary ``Scores``,
    ``Binary pred``, ``Predictions``, or ``p_<class>`` per class and ``Predictions``), then one
    column per member (per member and class when multi-class: ``<member>.p_<class>``, as evaluate.py
    and ensemble.py write them)."""
    task = task_for(classes)
    return ["Filenames", *task.decision_columns, "crop_status", "error", *task.member_columns(names), *TRUST_COLUMNS]


class LazyCropper:
    """The segment loop's cropper, opened on its first batch of readable images (never for an
    input whose files all fail), and starting the member loader at that moment, so the members
    open while the crop runs."""

    def __init__(self, open_cropper: Callable, loader: MemberLoader | None, batch_size: int) -> None:
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
    from deepcovidxr.runtime.digest import file_sha256
    from deepcovidxr.runtime.int8 import files_calibration

    files = list(iter_input_files(folder))
    if not files:
        raise MissingInputError(f"--calibration {folder}: no files")
    named = [((path.relative_to(folder) if folder.is_dir() else Path(path.name)).as_posix(), path) for path in files]
    views = views_of(members)
    lock = threading.Lock()
    made: dict = {}

    def member_views(member: Member) -> list[np.ndarray]:
        with lock:
            if not made:
                viewed: dict[int, dict] = {}

                def keep(item: tuple, gray: np.ndarray, crop, check: str) -> None:
                    viewed[item[1]] = make_views(gray, crop.square, views)

                outcome = crop_images(
                    [(f, i) for i, f in enumerate(files)], open_cropper(), keep, workers, "calibration"
                )
                for index, (status, error) in sorted(outcome.items()):
                    if status == ERROR:
                        log.warning("calibration image skipped: %s: %s", files[index], error)
                if not viewed:
                    raise UsageError(f"--calibration {folder}: none of its {len(files)} files could be read")
                made.update({view: [viewed[i][view] for i in sorted(viewed)] for view in views})
                log.info("int8 calibration: %d images from %s", len(viewed), folder)
        return made[(member.size, member.crop)]

    return files_calibration(f"views-v1\0unet {file_sha256(unet[0])} {unet[1]}\0", named, member_views)


@dataclass
class Crop:
    """What the crop found, by image index: (crop status, error), the input check, the images the
    input check kept from scoring (``flagged``) and those scored, in order (``scored``)."""

    status: dict[int, tuple[str, str]] = field(default_factory=dict)
    checks: dict[int, str] = field(default_factory=dict)
    flagged: set[int] = field(default_factory=set)
    scored: list[int] = field(default_factory=list)

    def state(self) -> dict:
        """As JSON (the resume journal keeps it)."""
        return {"status": self.status, "checks": self.checks, "flagged": sorted(self.flagged), "scored": self.scored}

    @classmethod
    def from_state(cls, state: dict) -> Crop:
        return cls(
            {int(i): (v[0], v[1]) for i, v in state["status"].items()},
            {int(i): v for i, v in state["checks"].items()},
            set(state["flagged"]),
            list(state["scored"]),
        )


@dataclass(frozen=True)
class PredictionTable:
    """predictions.csv as values: ``rows`` hold str, int (Binary pred), float or None (blank)."""

    header: list[str]
    rows: list[list]

    def csv_rows(self) -> list[list[str]]:
        """The rows as predictions.csv writes them: numbers at six decimals, blanks empty."""
        return [[_cell(value) for value in row] for row in self.rows]

    @property
    def errors(self) -> int:
        status = self.header.index("crop_status")
        return sum(1 for row in self.rows if row[status] == ERROR)

    def frame(self):
        """A pandas DataFrame with predictions.csv's columns: text columns as str ("" for blank),
        ``Binary pred`` as nullable Int64, every other column float64 (NaN for blank), at full
        precision (the CSV rounds to six decimals)."""
        import pandas as pd

        data = {}
        for position, name in enumerate(self.header):
            values = [row[position] for row in self.rows]
            if name in TEXT_COLUMNS:
                data[name] = pd.Series(["" if v is None else str(v) for v in values], dtype=object)
            elif name == "Binary pred":
                data[name] = pd.Series(values, dtype="Int64")
            else:
                data[name] = pd.Series([np.nan if v is None else v for v in values], dtype=np.float64)
        return pd.DataFrame(data, columns=self.header)


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


class Prediction:
    """The ensemble, engine and columns of one prediction (see the module docstring). Everything
    that can refuse the options does so here, before any image is read: a member file missing, a
    named operating point the weights lack, an engine not installed, int8 without calibration."""

    def __init__(self, options: PredictOptions) -> None:
        self.options = options
        self.chosen = resolve_ensemble(options.weights, options.ensemble_weights, tuple(options.members))
        self.classes = tuple(getattr(self.chosen, "classes", None) or class_names.common(self.chosen.members))
        self.task = task_for(self.classes)
        self.threshold = reliability.threshold(self.chosen, options.threshold)  # None: the argmax
        # The one resolution of --precision: the members', the U-Net's beside them, the cache's.
        self.policy = for_engine(options.precision, options.engine)
        self.engine, self.precision = options.engine, self.policy.engine_precision
        self.cache = Path(options.engine_cache) if options.engine_cache is not None else None
        self.views = views_of(self.chosen.members)
        self.header = columns(self.classes, self.chosen.names)
        from deepcovidxr.lungs.cropper import default_unet_path

        self.unet = (
            Path(options.unet) if options.unet else default_unet_path(),
            self.policy.unet_precision,
        )
        self.calibration = None
        if self.precision == "int8":
            if options.calibration is None:
                raise UsageError(
                    "--precision int8 needs --calibration DIR: chest X-rays that are not the ones predicted "
                    "(e.g. a Validation set); or use --precision fp32/bf16"
                )
            self.calibration = folder_calibration(
                Path(options.calibration), self.chosen.members, self.open_cropper, options.workers, self.unet
            )
        elif options.calibration is not None:
            log.warning("--calibration is used by --precision int8 only; ignored at %s", self.precision)
        # Checks the engine/precision pair (installed runtime, bf16 CPU, calibration) before any work.
        self.opener = member_opener(self.engine, self.policy, self.cache, self.calibration)

    def open_cropper(self):
        """The lung U-Net on the members' engine (exports cached beside the members)."""
        from deepcovidxr.lungs.cropper import LungCropper

        cache = self.cache if self.cache is not None else default_cache_folder(self.options.weights)
        return LungCropper(
            self.options.unet,
            batch_size=self.options.batch_size,
            precision=self.policy,
            engine=self.engine,
            cache_dir=cache,
        )

    def loader(self, members: list[tuple[Member, Path]] | None = None) -> MemberLoader:
        """Opens ``members`` (default all) ahead of use; nothing until started."""
        return MemberLoader(self.chosen.members if members is None else members, self.opener, ahead=LOADER_AHEAD)

    def crop(
        self,
        sources: Sequence[Path | np.ndarray],
        names: Sequence[str],
        store: ViewStore,
        loader: MemberLoader | None = None,
        score_flagged: bool | None = None,
        keep: Callable | None = None,
        cropper=None,
    ) -> tuple[Crop, dict[str, float]]:
        """Crop every source (a path, or a gray uint8 array) and put the views of those to score in
        ``store`` at their index; an image the input check flags is left out unless
        ``score_flagged`` (default: the options'). ``keep(index, gray, crop)``, if given, sees
        every cropped image (e.g. its box). ``cropper``: an open U-Net (a Ray actor keeps one for
        all its batches); default: opened on the first readable batch. Returns the crop and its
        timings."""
        score_flagged = self.options.score_flagged if score_flagged is None else score_flagged
        found = Crop()

        def views(item: tuple, gray: np.ndarray, crop, check: str) -> None:
            index = item[1]
            found.checks[index] = check
            if check == OK or score_flagged:
                store.put(index, make_views(gray, crop.square, self.views))
            else:
                found.flagged.add(index)
            if keep is not None:
                keep(index, gray, crop)

        lazy = LazyCropper(self.open_cropper, loader, self.options.batch_size)
        started = time.perf_counter()
        items = [(source, index) for index, source in enumerate(sources)]
        found.status = crop_images(items, cropper or lazy, views, self.options.workers)
        timings = {"crop_s": time.perf_counter() - started, "unet_open_s": lazy.seconds}
        for index, (status, error) in sorted(found.status.items()):
            if status == ERROR:  # on stderr as well as in the table
                log.error("%s: %s", names[index], error or "failed")
        found.scored = [
            i for i in range(len(sources)) if found.status.get(i, (ERROR, ""))[0] != ERROR and i not in found.flagged
        ]
        if found.flagged:
            log.warning(
                "predict: %d image(s) not scored: the input check flags them (--score-flagged scores them)",
                len(found.flagged),
            )
        return found, timings

    def score(
        self,
        store: ViewStore | None,
        crop: Crop,
        names: Sequence[str],
        loader: MemberLoader | None = None,
        journal: ScoreJournal | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
        """The members over the scored images, model-major: (scores, the TTA variance with ``tta``
        else None, timings). ``store`` None: every member is read back from ``journal``."""
        if not crop.scored:
            log.info("predict: no readable image; no member opened")
            return np.zeros((0, len(self.chosen.members)), np.float64), None, {}
        if store is not None and len(crop.scored) < len(names):  # failed files leave holes: score the good ones only
            for array in store.arrays.values():
                array[: len(crop.scored)] = array[crop.scored]
        seeds = np.array([image_seed(names[i], self.options.seed) for i in crop.scored], np.int64)
        variance: list[np.ndarray] = []
        scores, timings = score_members(
            store,
            len(crop.scored),
            self.chosen.members,
            self.options.batch_size,
            self.options.tta,
            seeds,
            loader=loader,
            tta_variance=variance,
            journal=journal,
        )
        return scores, variance[0] if self.options.tta and variance else None, timings

    def table(
        self, names: Sequence[str], crop: Crop, scores: np.ndarray, variance: np.ndarray | None
    ) -> PredictionTable:
        """predictions.csv's rows, one per name, in order."""
        empty = np.zeros((0, *self.task.score_shape))
        combined = self.chosen.combine(scores) if len(crop.scored) else empty
        probability, spread = None, np.zeros(0)
        if len(scores):  # reliability.image_uncertainty: evaluate's definition too
            probability = reliability.probabilities(self.chosen, combined)
            spread = reliability.image_uncertainty(self.chosen, scores, variance)
        width = len(self.task.member_columns(self.chosen.names)) if scores.ndim > 1 else 0
        position = {index: row for row, index in enumerate(crop.scored)}
        blanks, members, tail = [None] * len(self.task.decision_columns), [None] * width, [None, None]
        rows = []
        for index, name in enumerate(names):
            crop_status, error = crop.status.get(index, (ERROR, "not processed"))
            check = crop.checks.get(index, "")
            if index in crop.flagged:
                reason = f"not scored: input check {check} (--score-flagged scores it)"
                rows.append([name, *blanks, crop_status, reason, *members, *tail, check])
                continue
            if index not in position:
                rows.append([name, *blanks, ERROR, error, *members, *tail, check])
                continue
            row = position[index]
            result = self.task.decision_cells(combined[row], self.threshold)
            trust = [None if probability is None else float(probability[row]), float(spread[row]), check]
            rows.append([name, *result, crop_status, "", *map(float, np.ravel(scores[row])), *trust])
        return PredictionTable(self.header, rows)
