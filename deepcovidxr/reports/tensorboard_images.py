"""Figures already written as PNG, logged as TensorBoard image summaries beside them, so a run's
plots sit in the same dashboard as its training curves."""

from __future__ import annotations

from pathlib import Path


def write_images(logdir: Path, images: dict[str, Path], step: int = 0) -> Path:
    """Log each PNG under its tag in an event file in ``logdir``; returns ``logdir``."""
    import tensorflow as tf

    logdir = Path(logdir)
    writer = tf.summary.create_file_writer(str(logdir))
    with writer.as_default():
        for tag, png in images.items():
            image = tf.io.decode_png(tf.io.read_file(str(png)), channels=3)
            tf.summary.image(tag, image[tf.newaxis], step=step)
    writer.flush()
    writer.close()
    return logdir


def read_image_tags(logdir: Path) -> dict[str, tuple[int, int]]:
    """Tag -> (height, width) of every image summary under ``logdir`` (for tests and checks)."""
    import tensorflow as tf

    found: dict[str, tuple[int, int]] = {}
    for events in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                tensor = tf.make_ndarray(value.tensor)  # [width, height, png bytes...] as strings
                found[value.tag] = (int(tensor[1]), int(tensor[0]))
    return found
