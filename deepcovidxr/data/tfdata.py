"""tf.data input pipelines over the dataset tree, and the training augmentation.

Files decode through the project's one reader (:func:`deepcovidxr.imaging.reader.read_view`, called in
a parallel ``tf.numpy_function`` map, so training sees exactly the arrays evaluation and prediction
see), are cached after decoding (before augmentation, which must differ every epoch), augmented
per batch on the vectorised path and prefetched. The augmentation is the original's
ImageDataGenerator setting (rotation 15 deg, shifts 5 %, zoom 5 % per axis, brightness 0.8-1.2,
horizontal flip, constant black fill), seeded.
Normalisation is :func:`deepcovidxr.imaging.preprocess.normalise`, the same function prediction uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.layout import Split
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imaging.preprocess import normalise
from deepcovidxr.imaging.reader import list_images, read_view
from deepcovidxr.scoring.task import Task, task_for


@dataclass(frozen=True)
class Augmentation:
    rotation: float = 15.0  # degrees, uniform in [-rotation, rotation]
    shift: float = 0.05  # fraction of the side, each axis
    zoom: float = 0.05  # scale in [1 - zoom, 1 + zoom], each axis
    brightness: tuple[float, float] = (0.8, 1.2)
    horizontal_flip: bool = True


TRAINING_AUGMENTATION = Augmentation()


@dataclass(frozen=True)
class SplitFiles:
    """The images of one split and their labels. Binary (``classes`` Negative/Positive): float32
    0/1 (1 = Positive). Three or more classes: int64 class indices into ``classes`` (sorted
    folder names)."""

    files: list[str]
    labels: np.ndarray
    classes: tuple[str, ...] = class_names.BINARY

    def __len__(self) -> int:
        return len(self.files)

    @property
    def task(self) -> Task:
        return task_for(self.classes)

    @property
    def positives(self) -> int:
        """Binary: the Positive images; otherwise the images not of the first class."""
        return int(np.count_nonzero(self.labels))

    def describe(self) -> str:
        """For logs: "227 images (123 positive)", or per class when there are three or more."""
        return self.task.describe_counts(self.counts)

    @property
    def counts(self) -> np.ndarray:
        """Images per class, in ``classes`` order."""
        return np.bincount(np.asarray(self.labels).astype(int), minlength=len(self.classes))

    def missing_classes(self) -> list[str]:
        """Classes of the task with no image in this split."""
        return [name for name, n in zip(self.classes, self.counts, strict=True) if n == 0]

    def readable(self, size: int, desc: str = "check files") -> tuple[SplitFiles, list[tuple[str, str]]]:
        """(the files ``read_view`` can read at ``size``, [(file, reason)] of the others), each
        decoded once in a thread pool. Training checks first because the tf.data pipeline would
        otherwise stop the run mid-epoch, with a TensorFlow traceback, at the first bad file."""
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        from deepcovidxr.imaging.reader import ImageReadError

        def reason(path: str) -> str | None:
            try:
                read_view(path, size)
            except ImageReadError as error:
                return error.reason
            return None

        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            reasons = list(tqdm(pool.map(reason, self.files), total=len(self), desc=desc, unit="img", leave=False))
        if not any(reasons):
            return self, []
        kept = [i for i, why in enumerate(reasons) if why is None]
        bad = [(self.files[i], why) for i, why in enumerate(reasons) if why is not None]
        return SplitFiles([self.files[i] for i in kept], self.labels[kept], self.classes), bad


def list_split(view_dir: Path, split: Split | str, classes: tuple[str, ...] | None = None) -> SplitFiles:
    """Images of ``<view_dir>/<split>/<class>/``, sorted by class, then by relative path.

    ``classes`` defaults to :func:`deepcovidxr.contract.classes.discover` (the class folders under
    ``Train/``, the same in every split present, else a :class:`UsageError` naming the
    difference). Labels: float32 0/1 for Negative/Positive, class indices for three or more.
    """
    view_dir = Path(view_dir)
    if classes is None:
        if not (view_dir / Split(split).value).is_dir():
            raise MissingInputError(
                f"missing folder {view_dir / Split(split).value} (expected {view_dir}/<split>/<class>/)"
            )
        classes = class_names.discover(view_dir)
    classes = tuple(classes)
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = view_dir / Split(split).value / name
        if not folder.is_dir():
            expected = "{" + ",".join(classes) + "}"
            raise MissingInputError(f"missing folder {folder} (expected {view_dir}/<split>/{expected})")
        for path in list_images(folder):
            files.append(str(path))
            labels.append(index)
    return SplitFiles(files, np.asarray(labels, task_for(classes).label_dtype), classes)


def encode_labels(labels: tf.Tensor, classes: tuple[str, ...]) -> tf.Tensor:
    """What a member's loss takes (:attr:`deepcovidxr.scoring.task.Task.targets`): the binary 0/1
    labels as they are, class indices one-hot (float32, one column per class) for a softmax head."""
    return tf.gather(tf.constant(task_for(classes).targets), tf.cast(labels, tf.int32))


def decode(path: tf.Tensor, size: int) -> tf.Tensor:
    """File -> float32 (size, size, 1) in 0..255, by :func:`deepcovidxr.imaging.reader.read_view` (images
    of another size are Lanczos-resized, as evaluation and prediction resize them)."""

    def load(name: bytes | np.ndarray) -> np.ndarray:
        # bytes inside a tf.data map, a 0-d bytes array when called eagerly
        return read_view(os.fsdecode(np.asarray(name).item()), size)[..., None].astype(np.float32)

    image = tf.numpy_function(load, [path], tf.float32, stateful=False)
    return tf.ensure_shape(image, (size, size, 1))


def _transforms(batch: int, size: int, augmentation: Augmentation, seed: tf.Tensor) -> tf.Tensor:
    """Projective transforms (output -> input pixel mapping) for a batch: rotation, zoom and
    shift about the image centre."""
    seeds = tf.random.experimental.stateless_split(seed, 5)
    angle = tf.random.stateless_uniform((batch,), seeds[0], -1.0, 1.0) * augmentation.rotation * math.pi / 180.0
    zoom = tf.random.stateless_uniform((batch, 2), seeds[1], 1.0 - augmentation.zoom, 1.0 + augmentation.zoom)
    shift = tf.random.stateless_uniform((batch, 2), seeds[2], -augmentation.shift, augmentation.shift) * size
    cos, sin = tf.cos(angle), tf.sin(angle)
    zx, zy = zoom[:, 0], zoom[:, 1]
    centre = (size - 1) / 2.0
    # input = R * Z * (output - c) + c + shift
    a0, a1 = cos * zx, -sin * zy
    b0, b1 = sin * zx, cos * zy
    a2 = centre - a0 * centre - a1 * centre + shift[:, 0]
    b2 = centre - b0 * centre - b1 * centre + shift[:, 1]
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment(images: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation = TRAINING_AUGMENTATION) -> tf.Tensor:
    """Randomly transform a batch of (N, S, S, C) 0..255 images; deterministic for a seed
    (a shape-[2] int tensor)."""
    batch, size = tf.shape(images)[0], images.shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_transforms(batch, size, augmentation, seeds[0]),
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    low, high = augmentation.brightness
    factor = tf.random.stateless_uniform((batch, 1, 1, 1), seeds[1], low, high)
    transformed = tf.clip_by_value(transformed * factor, 0.0, 255.0)
    if augmentation.horizontal_flip:
        flip = tf.random.stateless_uniform((batch, 1, 1, 1), seeds[2]) < 0.5
        transformed = tf.where(flip, tf.reverse(transformed, axis=[2]), transformed)
    return transformed


def to_rgb_normalised(images: tf.Tensor) -> tf.Tensor:
    """(N, S, S, 1) 0..255 -> (N, S, S, 3) ImageNet-standardised, as every member expects."""
    return tf.cast(normalise(tf.repeat(images, 3, axis=-1)), tf.float32)


def make_dataset(
    split: SplitFiles,
    size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    oversample: bool = False,
    cache: bool | str = True,
    augmentation: Augmentation | None = TRAINING_AUGMENTATION,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of (images, labels). Training: shuffled each epoch, augmented, optionally
    oversampled to balanced classes (every class present drawn equally often, an epoch keeping
    the real training set's size). Otherwise: file order, no augmentation. Labels: binary 0/1,
    or one-hot rows for three or more classes (:func:`encode_labels`)."""
    if len(split) == 0:
        raise UsageError("no images in this split")
    autotune = tf.data.AUTOTUNE

    def decoded(files: list[str], labels: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((files, labels))
        ds = ds.map(lambda f, y: (decode(f, size), y), num_parallel_calls=autotune, deterministic=True)
        if cache:
            ds = ds.cache("" if cache is True else str(cache))
        return ds

    # (NIH pretraining passes multi-label rows and never oversamples)
    present = [index for index, n in enumerate(split.counts) if n > 0] if training and oversample else []
    if len(present) > 1:
        per_class = []
        for index in present:
            chosen = split.labels == split.labels.dtype.type(index)
            files = [f for f, keep in zip(split.files, chosen, strict=True) if keep]
            per_class.append(decoded(files, split.labels[chosen]).shuffle(len(files), seed=seed).repeat())
        ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[1.0 / len(present)] * len(present), seed=seed, rerandomize_each_iteration=True
        )
        # an "epoch" keeps the size of the real training set
        ds = ds.take(len(split))
    else:
        ds = decoded(split.files, split.labels)
        if training:
            ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=False)
    if training and augmentation is not None:
        # fresh augmentation draws every epoch, reproducible for a seed
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda batch, s: (augment(batch[0], tf.cast(s, tf.int32), augmentation), batch[1]),
            num_parallel_calls=autotune,
        )
    classes = split.classes
    ds = ds.map(lambda x, y: (to_rgb_normalised(x), encode_labels(y, classes)), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def class_weights(labels: np.ndarray, n_classes: int = 2) -> dict[int, float]:
    """Inverse-frequency weights that average to 1 over the training set:
    ``len(labels) / (n_classes * count)``, scikit-learn's ``compute_class_weight("balanced")``.
    A class with no image gives every class weight 1."""
    counts = np.bincount(np.asarray(labels).astype(int), minlength=n_classes).astype(float)
    if np.any(counts == 0):
        return dict.fromkeys(range(n_classes), 1.0)
    return {i: float(len(labels) / (n_classes * counts[i])) for i in range(n_classes)}


def resolve_class_weights(
    spec: bool | str | None, labels: np.ndarray, classes: tuple[str, ...]
) -> dict[int, float] | None:
    """The class index -> weight table of a ``--class-weight`` value for this task: None when
    off, :func:`class_weights` for ``balanced``, else the explicit weights (a list must give one
    weight per class; names must be classes of the tree)."""
    if spec is None or spec is False:
        return None
    classes = tuple(classes)
    if spec is True or str(spec).strip().lower() == "balanced":
        return class_weights(labels, len(classes))
    from deepcovidxr.config.training_stages import BALANCED, parse_class_weight

    text = parse_class_weight(str(spec))
    if text in (False, BALANCED):
        return None if text is False else class_weights(labels, len(classes))
    parts = text.split(",")
    if "=" in parts[0]:
        given = dict(p.rsplit("=", 1) for p in parts)
        unknown = sorted(set(given) - set(classes))
        if unknown:
            raise UsageError(f"--class-weight names {unknown}, not classes of this tree {list(classes)}")
        return {i: float(given.get(name, 1.0)) for i, name in enumerate(classes)}
    if len(parts) != len(classes):
        raise UsageError(
            f"--class-weight gives {len(parts)} weights for {len(classes)} classes {list(classes)} (in that order)"
        )
    return {i: float(w) for i, w in enumerate(parts)}
