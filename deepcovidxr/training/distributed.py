"""Multi-node data-parallel training: a hand-written ``tf.function`` step run by
``tf.distribute.MultiWorkerMirroredStrategy``, configured by ``TF_CONFIG``.

Keras 3's ``model.fit`` does not run under that strategy (keras-team/keras#20585), so this loop
does what fit does for us elsewhere, driven by the same ``schedule.Schedule``: the same phases,
epochs, optimizer, class weights (per-sample weights in the loss), best-validation-AUC checkpoint
rule, early stopping and plateau rule with warm-up (``EpochRule``), and the same skip of a finished
member (``schedule.finished_member``: its record must match this run's settings and data, decided
by the chief). Phases are not checkpointed here: an interrupted run starts the member over.
Under mixed_float16 the loss is scaled (``LossScaleOptimizer``), as compile() does for fit.
Gradients are all-reduced every step, so every worker ends with the same weights. Worker 0 (the
chief) writes the member; the others write nothing unless ``DEEPCOVIDXR_WORKER_COPIES`` names a
folder (used by the tests to compare workers).

Three or more classes: a softmax head, categorical cross-entropy on one-hot labels, and the
macro one-vs-rest validation AUC (scikit-learn's), as ``training``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcovidxr.config.training_stages import TrainConfig
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.errors import UsageError
from deepcovidxr.training.schedule import (
    PLATEAU_FACTOR,
    RunRecord,
    Schedule,
    finish_member,
    finished_member,
    learning_rate_of,
    phase_optimizer,
    resolved_hyperparameters,
    set_learning_rate,
    set_precision,
    weighted_loss,
)

log = logging.getLogger(__name__)


def task_index() -> int:
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return int(config.get("task", {}).get("index", 0))


TRAIN, SKIP, REFUSE = 0, 1, 2  # the chief's decision about a member, as all workers receive it


def _chief_decides(strategy, chief_says: int) -> int:
    """The chief's answer (the others say 0) on every worker (an all-reduce): workers that each
    looked at their own disk could disagree, and one that trained alone (or stopped alone) would
    leave the others waiting forever."""
    import tensorflow as tf

    vote = tf.constant(float(chief_says))

    @tf.function
    def agree():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce("SUM", vote))

    return round(float(strategy.experimental_local_results(agree())[0]))


def _chief_decision(paths: RunPaths, record: RunRecord, overwrite: bool) -> tuple[int, UsageError | None]:
    """The chief's look at the member file: train, skip (finished, its record matches) or refuse
    (a member file no record describes), through the rule ``train.py`` follows."""
    try:
        return (SKIP if finished_member(paths, record, overwrite) else TRAIN), None
    except UsageError as error:
        return REFUSE, error


def synchronized_moments(inputs, axes: list[int]):
    """Mean and variance over the global batch, two passes: the all-reduced mean first, then the
    all-reduced squared deviations from it.

    Keras' own ``synchronized=True`` computes E[x^2] - E[x]^2 in float32, which cancels to 0 when a
    channel's mean is large against its spread (ResNet-50 from random weights at 32 px: every loss
    NaN from the first epoch, while the unsynchronized layer trains); this is as exact as the
    unsynchronized ``tf.nn.moments``."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    shape = tf.shape(inputs)
    count = tf.cast(tf.reduce_prod(tf.gather(shape, axes)), tf.float32)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    mean = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(inputs, axis=axes, keepdims=True)) / total
    squares = tf.reduce_sum(tf.square(inputs - mean), axis=axes, keepdims=True)
    variance = context.all_reduce(tf.distribute.ReduceOp.SUM, squares) / total
    return tf.squeeze(mean, axes), tf.squeeze(variance, axes)


def synchronize_batch_norm(layer) -> None:
    """Make a built Keras BatchNormalization layer use ``synchronized_moments`` when training.
    Only its statistics change: the layer's config and weights stay those of a plain layer, so
    the member file is the same as one written by ``fit``."""

    def moments(inputs, mask):
        if mask is not None:  # our members never pass masks; Keras' path handles them
            return type(layer)._moments(layer, inputs, mask)
        return synchronized_moments(inputs, list(layer._reduction_axes))

    layer._moments = moments


def _validation_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Unweighted cross-entropy, as fit's val_loss (Keras clips at its epsilon): binary for one
    score per image, categorical for (images, classes) scores against class indices."""
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    if p.ndim == 2:
        p = p / p.sum(axis=1, keepdims=True)  # as Keras' categorical cross-entropy renormalises
        return float(-np.mean(np.log(p[np.arange(len(p)), np.asarray(labels).astype(int)])))
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _agreed_to_skip(strategy, chief: bool, paths: RunPaths, record: RunRecord, config: TrainConfig) -> bool:
    """Whether every worker skips the member (the chief found it finished); the chief's refusal
    raised on every worker."""
    says, refusal = _chief_decision(paths, record, config.overwrite) if chief else (TRAIN, None)
    decision = _chief_decides(strategy, says)
    if decision == REFUSE:
        raise refusal or UsageError(f"the chief worker refused to train {config.member.short_name}; see its log")
    return decision == SKIP


def train_member_multiworker(config: TrainConfig) -> Path:
    import keras
    import tensorflow as tf

    from deepcovidxr.data.tfdata import make_dataset
    from deepcovidxr.networks.members import head_for, save_member
    from deepcovidxr.training.trainer import training_splits

    if "TF_CONFIG" not in os.environ:
        raise UsageError("--multi-worker needs TF_CONFIG (cluster workers and this task's index); see the README")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index, workers = task_index(), strategy.num_replicas_in_sync
    chief = index == 0
    member = config.member
    paths = RunPaths(config.output, member)
    record = RunRecord.for_member(config)
    if _agreed_to_skip(strategy, chief, paths, record, config):
        return paths.final
    hp = resolved_hyperparameters(config)
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    classes, train_files, val_files = training_splits(config.path, config.size, paths.unreadable if chief else None)
    outputs, activation = head_for(classes)
    schedule = Schedule.for_member(config, hp, train_files.labels, classes)
    global_batch = config.batch_size * workers
    steps = max(1, math.ceil(len(train_files) / global_batch))
    batches = _distributed_batches(strategy, config, train_files, schedule, global_batch)
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
    model = _synchronized_member(strategy, config, hp.dropout_rate, outputs, activation)
    loop = _Loop(
        strategy, model, schedule, policy, global_batch, steps, batches, val_ds, val_files.labels, classes, index
    )
    history = {phase: _train_phase(loop, phase, member.short_name) for phase in schedule.phases}
    if chief:
        write_json(
            paths.config,
            {
                "member": member.short_name,
                "workers": workers,
                "history": history,
                "hyperparameters": hp.as_dict(),
                "global_batch": global_batch,
                "classes": list(classes),
                "class_weight": schedule.class_weight,
                "schedule": schedule.as_dict(),
            },
        )
    copies = os.environ.get("DEEPCOVIDXR_WORKER_COPIES")
    # the chief's member goes through the final phase's checkpoint, so that finish_member writes
    # the record naming its digest before the member file
    target = paths.checkpoint("final") if chief else (paths.worker_copy(copies, index) if copies else None)
    if target is not None:
        meta = {"hyperparameters": hp.as_dict(), "workers": workers, "policy": policy}
        meta |= {"engine": "MultiWorkerMirroredStrategy custom loop", "history": history}
        save_member(model, target, member, meta, classes=classes)
    if chief:
        finish_member(paths, record, target)
    return paths.final


def _distributed_batches(strategy, config: TrainConfig, train_files, schedule: Schedule, global_batch: int) -> Iterator:
    """The training batches, repeated, each worker's input pipeline reading its own shard."""
    import tensorflow as tf

    from deepcovidxr.training.trainer import training_dataset

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = training_dataset(config, train_files, context.get_per_replica_batch_size(global_batch), repeat=True)
        return schedule.weigh(ds.shard(context.num_input_pipelines, context.input_pipeline_id))

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def _synchronized_member(strategy, config: TrainConfig, dropout: float, outputs: int, activation: str):
    """The member built under ``strategy`` from ``--weights``, its batch-norm layers computing
    their statistics over the global batch."""
    import keras

    from deepcovidxr.networks.members import build_member

    member = config.member
    with strategy.scope():
        model = build_member(
            member.backbone,
            member.size,
            dropout=dropout,
            weights=config.weights,
            outputs=outputs,
            activation=activation,
        )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Batch statistics over the global batch: moving averages then stay identical on
            # every worker (local statistics would make the workers' weights drift apart).
            synchronize_batch_norm(layer)
    return model


@dataclass(frozen=True)
class _Loop:
    """What every phase of the custom loop uses."""

    strategy: Any
    model: Any
    schedule: Schedule
    policy: str
    global_batch: int
    steps: int  # per epoch
    batches: Iterator  # the distributed training batches, repeated
    val_ds: Any
    val_labels: np.ndarray
    classes: tuple[str, ...]
    index: int  # this worker's


def _train_step(loop: _Loop, optimizer):
    """One distributed training step (the global batch's summed loss) for this phase's optimizer;
    under mixed_float16 the loss is scaled, as compile() does for fit."""
    import tensorflow as tf

    model, scaled = loop.model, loop.policy == "mixed_float16"

    def step_fn(images, labels, weights=None):
        with tf.GradientTape() as tape:
            predictions = model(images, training=True)
            loss = weighted_loss(labels, predictions, weights, loop.global_batch)
            target = optimizer.scale_loss(loss) if scaled else loss
        variables = model.trainable_variables
        gradients = tape.gradient(target, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=False))  # unscales when scaled
        return loss

    @tf.function
    def train_step(iterator):
        per_replica = loop.strategy.run(step_fn, args=next(iterator))
        return loop.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def _validate(loop: _Loop) -> tuple[float, float]:
    """Validation AUC (macro one-vs-rest for three or more classes) and loss of the model now."""
    from deepcovidxr.scoring.task import task_for

    task = task_for(loop.classes)
    outputs = np.concatenate([np.asarray(loop.model(x, training=False), np.float32) for x, _ in loop.val_ds])
    scores = task.member_scores(outputs)
    return task.auc(loop.val_labels, scores), _validation_loss(loop.val_labels, scores)


def _train_phase(loop: _Loop, phase: str, name: str) -> dict[str, list[float]]:
    """Train ``phase`` under the schedule's rule with a fresh optimizer; the model ends with the
    best epoch's weights. The phase's history."""
    from deepcovidxr.networks.members import set_backbone_trainable

    model, schedule = loop.model, loop.schedule
    best_weights = None
    set_backbone_trainable(model, phase != "initial")
    with loop.strategy.scope():  # a fresh optimizer per phase, built for this phase's variables
        optimizer = phase_optimizer(schedule.optimizer, schedule.learning_rate, schedule.momentum, loop.policy)
        optimizer.build(model.trainable_variables)
    train_step = _train_step(loop, optimizer)
    rule = schedule.rule(phase)
    records: dict[str, list[float]] = {"loss": [], "val_auc": [], "val_loss": [], "learning_rate": []}
    for epoch in range(schedule.epochs):
        losses = [float(train_step(loop.batches)) for _ in range(loop.steps)]
        auc, val_loss = _validate(loop)
        rate = learning_rate_of(optimizer)
        epoch_numbers = {"loss": np.mean(losses), "val_auc": auc, "val_loss": val_loss, "learning_rate": rate}
        for key, value in epoch_numbers.items():
            records[key].append(float(value))
        log.info(
            "worker %d phase %s epoch %d: loss %.4f val_auc %.4f", loop.index, phase, epoch + 1, np.mean(losses), auc
        )
        decision = rule.update(epoch, auc, val_loss)
        if decision.checkpoint:
            best_weights = [w.numpy() for w in model.weights]
        if decision.cut:
            set_learning_rate(optimizer, rate * PLATEAU_FACTOR)
        if decision.stop:
            break
    if best_weights is None:  # as train_member: every validation loss was NaN or infinite
        raise UsageError(
            f"{name} phase {phase}: no epoch had a finite validation loss (training diverged); "
            "try a lower --learning-rate"
        )
    for variable, value in zip(model.weights, best_weights, strict=True):
        variable.assign(value)
    return records
