"""NIH ChestX-ray14 pretraining of one backbone with a 14-finding sigmoid head.

Fixes of the original (SPEC s.7): the backbone is actually trained (the original's in-place
freeze left 5 of 6 backbones at ImageNet); the official patient-wise train_val/test lists are
used, with a patient-wise validation split; all 14 findings are kept and "No Finding" images stay
in as all-zero targets; images are resized with antialiased Lanczos, not nearest neighbour; the
size is in the output name (``nih_weight_<Model>_<size>.h5``), which tuner.py and train.py load
directly (the 14-unit head is swapped for a 1-unit head on load). Per-finding AUROC on the
official test list is written as CSV.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from deepcovidxr.config.training_stages import PretrainConfig
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.run_paths import PretrainPaths
from deepcovidxr.data import nih
from deepcovidxr.errors import UsageError

log = logging.getLogger(__name__)


def checkpoint_name(model: str, size: int) -> str:
    return PretrainPaths(Path(), model, size).checkpoint.name


def auroc_name(model: str, size: int) -> str:
    return PretrainPaths(Path(), model, size).auroc.name


def pretrain(config: PretrainConfig) -> Path:
    """Pretrain ``config.model`` at ``config.size`` on the NIH folder ``config.path`` (its images
    present): patient-wise splits, SGD with Nesterov momentum, the best epoch by validation AUROC
    kept as the checkpoint (an existing checkpoint is evaluated, not retrained, unless
    ``overwrite``: a rerun needs no ImageNet download), then per-finding AUROC on the official test
    list and a summary. Returns the checkpoint."""
    import keras

    from deepcovidxr.data.tfdata import SplitFiles, make_dataset
    from deepcovidxr.networks.members import build_member, load_weights_file
    from deepcovidxr.training.schedule import PLATEAU_PATIENCE, best_checkpoint, set_precision

    root = Path(config.path)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint = output / checkpoint_name(config.model, config.size)
    auroc_csv = output / auroc_name(config.model, config.size)
    splits = nih.load_splits(root, config.validation_fraction, config.seed, require_images=True)
    for name, frame in splits.items():
        if frame.empty:
            raise UsageError(f"{root}: no images found for the {name} split")
    summary = splits.summary()
    log.info("NIH: %s", ", ".join(f"{k} {v['images']} images / {v['patients']} patients" for k, v in summary.items()))

    def files(frame) -> SplitFiles:
        return SplitFiles(frame["path"].astype(str).tolist(), frame[list(nih.FINDINGS)].to_numpy(np.float32))

    train, validation, test = files(splits.train), files(splits.validation), files(splits.test)
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    train_ds = make_dataset(train, config.size, config.batch_size, training=True, seed=config.seed, cache=config.cache)
    val_ds = make_dataset(validation, config.size, config.batch_size, training=False, cache=config.cache)
    if checkpoint.is_file() and not config.overwrite:
        # Our own checkpoint first: the initial weights (an ImageNet download) are then never
        # needed, so a rerun resumes offline.
        log.info("%s exists; evaluating it (--overwrite retrains)", checkpoint)
        model = build_member(config.model, config.size, dropout=0.0, weights=None, outputs=len(nih.FINDINGS))
        load_weights_file(model, checkpoint)
    else:
        model = build_member(config.model, config.size, dropout=0.0, weights=config.weights, outputs=len(nih.FINDINGS))
        model.compile(
            optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum, nesterov=True),
            loss="binary_crossentropy",
            metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=len(nih.FINDINGS))],
        )
        info = {
            "pretraining": "NIH ChestX-ray14",
            "findings": list(nih.FINDINGS),
            "policy": policy,
            "splits": summary,
            "initial_weights": str(config.weights),
            "seed": config.seed,
        }
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            verbose=2,
            callbacks=[
                best_checkpoint(checkpoint, None, info),
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=10, min_delta=1e-3),
                keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.1, patience=PLATEAU_PATIENCE),
                keras.callbacks.CSVLogger(str(PretrainPaths(output, config.model, config.size).log_csv)),
            ],
        )
        load_weights_file(model, checkpoint)
    test_ds = make_dataset(test, config.size, config.batch_size, training=False, cache=False)
    scores = np.asarray(model.predict(test_ds, verbose=0), np.float64)
    frame = nih.per_finding_auroc(test.labels, scores)
    nih.write_auroc_csv(frame, auroc_csv)
    mean = frame.loc[frame["finding"] == "mean", "auroc"].item()
    log.info("official test list: mean AUROC over findings %.4f (%s)", mean, auroc_csv)
    write_json(
        PretrainPaths(output, config.model, config.size).summary,
        {"checkpoint": checkpoint.name, "test_auroc_mean": mean, "splits": summary},
    )
    return checkpoint
