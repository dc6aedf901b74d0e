"""Grad-CAM with a gradient tape on each member's last convolutional activation, fused across
members with the ensemble weights and placed back in the original image's coordinates.

Fixes of the original (SPEC s.13): gradients of the pre-sigmoid logit (a saturated sigmoid
has none), taken at the post-activation layer of the backbone table (not a batch-norm before
the ReLU), for the class asked for (positive, negative or each image's predicted class); every
member, not only the six 224-px uncropped ones; ensemble-weighted fusion; crop-view maps pasted
into their square box in the original image.

A multi-class (softmax) member: the map of a class is the Grad-CAM of that class's pre-softmax
logit (:func:`class_cams`, one gradient per class); ``--target`` names a class of the members
or ``predicted`` (:func:`resolve_target`).
"""

from __future__ import annotations

import numpy as np

from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.task import task_for

PREDICTED = "predicted"
# The binary task's map keys, in the original's spelling (lower case), and their classes.
BINARY_KEYS = {"positive": "Positive", "negative": "Negative"}


def resolve_target(target: str, classes) -> str:
    """``--target`` as the key of a fused map (:attr:`deepcovidxr.scoring.task.Task.cam_keys`):
    ``predicted`` (any case) stays ``predicted``; otherwise a key, exact, else the one key it
    matches ignoring case: for the binary task ``positive`` / ``negative`` in any case
    (``Positive`` is today's ``positive``), for a multi-class ensemble a class name of the members.
    Anything else is a UsageError listing the choices."""
    keys = task_for(classes).cam_keys
    wanted = str(target).strip()
    if wanted.lower() == PREDICTED:
        return PREDICTED
    if wanted in keys:
        return wanted
    folded = [k for k in keys if k.lower() == wanted.lower()]
    if len(folded) == 1:
        return folded[0]
    raise UsageError(f"unknown target {target!r}; choose one of {[*keys, PREDICTED]}")


def member_cams(model, layer_name: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM maps for both classes from one gradient: (positive maps, negative maps, scores).

    ``inputs``: (n, s, s, 3) normalised member inputs. The class score is the logit z of 'last'
    for the positive class and -z for the negative one, so the negative map is the positive
    map's negated channel weighting; maps are (n, s, s) in [0, 1] at the input size.
    """
    import keras
    import tensorflow as tf

    head = model.get_layer("last")
    probe = keras.Model(model.inputs, [model.get_layer(layer_name).output, head.input])
    x = tf.constant(inputs, tf.float32)
    with tf.GradientTape() as tape:
        activations, features = probe(x, training=False)
        logit = tf.matmul(tf.cast(features, tf.float32), tf.cast(head.kernel, tf.float32))[:, 0]
        logit = logit + tf.cast(head.bias, tf.float32)[0]
        total = tf.reduce_sum(logit)  # inside the tape, or the gradient is None
    gradients = tf.cast(tape.gradient(total, activations), tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    signed = tf.reduce_sum(channel_weights * tf.cast(activations, tf.float32), axis=-1)
    size = inputs.shape[1]

    def normalised(cam):
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
        return np.asarray(tf.image.resize(cam[..., None], (size, size), method="bilinear")[..., 0], np.float32)

    return normalised(tf.nn.relu(signed)), normalised(tf.nn.relu(-signed)), np.asarray(tf.sigmoid(logit), np.float32)


def class_cams(model, layer_name: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps of every class of a softmax member: (maps (classes, n, s, s) in [0, 1] at the
    input size, probabilities (n, classes)).

    The class score is the class's pre-softmax logit of 'last' (a softmax output couples the
    classes and saturates), one gradient per class from one forward pass.
    """
    import keras
    import tensorflow as tf

    head = model.get_layer("last")
    probe = keras.Model(model.inputs, [model.get_layer(layer_name).output, head.input])
    x = tf.constant(inputs, tf.float32)
    units = int(head.kernel.shape[-1])
    with tf.GradientTape(persistent=True) as tape:
        activations, features = probe(x, training=False)
        logits = tf.matmul(tf.cast(features, tf.float32), tf.cast(head.kernel, tf.float32))
        logits = logits + tf.cast(head.bias, tf.float32)
        totals = [tf.reduce_sum(logits[:, unit]) for unit in range(units)]  # inside the tape
    size = inputs.shape[1]
    maps = []
    for total in totals:
        gradients = tf.cast(tape.gradient(total, activations), tf.float32)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * tf.cast(activations, tf.float32), axis=-1))
        cam = tf.math.divide_no_nan(cam, tf.reduce_max(cam, axis=(1, 2), keepdims=True))
        maps.append(np.asarray(tf.image.resize(cam[..., None], (size, size), method="bilinear")[..., 0], np.float32))
    del tape
    return np.stack(maps), np.asarray(tf.nn.softmax(logits, axis=-1), np.float32)


def to_original(cam: np.ndarray, shape: tuple[int, int], box: tuple[int, int, int, int] | None) -> np.ndarray:
    """Place one view's heatmap in original-image coordinates: an uncropped view covers the
    whole image (it was stretched to a square); a crop view covers its square box only."""
    import cv2

    height, width = shape
    if box is None:
        return cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = box
    placed = np.zeros((height, width), np.float32)
    placed[y0:y1, x0:x1] = cv2.resize(cam, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return placed


def fuse(maps: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Ensemble-weighted mean of per-member maps, rescaled to [0, 1]."""
    weights_array = np.asarray(weights, np.float64)
    if not maps or weights_array.sum() <= 0:
        raise UsageError("Grad-CAM fusion needs at least one member with a positive weight")
    fused = np.tensordot(weights_array / weights_array.sum(), np.stack(maps).astype(np.float64), axes=1)
    peak = fused.max()
    return (fused / peak if peak > 0 else fused).astype(np.float32)
