"""Streaming, model-major prediction with the ensemble.

1. Every input file is decoded, cropped by the lung U-Net and turned into its four views
   (``views.make_views``), in memory, never in the input tree. The views go into on-disk arrays
   (numpy memmaps in a scratch folder under the output), so memory does not grow with the folder.
   Meanwhile the first member is being built in a background thread.
2. Members run one at a time over all images (model-major), on Keras, ONNX Runtime or OpenVINO
   (:func:`member_opener`): each member is opened once while the next ones open in background
   threads; a short last batch runs at its own size (every engine takes a free batch dimension).
   Scores: (images, members), or (images, members, K) for K-unit (softmax) heads. Nothing is
   opened when there is nothing to score.
3. The weighted sum (or another rule) gives the ensemble score; rows go to a CSV.

The same code serves one image and a folder, so an image scores the same either way.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.layout import Member
from deepcovidxr.errors import UsageError
from deepcovidxr.imaging.views import View

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def scratch_folder(parent: Path, kind: str) -> Path:
    """A new ``<kind>-<pid>-<random>`` folder under ``parent`` (a stage's ``.scratch``), after
    removing the folders there whose process is gone: a run killed with ``kill -9`` cannot remove
    its memory-mapped views (many GB for a large folder), so the next run does."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        owner = old.name.split("-")
        pid = int(owner[1]) if len(owner) > 2 and owner[1].isdigit() else None
        # a folder named before pids were recorded: gone stale once nothing has touched it for a day
        stale = not _alive(pid) if pid is not None else time.time() - old.stat().st_mtime > 86_400
        if old.is_dir() and pid != os.getpid() and stale:
            log.info("removing %s, left by a run that ended without cleaning up", old)
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=parent))


def fingerprint_folder(root: Path, fingerprint: str) -> Path:
    """``root/<fingerprint>``, created, after removing every other folder under ``root``: a
    journal made from other files or options is never trusted, so it is not kept either."""
    folder = Path(root) / fingerprint
    if folder.parent.is_dir():
        for old in folder.parent.iterdir():
            if old != folder:
                log.info("predict: %s was made from other files or options; removed", old)
                shutil.rmtree(old, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ScoreJournal:
    """A prediction run's finished work, kept as it finishes: the crop's outcome and each member's
    scores (and TTA variances). Keyed by a fingerprint of the files (names, sizes, modification
    times) and every option that shapes a score, so a rerun after a kill scores only the members
    left, and a rerun with other files or options starts afresh (the old journal is removed)."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = Path(root)
        self.folder = fingerprint_folder(self.root, fingerprint)

    def _path(self, member: Member, what: str) -> Path:
        return self.folder / f"{member.short_name}.{what}.npy"

    def has(self, member: Member) -> bool:
        return self._path(member, "scores").is_file()

    def load(self, member: Member) -> tuple[np.ndarray, np.ndarray | None]:
        variance = self._path(member, "variance")
        return np.load(self._path(member, "scores")), np.load(variance) if variance.is_file() else None

    def save(self, member: Member, scores: np.ndarray, variance: np.ndarray | None) -> None:
        if variance is not None:  # first, so that a scores file always has its variance beside it
            with atomic_path(self._path(member, "variance")) as tmp:
                np.save(tmp, variance)
        with atomic_path(self._path(member, "scores")) as tmp:
            np.save(tmp, scores)

    def save_crop(self, state: dict) -> None:
        write_json(self.folder / "crop.json", state)

    def load_crop(self) -> dict | None:
        try:
            return json.loads((self.folder / "crop.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """The run's outputs are written: nothing is left to resume."""
        shutil.rmtree(self.root, ignore_errors=True)


class ViewStore:
    """One uint8 memmap per view, (capacity, size, size), in a scratch folder."""

    def __init__(self, folder: Path, capacity: int, views: tuple[View, ...]) -> None:
        self.folder = scratch_folder(folder, "views")
        self.arrays = {
            view: np.lib.format.open_memmap(
                self.folder / f"{view[0]}_{view[1].value}.npy",
                mode="w+",
                dtype=np.uint8,
                shape=(max(1, capacity), view[0], view[0]),
            )
            for view in views
        }

    def put(self, index: int, views: dict[View, np.ndarray]) -> None:
        for view, image in views.items():
            if view in self.arrays:
                self.arrays[view][index] = image

    def close(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


class MemberLoader:
    """Opens members ahead of use in background threads: ``ahead`` at a time (Keras model building
    is mostly Python and overlaps with kernels that release the GIL; ONNX Runtime sessions and
    OpenVINO compilation release it too). ``start()`` begins opening the first members early, e.g.
    while images are still being cropped; nothing is opened before ``start()`` or iteration, so a
    run with nothing to score never opens a member. ``load(path, member)`` returns what
    :func:`member_scores` takes (an engine runner, see :func:`member_opener`, or a Keras model)."""

    def __init__(
        self, paths: list[tuple[Member, Path]], load: Callable[[Path, Member], object], ahead: int = 1
    ) -> None:
        self.paths = paths
        self.load = load
        self.ahead = max(1, ahead)
        self.timings: dict[str, float] = {}
        self._results: list[object] = [None] * len(paths)
        self._ready = [threading.Event() for _ in paths]
        self._started: float | None = None
        self._lock = threading.Lock()
        self._launched = 0

    @property
    def started(self) -> bool:
        return self._started is not None

    def _build(self, index: int) -> None:
        member, path = self.paths[index]
        try:
            self._results[index] = self.load(path, member)
        except BaseException as error:  # handed to the consumer and raised there
            self._results[index] = error
        self._ready[index].set()

    def _launch_until(self, stop: int) -> None:
        with self._lock:
            while self._launched < min(stop, len(self.paths)):
                threading.Thread(target=self._build, args=(self._launched,), daemon=True).start()
                self._launched += 1

    def start(self) -> MemberLoader:
        """Begin opening the first ``ahead`` members (idempotent, thread-safe). A ``load`` with a
        ``prepare(members)`` (an engine's one-time exports, :func:`member_opener`) runs it first,
        once, in the calling thread: its progress bar says what a cold cache is doing."""
        with self._lock:
            first = self._started is None
            if first:
                self._started = time.perf_counter()
        prepare = getattr(self.load, "prepare", None)
        if first and prepare is not None and self.paths:
            exported = prepare(self.paths)
            if exported:
                self.timings["export_s"] = time.perf_counter() - self._started
        self._launch_until(self.ahead)
        return self

    def __iter__(self) -> Iterator[tuple[Member, object]]:
        self.start()
        for index, (member, _) in enumerate(self.paths):
            self._ready[index].wait()
            if index == 0:
                self.timings["first_member_ready_s"] = time.perf_counter() - self._started
            self._launch_until(index + 1 + self.ahead)
            model, self._results[index] = self._results[index], None
            if isinstance(model, BaseException):
                raise model
            yield member, model
        self.timings["all_members_s"] = time.perf_counter() - self._started


def member_opener(
    engine: str = "keras",
    precision="fp32",
    cache_dir: Path | None = None,
    calibration=None,
    threads: int | None = None,
) -> Callable[[Path, Member], object]:
    """The ``load(path, member)`` of a :class:`MemberLoader` on ``engine`` at ``precision`` (a
    ``--precision`` value or a resolved :class:`deepcovidxr.runtime.precision.Policy`;
    :func:`deepcovidxr.runtime.load.open_member`). The engine/precision pair is resolved and checked
    here, before anything is loaded: a missing runtime or a CPU without bf16 is a UsageError naming
    the alternative, never a fallback. ``calibration``: int8 images (an array, or
    :class:`deepcovidxr.runtime.int8.Calibration`), never the predicted ones."""
    from deepcovidxr.runtime.load import check_engine, export_missing, open_member

    policy = check_engine(engine, precision, calibration)

    def load(path: Path, member: Member):
        return open_member(member, path, engine, policy, cache_dir, calibration, threads)

    def prepare(members: list[tuple[Member, Path]]) -> list[str]:
        return export_missing(members, engine, policy, cache_dir, calibration)

    load.engine, load.precision, load.prepare = engine, policy.engine_precision, prepare  # type: ignore[attr-defined]
    return load


def image_seed(name: str, seed: int = 0) -> int:
    """A per-image seed from its name, so TTA draws do not depend on batch position."""
    return (zlib.crc32(name.encode("utf-8")) ^ (seed * 2_654_435_761)) & 0x7FFFFFFF


def _compiled_forward(model):
    """One traced inference function per model, kept on the model and reused across calls (a new
    tf.function per call would retrace, which costs as much as a small folder's forward pass).
    Stored with object.__setattr__ so Keras does not track it; the model/function cycle is freed
    with the model."""
    import tensorflow as tf

    forward = getattr(model, "_deepcovidxr_forward", None)
    if forward is None:

        def run(batch):
            return model(batch, training=False)

        forward = tf.function(run, reduce_retracing=True, autograph=False)
        object.__setattr__(model, "_deepcovidxr_forward", forward)
    return forward


def _runner(model):
    """An engine runner as it is; a Keras model wrapped once in a :class:`deepcovidxr.runtime.runners.KerasRunner`
    (one trace with a free batch dimension, kept on the model so later calls do not retrace)."""
    if hasattr(model, "engine") and hasattr(model, "predict") and hasattr(model, "output_tail"):
        return model
    runner = getattr(model, "_deepcovidxr_runner", None)
    if runner is None:
        from deepcovidxr.runtime.runners import KerasRunner

        runner = KerasRunner(None, model, getattr(model, "name", "model"), head=True)
        object.__setattr__(model, "_deepcovidxr_runner", runner)
    return runner


def member_scores(
    model,
    images: np.ndarray,
    batch_size: int,
    tta: int = 0,
    seeds: np.ndarray | None = None,
    shapes: list | None = None,
    variance: list | None = None,
) -> np.ndarray:
    """Scores of one member for (n, s, s) uint8 images (a memmap is fine): (n,) for a one-unit
    (sigmoid) head, (n, K) for a K-unit (softmax) head. ``model`` is an engine runner
    (:func:`deepcovidxr.runtime.load.open_member`) or a Keras model.

    Batches of ``batch_size``; a short last batch runs at its own size (never padded). Without TTA
    the input path is numpy only (:func:`deepcovidxr.imaging.preprocess.normalise`), so a non-Keras engine
    needs no TensorFlow. With ``tta`` > 0 the score is the mean over ``tta`` passes of the training
    augmentation, each image drawing from its own seed (``seeds``, one int per image) and the pass
    number, so every member sees the same augmented images and an image's score does not depend on
    which other images share its batch. ``shapes``, if given, collects the batch shapes run;
    ``variance``, if given, receives the per-image variance over the TTA passes (zeros without TTA),
    the test-time-augmentation part of the uncertainty.
    """
    from deepcovidxr.imaging.preprocess import normalise

    runner = _runner(model)
    seeds = np.zeros(len(images), np.int64) if seeds is None else np.asarray(seeds, np.int64)
    passes = max(1, tta)
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32)[..., None]
        chunk_seeds = seeds[start : start + batch_size]
        count = len(chunk)
        for index in range(passes):
            view = _augmented(chunk, chunk_seeds, index) if tta else chunk
            batch = normalise(np.repeat(view, 3, axis=-1)).astype(np.float32, copy=False)
            if shapes is not None:
                shapes.append(batch.shape)
            output = np.asarray(runner.predict(batch), np.float64)
            if total is None:
                total = np.zeros((len(images), *output.shape[1:]), np.float64)
                squares = np.zeros_like(total)
            total[start : start + count] += output
            squares[start : start + count] += output**2
    if total is None:  # no images: the head's width is that of the runner
        units = getattr(runner, "units", 1)
        empty = np.zeros((0,) if units == 1 else (0, units), np.float64)
        if variance is not None:
            variance.append(empty)
        return empty
    mean = total / passes
    if variance is not None:
        variance.append(np.maximum(squares / passes - mean**2, 0.0))
    return mean


def _augmented(chunk: np.ndarray, chunk_seeds: np.ndarray, index: int) -> np.ndarray:
    """One TTA pass: the training augmentation of each (s, s, 1) image from (its seed, pass)."""
    import tensorflow as tf

    from deepcovidxr.data.tfdata import augment

    seeds = tf.constant(np.stack([chunk_seeds, np.full(len(chunk), index)], axis=1), tf.int32)
    return np.asarray(
        tf.map_fn(
            lambda pair: augment(pair[0][None], pair[1])[0],
            (tf.constant(chunk), seeds),
            fn_output_signature=tf.float32,
        )
    )


def score_members(
    store: ViewStore | None,
    count: int,
    members: list[tuple[Member, Path]],
    batch_size: int,
    tta: int = 0,
    seeds: np.ndarray | None = None,
    loader: MemberLoader | None = None,
    tta_variance: list | None = None,
    journal: ScoreJournal | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Model-major: (count, members) scores for one-unit heads, (count, members, K) for K-unit
    heads; each member opened once (by ``loader``, default Keras fp32) and freed after use. With
    nothing to score (``count`` 0) no member is opened. ``tta_variance``, if given, receives the
    (count, members[, K]) variance over the TTA passes. ``journal``: members it holds are read
    back, not run (``loader`` then opens only the others, in the same order); each member run is
    added to it."""
    import gc

    if count == 0:
        return np.zeros((0, len(members)), np.float64), {}
    journal_members = [m for m, _ in members if journal is not None and journal.has(m)]
    remaining = [(m, p) for m, p in members if m not in journal_members]
    loader = loader or MemberLoader(remaining, member_opener("keras", "fp32"))
    opened = iter(loader)
    columns: list[np.ndarray] = []
    variances: list[np.ndarray] = []
    forward_seconds: dict[str, float] = {}
    if journal_members:
        log.info("predict: %d member(s) scored by an interrupted run are read back", len(journal_members))
    with tqdm(total=len(members), desc="members", unit="model") as bar:
        for member, _ in members:
            if member in journal_members:
                column, variance = journal.load(member)
                columns.append(column)
                variances.append(variance if variance is not None else np.zeros_like(column))
                bar.update()
                continue
            loaded, model = next(opened)
            if loaded != member:  # the loader must open exactly the members not in the journal
                raise RuntimeError(f"member loader opened {loaded.short_name}, expected {member.short_name}")
            started = time.perf_counter()
            images = store.arrays[(member.size, member.crop)][:count]
            columns.append(member_scores(model, images, batch_size, tta, seeds, variance=variances))
            forward_seconds[member.short_name] = time.perf_counter() - started
            if journal is not None:
                journal.save(member, columns[-1], variances[-1])
            del model
            gc.collect()
            bar.update()
    widths = {column.shape[1:] for column in columns}
    if len(widths) > 1:
        raise UsageError(f"members have heads of different widths {sorted(widths)}; use members of one task")
    scores = np.stack(columns, axis=1)
    if tta_variance is not None:
        tta_variance.append(np.stack(variances, axis=1))
    return scores, {**loader.timings, **{f"forward_{k}_s": v for k, v in forward_seconds.items()}}
