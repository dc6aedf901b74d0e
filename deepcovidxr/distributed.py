"""Multi-node data-parallel training: a hand-written ``tf.function`` step run by
``tf.distribute.MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG``.

Keras 3's ``model.fit`` does not run under that strategy (keras-team/keras#20585), so this loop
does what fit does for us elsewhere, with the same schedule: phase 1 on a frozen backbone, phase 2
on everything, SGD with Nesterov, best-validation-AUC weights kept, early stopping (5, then 10),
learning rate x0.1 after 3 flat epochs. Gradients are all-reduced every step, so every worker
ends with the same weights. Worker 0 (the chief) writes the member; the others write nothing
unless ``DEEPCOVIDXR_WORKER_COPIES`` names a folder (used by the tests to compare workers).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from deepcovidxr import hyperparams
from deepcovidxr.atomic import write_json
from deepcovidxr.errors import UsageError
from deepcovidxr.layout import Split
from deepcovidxr.training import MIN_DELTA, PATIENCE, PHASES, PLATEAU_PATIENCE, RunPaths, TrainConfig

log = logging.getLogger(__name__)


def task_index() -> int:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return int(config.get("task", {}).get("index", 0))


def train_member_multiworker(config: TrainConfig) -> Path:
    import keras
    import tensorflow as tf

    from deepcovidxr import metrics
    from deepcovidxr.data import list_split, make_dataset
    from deepcovidxr.models import build_member, save_member, set_backbone_trainable
    from deepcovidxr.training import make_optimizer, set_precision

    if "TF_CONFIG" not in os.environ:
        raise UsageError("--multi-worker needs TF_CONFIG (cluster workers and this task's index); see the README")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index, workers = task_index(), strategy.num_replicas_in_sync
    chief = index == 0
    member = config.member
    paths = RunPaths(config.output, member)
    hp = hyperparams.load(config.hyperparameters).with_overrides(
        learning_rate=config.learning_rate, momentum=config.momentum, dropout_rate=config.dropout
    )
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.mixed_precision)
    train_files, val_files = list_split(config.path, Split.TRAIN), list_split(config.path, Split.VALIDATION)
    global_batch = config.batch_size * workers
    steps = max(1, math.ceil(len(train_files) / global_batch))

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(global_batch)
        ds = make_dataset(
            train_files,
            config.size,
            batch,
            training=True,
            seed=config.seed,
            oversample=config.oversample,
            cache=config.cache,
            repeat=True,
        )
        return ds.shard(context.num_input_pipelines, context.input_pipeline_id)

    distributed = iter(strategy.distribute_datasets_from_function(dataset_fn))
    val_ds = make_dataset(val_files, config.size, config.batch_size, training=False, cache=config.cache)
    log.info(
        "worker %d of %d: %s, %d steps per epoch, global batch %d, %s",
        index,
        workers,
        member.short_name,
        steps,
        global_batch,
        policy,
    )

    with strategy.scope():
        model = build_member(member.backbone, member.size, dropout=hp.dropout_rate, weights=config.weights)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Batch statistics over the global batch: moving averages then stay identical on
            # every worker (local statistics would make the workers' weights drift apart).
            layer.synchronized = True
    optimizer = None
    loss_fn = keras.losses.BinaryCrossentropy(reduction="none")

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            per_example = loss_fn(tf.reshape(labels, (-1, 1)), tf.cast(predictions, tf.float32))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=False))
        return loss

    history: dict[str, dict[str, list[float]]] = {}
    best_weights = None
    from_scratch = config.from_scratch
    for phase in PHASES:
        if phase == "initial" and from_scratch:  # as train_member: nothing to warm up on
            continue
        set_backbone_trainable(model, phase != "initial")
        with strategy.scope():  # a fresh optimizer per phase, built for this phase's variables
            optimizer = make_optimizer(config.optimizer, hp.learning_rate, hp.momentum)
            optimizer.build(model.trainable_variables)

        @tf.function
        def train_step(iterator):
            per_replica = strategy.run(step_fn, args=next(iterator))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        best, best_epoch, flat, records = -np.inf, 0, 0, {"loss": [], "val_auc": []}
        for epoch in range(config.epochs):
            losses = [float(train_step(distributed)) for _ in range(steps)]
            scores = np.concatenate([np.asarray(model(x, training=False), np.float32)[:, 0] for x, _ in val_ds])
            auc = metrics.auc_or_nan(val_files.labels, scores)
            records["loss"].append(float(np.mean(losses)))
            records["val_auc"].append(auc)
            log.info(
                "worker %d phase %s epoch %d: loss %.4f val_auc %.4f", index, phase, epoch + 1, np.mean(losses), auc
            )
            if np.isfinite(auc) and auc > best + MIN_DELTA:
                best, best_epoch, flat = auc, epoch + 1, 0
                best_weights = [w.numpy() for w in model.weights]
            elif epoch >= config.warmup:  # the same warm-up as train_member's callbacks
                flat += 1
                if flat % PLATEAU_PATIENCE == 0:
                    optimizer.learning_rate.assign(float(optimizer.learning_rate.numpy()) * 0.1)
                if epoch + 1 - max(best_epoch, config.warmup) >= PATIENCE[phase]:
                    break
        if best_weights is not None:
            for variable, value in zip(model.weights, best_weights, strict=True):
                variable.assign(value)
        history[phase] = records
    copies = os.environ.get("DEEPCOVIDXR_WORKER_COPIES")
    target = paths.final if chief else (Path(copies) / f"worker_{index}" / member.legacy_filename if copies else None)
    if target is not None:
        save_member(
            model,
            target,
            member,
            {
                "hyperparameters": hp.as_dict(),
                "workers": workers,
                "policy": policy,
                "engine": "MultiWorkerMirroredStrategy custom loop",
                "history": history,
            },
        )
        if chief:
            write_json(
                paths.config,
                {
                    "member": member.short_name,
                    "workers": workers,
                    "history": history,
                    "hyperparameters": hp.as_dict(),
                    "global_batch": global_batch,
                },
            )
    return paths.final
