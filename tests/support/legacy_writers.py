"""Test-only writers of Keras 2 (TF 2.0-era) HDF5 files, run in a subprocess with tf-keras.

They stand in for files our users hold (imlab's trained_model.hdf5, the authors' members), so
the loaders are tested against the real legacy format, not against our own writer.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

IMLAB_UNET = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tf_keras as keras
    from tf_keras.layers import Input, Conv2D, MaxPooling2D, UpSampling2D, concatenate

    def conv(x, filters):
        return Conv2D(filters, 3, padding="same", activation="relu")(x)

    data = Input((256, 256, 1))
    c1 = conv(conv(data, 32), 32)
    c2 = conv(conv(MaxPooling2D(2)(c1), 64), 64)
    c3 = conv(conv(MaxPooling2D(2)(c2), 64), 64)
    c4 = conv(conv(MaxPooling2D(2)(c3), 128), 128)
    x = conv(MaxPooling2D(2)(c4), 256)
    for skip, width in ((c4, 256), (c3, 256), (c2, 128), (c1, 64)):
        x = conv(conv(UpSampling2D(2)(x), width), width)
        x = conv(concatenate([skip, x], axis=-1), width)
    out = Conv2D(1, 3, padding="same", activation="sigmoid")(x)
    model = keras.Model(data, out)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") for w in model.get_weights()])
    model.save(sys.argv[1])
    probe = rng.normal(0, 1, (2, 256, 256, 1)).astype("float32")
    np.save(sys.argv[2], probe)
    np.save(sys.argv[3], model.predict(probe, verbose=0))
    """
)


def write_imlab_unet(directory: Path) -> tuple[Path, Path, Path]:
    """An imlab-architecture U-Net saved by tf-keras as a full-model .hdf5, plus a probe input
    and the legacy model's own output for it."""
    model, probe, expected = directory / "trained_model.hdf5", directory / "probe.npy", directory / "expected.npy"
    done = subprocess.run(
        [sys.executable, "-c", IMLAB_UNET, model, probe, expected],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tf-keras writer failed:\n{done.stderr[-3000:]}")
    return model, probe, expected


LEGACY_MEMBER = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tf_keras as keras

    constructor, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if constructor == "EfficientNetB2":  # the authors used qubvel's efficientnet package
        import efficientnet.tfkeras as efn

        base = efn.EfficientNetB2(weights=None, include_top=False, input_shape=(size, size, 3))
    else:
        base = getattr(keras.applications, constructor)(weights=None, include_top=False, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    x = keras.layers.Dropout(0.3)(x)
    y = keras.layers.Dense(1, activation="sigmoid", name="last")(x)
    model = keras.Model(base.input, y)  # a flat graph, as Keras 2.3 wrote the authors' members
    rng = np.random.default_rng(0)
    weights = []
    for variable, value in zip(model.weights, model.get_weights()):
        name = variable.name
        if "moving_mean" in name:
            value = rng.normal(0, 0.1, value.shape)
        elif "moving_variance" in name:
            value = rng.uniform(0.5, 1.5, value.shape)
        elif "last" in name and "kernel" in name:
            value = rng.normal(0, 0.05, value.shape)
        weights.append(np.asarray(value, np.float32))
    model.set_weights(weights)
    model.save(out)
    probe = rng.uniform(-2, 2, (3, size, size, 3)).astype("float32")
    np.save(out + ".probe.npy", probe)
    np.save(out + ".expected.npy", model.predict(probe, verbose=0))
    """
)


def write_legacy_member(constructor: str, size: int, path: Path) -> tuple[Path, Path]:
    """A member as the authors' Keras 2.3 / TF 2.0 code wrote it (tf-keras; EfficientNet-B2 from
    the efficientnet package), plus a probe input and the legacy model's predictions for it."""
    done = subprocess.run(
        [sys.executable, "-c", LEGACY_MEMBER, constructor, str(size), str(path)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tf-keras member writer failed:\n{done.stderr[-3000:]}")
    return Path(f"{path}.probe.npy"), Path(f"{path}.expected.npy")
