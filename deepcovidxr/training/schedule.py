"""The training schedule both member-training loops follow: Keras ``fit`` (``training``) and the
multi-worker ``tf.function`` loop (``distributed``).

One ``Schedule`` holds what a run does: its phases (frozen backbone, then everything; only the
second from random weights), most epochs, optimizer and learning rate, the warm-up before early
stopping and the learning-rate plateau rule watch the validation AUC, the class weights, and the
skip rule for a finished member (:class:`RunRecord`). ``EpochRule`` is the per-phase bookkeeping (best checkpoint by
validation AUC, early stopping, plateau cut) as plain Python, so both loops take the same
decisions from the same numbers; Keras ``fit`` runs it through ``ScheduleCallback``.

The validation AUC is the binary AUC for Negative/Positive and the macro one-vs-rest AUC (the
mean of each class's AUC against the rest) for three or more classes; the loss is binary or
categorical cross-entropy to match the head (sigmoid or softmax).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from deepcovidxr.contract import classes as class_names
from deepcovidxr.contract.layout import Member, Split
from deepcovidxr.contract.run_paths import PHASES, RunPaths
from deepcovidxr.errors import UsageError
from deepcovidxr.scoring.task import task_for

log = logging.getLogger(__name__)

PATIENCE = {"initial": 5, "final": 10}
MIN_DELTA = 1e-3  # early stopping's least AUC gain
PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.1
PLATEAU_MIN_DELTA = 1e-4  # Keras ReduceLROnPlateau's default, kept from the original
OPTIMIZERS = ("sgd", "adam")


def set_precision(precision) -> str:
    """Set Keras' global dtype policy for a training ``--precision`` (a value or a resolved
    :class:`deepcovidxr.runtime.precision.Policy`; auto: fp16 on a GPU, bf16 on a CPU with native
    bf16, else fp32) and return it: float32, mixed_bfloat16 or mixed_float16."""
    import keras

    from deepcovidxr.runtime.precision import for_training

    policy = for_training(precision).keras_dtype_policy
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


def make_optimizer(name: str, learning_rate: float, momentum: float):
    """SGD with Nesterov momentum (the original's, the default) or Adam (momentum unused), which
    trains randomly initialised backbones far more readily on small data."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise UsageError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def compile_member(
    model, learning_rate: float, momentum: float, optimizer: str = "sgd", classes=class_names.BINARY
) -> None:
    """Binary task: binary cross-entropy, accuracy, AUC, precision, recall. Three or more
    classes (one-hot labels, softmax head): categorical cross-entropy, accuracy and ``auc``, the
    macro one-vs-rest AUC (Keras' AUC over one label per class, averaged)."""
    import keras

    task = task_for(classes)
    metrics = [getattr(keras.metrics, name)(**kwargs) for name, kwargs in task.keras_metrics]
    model.compile(optimizer=make_optimizer(optimizer, learning_rate, momentum), loss=task.loss, metrics=metrics)


def phase_optimizer(name: str, learning_rate: float, momentum: float, policy: str):
    """The optimizer for a hand-written loop: under mixed_float16 wrapped in a dynamic loss
    scale (float16 gradients underflow; Keras compile() does the same wrapping for fit).
    bfloat16 has float32's exponent range and needs none."""
    import keras

    optimizer = make_optimizer(name, learning_rate, momentum)
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def checkpoint_score(val_auc: float | None, val_loss: float | None) -> float:
    """What "best epoch" means: the highest validation AUC; where the validation set holds a
    single class (tiny subsets) AUC is undefined and the lowest validation loss decides. An
    epoch whose validation loss is NaN or infinite (diverged: NaN scores, which Keras' AUC still
    counts as a finite 0 or 0.5) is never the best."""
    if val_loss is not None and not np.isfinite(float(val_loss)):
        return -np.inf
    auc = np.nan if val_auc is None else float(val_auc)
    if np.isfinite(auc):
        return auc
    return -np.inf if val_loss is None else -float(val_loss)


def weighted_loss(labels, predictions, weights, global_batch: int):
    """Binary cross-entropy (one output) or categorical cross-entropy (one-hot labels, a softmax
    head) weighted per sample, summed and divided by the global batch: what Keras fit minimises
    with sample weights ("sum over batch size"), and the right scale for gradients all-reduced by
    summation across replicas."""
    import keras
    import tensorflow as tf

    # Keras's own loss object, given the weights as fit gives them: the same clipping and weighting.
    sample_weight = None if weights is None else tf.cast(weights, tf.float32)
    if predictions.shape[-1] is not None and predictions.shape[-1] > 1:
        per_example = keras.losses.CategoricalCrossentropy(reduction="none")(
            tf.cast(labels, tf.float32), tf.cast(predictions, tf.float32), sample_weight=sample_weight
        )
        return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
    per_example = keras.losses.BinaryCrossentropy(reduction="none")(
        tf.reshape(labels, (-1, 1)),
        tf.cast(predictions, tf.float32),
        sample_weight=sample_weight,
    )
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)


@dataclass(frozen=True)
class Decision:
    checkpoint: bool  # this epoch is the best so far: keep its weights
    cut: bool  # multiply the learning rate by PLATEAU_FACTOR
    stop: bool  # early stopping


@dataclass
class EpochRule:
    """One phase's bookkeeping, the same semantics as Keras EarlyStopping(start_from_epoch=warmup)
    and ReduceLROnPlateau waiting ``warmup`` epochs (the first AUCs from random weights are noise),
    with the checkpoint rule of :func:`checkpoint_score` watching every epoch."""

    patience: int
    warmup: int = 0
    best_score: float = -np.inf
    best_epoch: int = 0
    _stop_best: float = field(default=-np.inf, repr=False)
    _stop_wait: int = field(default=0, repr=False)
    _plateau_best: float = field(default=-np.inf, repr=False)
    _plateau_wait: int = field(default=0, repr=False)

    def update(self, epoch: int, val_auc: float | None, val_loss: float | None = None) -> Decision:
        """``epoch`` counts from 0."""
        score = checkpoint_score(val_auc, val_loss)
        checkpoint = bool(np.isfinite(score) and score > self.best_score)
        if checkpoint:
            self.best_score, self.best_epoch = score, epoch + 1
        cut = stop = False
        if epoch >= self.warmup:
            auc = np.nan if val_auc is None else float(val_auc)
            if auc > self._plateau_best + PLATEAU_MIN_DELTA:  # NaN never improves
                self._plateau_best, self._plateau_wait = auc, 0
            else:
                self._plateau_wait += 1
                if self._plateau_wait >= PLATEAU_PATIENCE:
                    cut, self._plateau_wait = True, 0
            self._stop_wait += 1
            if auc - MIN_DELTA > self._stop_best:
                self._stop_best, self._stop_wait = auc, 0
            elif self._stop_wait >= self.patience and epoch > 0:
                stop = True
        return Decision(checkpoint, cut, stop)


@dataclass(frozen=True)
class Schedule:
    phases: tuple[str, ...]
    epochs: int
    optimizer: str
    learning_rate: float
    momentum: float
    warmup: int = 0
    class_weight: dict[int, float] | None = None

    @classmethod
    def for_member(cls, config, hp, train_labels: np.ndarray, classes=class_names.BINARY) -> Schedule:
        """From a TrainConfig, its resolved hyperparameters, the training labels and the task's
        classes (``--class-weight``: balanced or explicit, one weight per class)."""
        from deepcovidxr.data.tfdata import resolve_class_weights

        # From random weights a head fitted on a frozen random backbone learns nothing and
        # leaves phase 2 a badly scaled head: the whole network trains from the start.
        phases = PHASES[1:] if config.from_scratch else PHASES
        return cls(
            phases=tuple(phases),
            epochs=config.epochs,
            optimizer=config.optimizer,
            learning_rate=hp.learning_rate,
            momentum=hp.momentum,
            warmup=config.warmup,
            class_weight=resolve_class_weights(config.class_weight, train_labels, classes),
        )

    def rule(self, phase: str) -> EpochRule:
        return EpochRule(patience=PATIENCE[phase], warmup=self.warmup)

    def weigh(self, dataset):
        """(images, labels) -> (images, labels, class weight of each label) when class weights
        are on; both loops train on this, so the weighting is one mechanism. Labels are 0/1
        (binary) or one-hot rows (the class is the row's argmax)."""
        import tensorflow as tf

        if self.class_weight is None:
            return dataset
        table = tf.constant([self.class_weight[i] for i in range(len(self.class_weight))], tf.float32)

        def index(y):
            if y.shape.rank is not None and y.shape.rank >= 2:
                return tf.argmax(y, axis=-1, output_type=tf.int32)
            return tf.cast(y, tf.int32)

        return dataset.map(lambda x, y: (x, y, tf.gather(table, index(y))))

    def as_dict(self) -> dict:
        return {
            "phases": list(self.phases),
            "epochs": self.epochs,
            "optimizer": self.optimizer,
            "warmup_epochs": self.warmup,
            "class_weight": self.class_weight,
            "patience": {p: PATIENCE[p] for p in self.phases},
        }


def set_learning_rate(optimizer, value: float) -> None:
    optimizer.learning_rate = value  # LossScaleOptimizer passes it to the inner optimizer


def learning_rate_of(optimizer) -> float:
    import keras

    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def schedule_callback(rule: EpochRule, path: Path, member: Member | None, info: dict, classes=None):
    """Keras fit's side of :class:`EpochRule`: saves the best epoch as a member file (atomic,
    its sidecar naming ``classes``), cuts the learning rate, stops; logs the learning rate every
    epoch, warm-up included."""
    import keras

    from deepcovidxr.networks.members import save_member

    class ScheduleCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs=None) -> None:
            logs = logs if logs is not None else {}
            logs["learning_rate"] = learning_rate_of(self.model.optimizer)
            decision = rule.update(epoch, logs.get("val_auc"), logs.get("val_loss"))
            if decision.checkpoint:
                auc = float(logs.get("val_auc", np.nan))
                save_member(self.model, path, member, {**info, "val_auc": auc, "epoch": epoch + 1}, classes=classes)
            if decision.cut:
                set_learning_rate(self.model.optimizer, logs["learning_rate"] * PLATEAU_FACTOR)
            if decision.stop:
                self.model.stop_training = True

    return ScheduleCallback()


def best_checkpoint(path: Path, member: Member | None, info: dict, classes=None):
    """A callback that only keeps the best epoch (by :func:`checkpoint_score`) as a member file;
    for loops whose stopping is Keras's own (tuner trials, NIH pretraining)."""
    never = sys.maxsize  # a warm-up that never ends: no plateau cut, no stop
    return schedule_callback(EpochRule(patience=never, warmup=never), path, member, info, classes)


# ---- what a run was trained with: completion records and the skip rule ------------------------


def resolved_hyperparameters(config):
    """The hyperparameters file (or the defaults) with the explicit flags over it."""
    from deepcovidxr.config import hyperparams

    return hyperparams.load(config.hyperparameters).with_overrides(
        learning_rate=config.learning_rate, momentum=config.momentum, dropout_rate=config.dropout
    )


def data_fingerprint(view_dir: Path, classes) -> dict:
    """The Train and Validation images of a view folder, each by relative name, size and mtime,
    hashed: cheap (no image is read) and changed by any image added, removed, moved between
    classes or rewritten."""
    from deepcovidxr.data.tfdata import list_split

    digest = hashlib.sha256()
    count = 0
    for split in (Split.TRAIN, Split.VALIDATION):
        for name in list_split(view_dir, split, tuple(classes)).files:
            stat = Path(name).stat()
            relative = Path(name).relative_to(view_dir).as_posix()
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            count += 1
    return {"files": count, "sha256": digest.hexdigest()}


def weights_identity(weights: str | None) -> str | dict:
    """-w as the record holds it: none, imagenet, or a file by name, size and content digest (a
    file rewritten in place under the same name is other initial weights)."""
    from deepcovidxr.runtime.digest import file_sha256  # the one file hasher (the export cache's key)

    if weights is None or str(weights).lower() == "none":
        return "none"
    path = Path(weights)
    if path.is_file():
        return {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}
    return str(weights)


def _canonical(value):
    """As it reads back from the record's JSON (tuples as lists, int keys as strings)."""
    return json.loads(json.dumps(value, default=str))


@dataclass(frozen=True)
class RunRecord:
    """Everything that shapes a training run (``settings``) and the data it trains on (``data``,
    :func:`data_fingerprint`). A phase is done, and a member file finished, only when the record
    written when it ended equals this one; a record that differs is ignored with a warning
    naming what changed, and the work redone."""

    settings: dict
    data: dict

    @classmethod
    def for_member(cls, config) -> RunRecord:
        """This run's record, from a TrainConfig: its resolved hyperparameters, the classes and the
        data fingerprint of its view folder (computed here, once per member)."""
        from deepcovidxr.contract import classes as class_names
        from deepcovidxr.runtime.precision import for_training

        hp = resolved_hyperparameters(config)
        classes = class_names.discover(config.path)
        settings = {
            "member": config.member.short_name,
            "backbone": config.model,
            "size": config.size,
            "crop": config.member.crop.value,
            "classes": list(classes),
            "phases": list(PHASES[1:] if config.from_scratch else PHASES),
            "epochs": config.epochs,
            "optimizer": config.optimizer,
            "learning_rate": hp.learning_rate,
            "momentum": hp.momentum,
            "dropout": hp.dropout_rate,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "warmup": config.warmup,
            "class_weight": config.class_weight,
            "oversample": config.oversample,
            # A bool as records have always held it (a record that differs retrains the member).
            "mixed_precision": for_training(config.precision).mixed,
            "initial_weights": weights_identity(config.weights),
            "repeats": config.repeats,
        }
        return cls(_canonical(settings), data_fingerprint(config.path, classes))

    def with_settings(self, **values) -> RunRecord:
        """One run of ``--repeats``: its own seed, one repeat."""
        return replace(self, settings=_canonical({**self.settings, **values}))

    @property
    def key(self) -> str:
        text = json.dumps({"settings": self.settings, "data": self.data}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, stored: dict | None) -> list[str]:
        """What a stored record says differently ([] when it is this run's), for the warning."""
        if stored is None:
            return ["no record"]
        before = stored.get("settings", {})
        changes = [
            f"{name} {before.get(name)!r} -> {self.settings.get(name)!r}"
            for name in sorted(set(before) | set(self.settings))
            if before.get(name) != self.settings.get(name)
        ]
        if stored.get("data") != self.data:
            files = (stored.get("data") or {}).get("files")
            changes.append(f"other data (Train/Validation: {files} -> {self.data['files']} files, or files changed)")
        return changes

    def write(self, path: Path, **extra) -> None:
        from deepcovidxr.contract.atomic import write_json

        write_json(path, {"settings": self.settings, "data": self.data, "key": self.key, **extra})

    def matches(self, path: Path, what: str) -> bool:
        """Whether the record at ``path`` is this run's; a record of another run is logged as
        ignored (``what`` names the work it was about)."""
        stored = read_record(path)
        if stored is None:
            return False
        changes = self.differences(stored)
        if changes:
            log.warning("%s was done with other settings or data (%s); ignored, redoing it", what, "; ".join(changes))
        return not changes


def read_record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished_member(paths: RunPaths, record: RunRecord, overwrite: bool) -> bool:
    """The skip rule of both loops and train_all: a member file is finished when its record
    (``paths.member_record``) matches this run's settings and data and names this very file's
    digest. A record that differs means our own earlier run under other settings or data: the
    member is retrained over it. A member file no record describes (another tool's, the
    authors', an older version's run) is a user's file: refused rather than overwritten.
    ``--overwrite`` retrains in every case."""
    from deepcovidxr.runtime.digest import file_sha256

    if not paths.final.is_file() or overwrite:
        return False
    stored = read_record(paths.member_record)
    if stored is None:
        raise UsageError(
            f"{paths.final} exists, but no {paths.member_record.name} records how it was trained (a file from "
            "elsewhere or an older version); move it away, or pass --overwrite to retrain it"
        )
    if not record.matches(paths.member_record, str(paths.final)):
        return False
    if stored.get("member_sha256") != file_sha256(paths.final):
        log.warning("%s is not the file its record describes (an interrupted write?); retraining it", paths.final)
        return False
    log.info("%s exists and its record matches; skipping (--overwrite retrains)", paths.final)
    return True


def finish_member(paths: RunPaths, record: RunRecord, source: Path, **extra) -> Path:
    """Copy a trained member file (and its sidecar) to the final name, the record first: it
    names the file's digest, so a member file whose copy was interrupted never passes for
    finished."""
    from deepcovidxr.contract.atomic import write_bytes
    from deepcovidxr.networks.members import sidecar

    data = Path(source).read_bytes()
    write_bytes(sidecar(paths.final), sidecar(source).read_bytes())
    record.write(
        paths.member_record,
        member_sha256=hashlib.sha256(data).hexdigest(),
        finished=time.strftime("%FT%T"),
        **extra,
    )
    write_bytes(paths.final, data)  # last: with the record, what marks the member finished
    return paths.final
