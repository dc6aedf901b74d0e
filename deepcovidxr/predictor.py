"""Streaming, model-major prediction with the ensemble.

1. Every input file is decoded, cropped by the lung U-Net and turned into its four views
   (``views.make_views``), in memory, never in the input tree. The views go into on-disk arrays
   (numpy memmaps in a scratch folder under the output), so memory does not grow with the folder.
   Meanwhile the first member is being built in a background thread.
2. Members run one at a time over all images (model-major): each member is built and its
   weights copied once, while the next member is built in the background; a member's graph is
   traced once (fixed batch shape, the last batch padded). Scores: an (images x members) array.
3. The weighted sum (or another rule) gives the ensemble score; rows go to a CSV.

The same code serves one image and a folder, so an image scores the same either way.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deepcovidxr.layout import Member
from deepcovidxr.views import View

log = logging.getLogger(__name__)


class ViewStore:
    """One uint8 memmap per view, (capacity, size, size), in a scratch folder."""

    def __init__(self, folder: Path, capacity: int, views: tuple[View, ...]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix="views-", dir=folder))
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
    """Builds members one ahead of use in a background thread (Keras model building is mostly
    Python, so it overlaps with TensorFlow kernels that release the GIL). ``start()`` begins
    building the first member early, e.g. while images are still being cropped."""

    def __init__(self, paths: list[tuple[Member, Path]], load: Callable[[Path, Member], object]) -> None:
        self.paths = paths
        self.load = load
        self.timings: dict[str, float] = {}
        self._results: list[object] = [None] * len(paths)
        self._ready = [threading.Event() for _ in paths]
        self._started: float | None = None

    def _build(self, index: int) -> None:
        member, path = self.paths[index]
        try:
            self._results[index] = self.load(path, member)
        except BaseException as error:  # handed to the consumer and raised there
            self._results[index] = error
        self._ready[index].set()

    def _launch(self, index: int) -> None:
        if index < len(self.paths):
            threading.Thread(target=self._build, args=(index,), daemon=True).start()

    def start(self) -> MemberLoader:
        if self._started is None:
            self._started = time.perf_counter()
            self._launch(0)
        return self

    def __iter__(self) -> Iterator[tuple[Member, object]]:
        self.start()
        for index, (member, _) in enumerate(self.paths):
            self._ready[index].wait()
            if index == 0:
                self.timings["first_member_ready_s"] = time.perf_counter() - self._started
            self._launch(index + 1)
            model, self._results[index] = self._results[index], None
            if isinstance(model, BaseException):
                raise model
            yield member, model
        self.timings["all_members_s"] = time.perf_counter() - self._started


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


def member_scores(
    model, images: np.ndarray, batch_size: int, tta: int = 0, seeds: np.ndarray | None = None
) -> np.ndarray:
    """Sigmoid scores of one member for (n, s, s) uint8 images (a memmap is fine).

    With ``tta`` > 0 the score is the mean over ``tta`` passes of the training augmentation,
    each image drawing from its own seed (``seeds``, one int per image) and the pass number, so
    every member sees the same augmented images and an image's score does not depend on which
    other images share its batch.
    """
    import tensorflow as tf

    from deepcovidxr.data import augment, to_rgb_normalised

    forward = _compiled_forward(model)

    def augment_each(batch, batch_seeds):
        return tf.map_fn(
            lambda pair: augment(pair[0][None], pair[1])[0], (batch, batch_seeds), fn_output_signature=tf.float32
        )

    seeds = np.zeros(len(images), np.int64) if seeds is None else np.asarray(seeds, np.int64)
    passes = max(1, tta)
    total = np.zeros(len(images), np.float64)
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32)[..., None]
        chunk_seeds = seeds[start : start + batch_size]
        count = len(chunk)
        if count < batch_size:  # one batch shape, one trace
            chunk = np.concatenate([chunk, np.zeros((batch_size - count, *chunk.shape[1:]), np.float32)])
            chunk_seeds = np.concatenate([chunk_seeds, np.zeros(batch_size - count, np.int64)])
        batch = tf.constant(chunk)
        for index in range(passes):
            if tta:
                pass_seeds = tf.constant(np.stack([chunk_seeds, np.full(batch_size, index)], axis=1), tf.int32)
                view = augment_each(batch, pass_seeds)
            else:
                view = batch
            total[start : start + count] += np.asarray(forward(to_rgb_normalised(view)), np.float64)[:count, 0]
    return total / passes


def score_members(
    store: ViewStore,
    count: int,
    members: list[tuple[Member, Path]],
    batch_size: int,
    tta: int = 0,
    seeds: np.ndarray | None = None,
    loader: MemberLoader | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Model-major: (count x members) scores, each member built once and freed after use."""
    import gc

    from deepcovidxr.models import load_member

    loader = loader or MemberLoader(members, lambda path, member: load_member(path, member))
    scores = np.zeros((count, len(members)), np.float64)
    forward_seconds: dict[str, float] = {}
    with tqdm(total=len(members), desc="members", unit="model") as bar:
        for column, (member, model) in enumerate(loader):
            started = time.perf_counter()
            images = store.arrays[(member.size, member.crop)][:count]
            scores[:, column] = member_scores(model, images, batch_size, tta, seeds)
            forward_seconds[member.short_name] = time.perf_counter() - started
            del model
            gc.collect()
            bar.update()
    return scores, {**loader.timings, **{f"forward_{k}_s": v for k, v in forward_seconds.items()}}
