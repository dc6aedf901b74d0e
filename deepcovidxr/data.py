"""tf.data input pipelines over the dataset tree, and the training augmentation.

Files decode through the project's one reader (:func:`deepcovidxr.imageio.read_view`, called in
a parallel ``tf.numpy_function`` map, so training sees exactly the arrays evaluation and prediction
see), are cached after decoding (before augmentation, which must differ every epoch), augmented
per batch on the vectorised path and prefetched. The augmentation is the original's
ImageDataGenerator setting (rotation 15 deg, shifts 5 %, zoom 5 % per axis, brightness 0.8-1.2,
horizontal flip, constant black fill), seeded.
Normalisation is :func:`deepcovidxr.preprocess.normalise`, the same function prediction uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.imageio import list_images, read_view
from deepcovidxr.layout import Label, Split
from deepcovidxr.preprocess import normalise

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


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
    files: list[str]
    labels: np.ndarray  # 0 Negative, 1 Positive

    def __len__(self) -> int:
        return len(self.files)

    @property
    def positives(self) -> int:
        return int(self.labels.sum())


def list_split(view_dir: Path, split: Split | str) -> SplitFiles:
    """Images of ``<view_dir>/<split>/{Negative,Positive}``, sorted by relative path."""
    files, labels = [], []
    for label in Label:
        folder = Path(view_dir) / Split(split).value / label.value
        if not folder.is_dir():
            raise MissingInputError(f"missing folder {folder} (expected {view_dir}/<split>/{{Negative,Positive}})")
        for path in list_images(folder, IMAGE_SUFFIXES):
            files.append(str(path))
            labels.append(label.index)
    return SplitFiles(files, np.asarray(labels, np.float32))


def decode(path: tf.Tensor, size: int) -> tf.Tensor:
    """File -> float32 (size, size, 1) in 0..255, by :func:`deepcovidxr.imageio.read_view` (images
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
    oversampled to balanced classes. Otherwise: file order, no augmentation."""
    if len(split) == 0:
        raise UsageError("no images in this split")
    autotune = tf.data.AUTOTUNE

    def decoded(files: list[str], labels: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((files, labels))
        ds = ds.map(lambda f, y: (decode(f, size), y), num_parallel_calls=autotune, deterministic=True)
        if cache:
            ds = ds.cache("" if cache is True else str(cache))
        return ds

    if training and oversample and 0 < split.positives < len(split):
        per_class = []
        for value in (0.0, 1.0):
            chosen = split.labels == value
            files = [f for f, keep in zip(split.files, chosen, strict=True) if keep]
            per_class.append(decoded(files, split.labels[chosen]).shuffle(len(files), seed=seed).repeat())
        ds = tf.data.Dataset.sample_from_datasets(
            per_class, weights=[0.5, 0.5], seed=seed, rerandomize_each_iteration=True
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
    ds = ds.map(lambda x, y: (to_rgb_normalised(x), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights that average to 1 over the training set."""
    counts = np.bincount(labels.astype(int), minlength=2).astype(float)
    if np.any(counts == 0):
        return {0: 1.0, 1: 1.0}
    return {i: float(len(labels) / (2.0 * counts[i])) for i in range(2)}
