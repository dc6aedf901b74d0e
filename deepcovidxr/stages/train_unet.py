"""train_unet.py: our lung U-Net on image/mask pairs; keeps the best held-out epoch and writes
lung_unet.weights.h5 + lung_unet.json.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from deepcovidxr.config.data_stages import UnetTrainConfig
from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.lungs import segment
from deepcovidxr.lungs.augment import augment_pair
from deepcovidxr.lungs.train import dice, find_pairs, initial_model, load_256, split_heldout, write_unet_metadata
from deepcovidxr.stages.common import StageResult

log = logging.getLogger(__name__)


def run(config: UnetTrainConfig) -> StageResult:
    """Train, keep the best held-out epoch, write ``lung_unet.weights.h5`` + ``lung_unet.json``."""
    import keras

    from deepcovidxr.training.schedule import set_precision

    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)  # fp16's loss scaling: compile() wraps the optimizer
    model = initial_model(config, policy)  # first: a wrong --init fails before the data is read
    pairs = find_pairs(config.data)
    if config.limit:
        pairs = pairs[: config.limit]
    train_pairs, held_pairs = split_heldout(pairs, config.heldout_fraction, config.seed)
    log.info("U-Net data: %d training pairs, %d held out", len(train_pairs), len(held_pairs))
    x_train, y_train = load_256(train_pairs)
    x_held, y_held = load_256(held_pairs)
    held_inputs = np.stack([segment.unet_input(x) for x in x_held])

    class Augmented(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = 0

        def __len__(self) -> int:
            return math.ceil(len(x_train) / config.batch_size)

        def on_epoch_end(self) -> None:
            self.epoch += 1

        def __getitem__(self, index: int):
            rng = np.random.default_rng([config.seed, self.epoch, index])
            order = np.random.default_rng([config.seed, self.epoch]).permutation(len(x_train))
            chosen = order[index * config.batch_size : (index + 1) * config.batch_size]
            images, masks = [], []
            for i in chosen:
                image, mask = augment_pair(x_train[i], y_train[i], rng, config.pathology_probability)
                images.append(segment.unet_input(image))
                masks.append(mask[..., None])
            return np.stack(images), np.stack(masks)

    def bce_dice(y_true, y_pred):
        y_pred = keras.ops.cast(y_pred, "float32")
        bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
        intersection = keras.ops.sum(y_true * y_pred, axis=(1, 2, 3))
        total = keras.ops.sum(y_true, axis=(1, 2, 3)) + keras.ops.sum(y_pred, axis=(1, 2, 3))
        return bce + keras.ops.mean(1.0 - (2.0 * intersection + 1.0) / (total + 1.0))

    data = Augmented()
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=config.epochs * len(data), alpha=0.02
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=bce_dice)
    config.output.mkdir(parents=True, exist_ok=True)
    weights_path = config.output / "lung_unet.weights.h5"
    history: list[dict] = []
    best = {"dice256": -1.0, "epoch": -1}

    class KeepBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs=None) -> None:
            probabilities = np.asarray(model.predict(held_inputs, batch_size=16, verbose=0))[..., 0]
            score = float(np.mean([dice(p > 0.5, t) for p, t in zip(probabilities, y_held, strict=True)]))
            history.append({"epoch": epoch + 1, "loss": float(logs["loss"]), "heldout_dice256": score})
            log.info("epoch %d: loss %.4f, held-out Dice at 256 px %.4f", epoch + 1, logs["loss"], score)
            if score > best["dice256"]:
                best.update(dice256=score, epoch=epoch + 1)
                with atomic_path(weights_path) as tmp:
                    model.save_weights(tmp)

    started = time.time()
    model.fit(data, epochs=config.epochs, callbacks=[KeepBest()], verbose=2)
    seconds = time.time() - started
    model.load_weights(weights_path)
    write_unet_metadata(model, config, pairs, train_pairs, held_pairs, history, best, seconds)
    return StageResult(weights_path)
