"""predict.py and evaluate.py on Ray (``--backend ray``): one Ray Data dataflow per run,

    file list -> CPU step: read, input check, crop, views -> scoring actors -> rows to the driver

- predict's CPU step is a pool of CPU actors (:class:`CropViews`), each opening the lung U-Net once
  and cropping its batches through :meth:`Prediction.crop`, the local backend's crop (reader, input
  check, box rules, views); evaluate's is a task per batch reading the tree's views
  (:meth:`SplitListing.read`, the local backend's read).
- :class:`ScoreViews`: ``--ray-workers`` actors with ``--gpus-per-worker`` GPUs each, holding every
  member opened through the engine layer (``--engine``/``--precision``: the local backend's
  :func:`member_opener`) and scoring each batch with :func:`member_scores` (TTA seeded by image
  name, so a score does not depend on the batch or the actor an image lands in).
- the driver takes the batches of rows as they come (predict journals each one:
  :class:`RowJournal`) and assembles the arrays the local backend makes (:class:`Crop`, scores,
  TTA variance), so predictions.csv, the report and the metrics come from the same code.

A worker that dies is restarted by Ray Data and its batch run again (its actor pools default to
``max_restarts=-1`` and ``max_task_retries=-1``); rows are keyed by index, so a batch delivered
twice counts once, and an index that never came back is an error, never a silent gap.
Exports (ONNX Runtime, OpenVINO) are built on the driver before the dataflow starts, so the
actors only open cached files. The input, members and output must be at the same paths on every
node (a shared filesystem); only the views travel through Ray's object store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepcovidxr.contract.file_report import ERROR
from deepcovidxr.contract.layout import Member, Split
from deepcovidxr.errors import UsageError
from deepcovidxr.imaging.views import View
from deepcovidxr.inference.ensemble import EngineChoice, Ensemble, SplitImages, SplitListing, list_split
from deepcovidxr.inference.prediction import LOADER_AHEAD, Crop, LazyCropper, Prediction, PredictOptions
from deepcovidxr.inference.row_journal import RowJournal, split_rows
from deepcovidxr.inference.streaming import MemberLoader, ViewStore, image_seed, member_scores
from deepcovidxr.runtime.ray_cluster import RayCluster, connected, default_gpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayScoring:
    """Where and how wide the dataflow runs: the cluster, the scoring actors, their GPUs (None:
    1 when the cluster has GPUs, else 0)."""

    cluster: RayCluster = field(default_factory=RayCluster)
    workers: int = 1
    gpus_per_worker: float | None = None

    @classmethod
    def of(cls, config) -> RayScoring:
        return cls(RayCluster.of(config), config.ray_workers, config.gpus_per_worker)


@dataclass(frozen=True)
class MemberSpec:
    """What a scoring actor opens and how it scores (sent to every actor, so plain data): the
    members, one image's score shape, the batch size, TTA and seed, and either predict's options
    (:class:`Prediction` makes the opener) or evaluate's :class:`EngineChoice`."""

    members: tuple[tuple[Member, Path], ...]
    score_shape: tuple[int, ...]
    batch_size: int
    tta: int = 0
    seed: int = 0
    predict: PredictOptions | None = None
    engine: EngineChoice | None = None

    def opener(self) -> Callable:
        if self.predict is not None:
            return Prediction(self.predict).opener
        return (self.engine or EngineChoice()).opener(list(self.members))


def view_column(view: View) -> str:
    return f"view_{view[0]}_{view[1].value}"


class BatchViews(ViewStore):
    """A :class:`ViewStore` of one batch in memory: the views go to the scoring actors through
    Ray's object store, not through files."""

    def __init__(self, capacity: int, views: tuple[View, ...]) -> None:  # no scratch folder
        self.arrays = {view: np.zeros((capacity, view[0], view[0]), np.uint8) for view in views}

    def columns(self) -> dict[str, np.ndarray]:
        return {view_column(view): array for view, array in self.arrays.items()}


class CropViews:
    """predict's CPU step, one actor: the local backend's crop of each batch of files, the U-Net
    opened on the first readable batch and kept for the next."""

    def __init__(self, options: PredictOptions) -> None:
        self.prediction = Prediction(options)
        self.cropper = LazyCropper(self.prediction.open_cropper, None, options.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["index"])
        store = BatchViews(count, self.prediction.views)
        paths, names = [Path(str(p)) for p in batch["path"]], [str(n) for n in batch["name"]]
        crop, _ = self.prediction.crop(paths, names, store, cropper=self.cropper)
        scored = set(crop.scored)
        status = [crop.status.get(i, (ERROR, "not processed")) for i in range(count)]
        return {
            "index": batch["index"],
            "name": batch["name"],
            "status": np.array([s for s, _ in status]),
            "error": np.array([e for _, e in status]),
            "check": np.array([crop.checks.get(i, "") for i in range(count)]),
            "flagged": np.array([i in crop.flagged for i in range(count)]),
            "score": np.array([i in scored for i in range(count)]),
            **store.columns(),
        }


def read_tree_views(batch: dict[str, np.ndarray], listing: SplitListing) -> dict[str, np.ndarray]:
    """evaluate's CPU step, one task per batch: every view of each image of the tree."""
    count = len(batch["index"])
    store = BatchViews(count, tuple(listing.folders))
    errors = []
    for position, name in enumerate(batch["name"]):
        views, reason = listing.read(str(name))
        errors.append(reason)
        if not reason:
            store.put(position, views)
    return {
        "index": batch["index"],
        "name": batch["name"],
        "status": np.array([ERROR if e else "ok" for e in errors]),
        "error": np.array(errors),
        "check": np.array([""] * count),
        "flagged": np.zeros(count, bool),
        "score": np.array([not e for e in errors]),
        **store.columns(),
    }


class ScoreViews:
    """A scoring actor: every member, opened in a background thread from the start (while the
    first batches are cropped) and kept; each batch's scored rows through every member."""

    def __init__(self, spec: MemberSpec) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.spec = spec
        self.models: list | None = None
        loader = MemberLoader(list(spec.members), spec.opener(), ahead=LOADER_AHEAD)
        self._opening = ThreadPoolExecutor(1).submit(list, loader)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec, count = self.spec, len(batch["index"])
        chosen = np.flatnonzero(batch["score"])
        shape = (count, len(spec.members), *spec.score_shape)
        scores, variance = np.full(shape, np.nan), np.full(shape, np.nan)
        if chosen.size:
            if self.models is None:
                self.models = self._opening.result()
            seeds = np.array([image_seed(str(batch["name"][i]), spec.seed) for i in chosen], np.int64)
            columns, variances = [], []
            for member, model in self.models:
                images = batch[view_column((member.size, member.crop))][chosen]
                columns.append(member_scores(model, images, spec.batch_size, spec.tta, seeds, variance=variances))
            scores[chosen], variance[chosen] = np.stack(columns, axis=1), np.stack(variances, axis=1)
        kept = {name: values for name, values in batch.items() if not name.startswith("view_")}
        return {**kept, "scores": scores, "variance": variance}


def _resources(ray, scoring: RayScoring) -> tuple[float, float, int]:
    """(CPUs per actor or task, GPUs per scoring actor, most CPU-step actors). The scoring actors
    and at least one CPU step always fit together, also on a machine with fewer CPUs than
    actors + 1 (Ray's CPU count is a scheduling share, not a pinned core)."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    gpus = default_gpus(ray, scoring.gpus_per_worker)
    available = float(ray.cluster_resources().get("GPU", 0))
    if gpus * scoring.workers > available:
        raise UsageError(
            f"--ray-workers {scoring.workers} with --gpus-per-worker {gpus:g} need {gpus * scoring.workers:g} GPUs; "
            f"the Ray cluster has {available:g}"
        )
    share = min(1.0, cpus / (scoring.workers + 1))
    return share, gpus, max(1, int((cpus - scoring.workers * share) / share + 1e-9))


def _stream(ray, items: list[dict], step, step_args: dict, spec: MemberSpec, scoring: RayScoring, on_rows) -> None:
    """Build and drain the dataflow: ``step`` (a class: an actor pool; a function: tasks, with
    ``step_args`` as keywords) feeding the scoring actors; ``on_rows(batch)`` as batches arrive."""
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False  # our log says what runs; stderr stays readable
    share, gpus, spare = _resources(ray, scoring)
    log.info(
        "ray: %d files; CPU step %s; %d scoring actor(s), %g GPU(s) and %.2g CPU each",
        len(items),
        f"on up to {spare} actor(s)" if isinstance(step, type) else "as tasks",
        scoring.workers,
        gpus,
        share,
    )
    common = {"batch_size": spec.batch_size, "batch_format": "numpy", "num_cpus": share}
    data = ray.data.from_items(items)
    if isinstance(step, type):
        data = data.map_batches(
            step, fn_constructor_kwargs=step_args, compute=ActorPoolStrategy(min_size=1, max_size=spare), **common
        )
    else:
        data = data.map_batches(step, fn_kwargs=step_args, **common)
    scorers = ActorPoolStrategy(size=scoring.workers)
    data = data.map_batches(ScoreViews, fn_constructor_args=(spec,), compute=scorers, num_gpus=gpus, **common)
    for batch in data.iter_batches(batch_size=None, batch_format="numpy"):
        on_rows(batch)


def _prepare(opener: Callable, members: list[tuple[Member, Path]]) -> None:
    """A cold engine cache filled here, once, rather than by every actor at the same time."""
    prepare = getattr(opener, "prepare", None)
    if prepare is not None:
        prepare(members)


def _collector(rows: dict[int, dict], journal: RowJournal | None = None) -> Callable[[dict[str, np.ndarray]], None]:
    """What takes each batch as it arrives: journaled first (when there is a journal), then its
    rows kept by index; a batch Ray ran twice counts once."""

    def arrived(batch: dict[str, np.ndarray]) -> None:
        if journal is not None:
            journal.add(batch)
        for index, row in split_rows(batch).items():
            rows.setdefault(index, row)

    return arrived


def _complete(rows: dict[int, dict], count: int) -> None:
    missing = [i for i in range(count) if i not in rows]
    if missing:
        raise RuntimeError(f"ray: {len(missing)} of {count} rows never came back (first index {missing[0]})")


def score_files(
    prediction: Prediction, files: list[Path], names: list[str], journal: RowJournal, scoring: RayScoring
) -> tuple[Crop, np.ndarray, np.ndarray | None, dict[str, float]]:
    """predict's crop and scores on Ray, as :meth:`Prediction.crop` and :meth:`Prediction.score`
    give them locally. Rows an interrupted run journaled are read back; the rest are scored and
    journaled batch by batch as they arrive."""
    started = time.perf_counter()
    rows = journal.rows()
    pending = [i for i in range(len(files)) if i not in rows]
    if rows:
        log.info("predict: %d of %d rows were finished by an interrupted run with these options", len(rows), len(files))
    options = prediction.options
    members = tuple(prediction.chosen.members)
    shape = prediction.task.score_shape
    spec = MemberSpec(members, shape, options.batch_size, options.tta, options.seed, predict=options)
    if pending:
        _prepare(prediction.opener, prediction.chosen.members)
        items = [{"index": i, "path": str(files[i]), "name": names[i]} for i in pending]
        with connected(scoring.cluster) as ray:
            _stream(ray, items, CropViews, {"options": options}, spec, scoring, _collector(rows, journal))
    _complete(rows, len(files))
    crop = Crop()
    for index in range(len(files)):
        row = rows[index]
        crop.status[index] = (str(row["status"]), str(row["error"]))
        if str(row["check"]):
            crop.checks[index] = str(row["check"])
        if bool(row["flagged"]):
            crop.flagged.add(index)
        if bool(row["score"]):
            crop.scored.append(index)
    if not crop.scored:
        return crop, np.zeros((0, len(spec.members)), np.float64), None, {}
    scores = np.stack([rows[i]["scores"] for i in crop.scored])
    variance = np.stack([rows[i]["variance"] for i in crop.scored]) if options.tta else None
    return crop, scores, variance, {"ray_s": time.perf_counter() - started}


def score_tree(
    root: Path,
    split: Split,
    chosen: Ensemble,
    batch_size: int,
    tta: int,
    seed: int,
    engine: EngineChoice,
    scoring: RayScoring,
    tta_variance: list | None = None,
) -> tuple[SplitImages, np.ndarray]:
    """evaluate's images and scores on Ray, as :func:`score_split` gives them locally."""
    engine.refuse_split(split)
    _prepare(engine.opener(chosen.members), chosen.members)  # also checks the engine/precision pair
    listing = list_split(root, split, chosen.members, chosen.classes)
    spec = MemberSpec(tuple(chosen.members), chosen.task.score_shape, batch_size, tta, seed, engine=engine)
    rows: dict[int, dict] = {}
    items = [{"index": i, "name": name} for i, name in enumerate(listing.names)]
    with connected(scoring.cluster) as ray:
        _stream(ray, items, read_tree_views, {"listing": listing}, spec, scoring, _collector(rows))
    _complete(rows, len(items))
    unreadable = {listing.names[i]: str(row["error"]) for i, row in rows.items() if str(row["status"]) == ERROR}
    images = listing.images(unreadable)
    kept = [i for i, name in enumerate(listing.names) if name not in unreadable]
    if tta_variance is not None:
        tta_variance.append(np.stack([rows[i]["variance"] for i in kept]))
    return images, np.stack([rows[i]["scores"] for i in kept])
