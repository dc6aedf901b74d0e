"""Train one ensemble member: phase 1 fits the head on a frozen backbone, phase 2 fine-tunes all.

Each phase gets fresh callbacks (the original reused its learning-rate callback across phases):
best-validation-AUC checkpoint, early stopping (patience 5, then 10), learning rate x0.1 after 3
flat epochs. SGD with Nesterov momentum in both phases. The final member is written directly as
``<output>/<Prefix>_<size>_up_<crop>.h5`` with its curves, CSV log, TensorBoard logs and the run's
config.

Reruns: a phase is done only when its completion record (``RunPaths.phase_record``,
written when the phase ends) holds this run's settings and data fingerprint
(``schedule.RunRecord``); a checkpoint alone proves nothing (it is written at the first improving
epoch). An unfinished phase resumes at its last epoch from ``RunPaths.resume_state`` (weights,
optimizer slots, learning rate, the ``EpochRule``'s counters and the history so far, saved every
epoch; :mod:`deepcovidxr.training.phase_state`); a state, record or checkpoint of other settings or
data is ignored with a warning and the phase redone. A finished member is skipped only when its
record matches (``schedule.finished_member``). ``--repeats``: :mod:`deepcovidxr.training.repeats`.

The classes are the tree's class folders (:func:`deepcovidxr.contract.classes.discover`): Negative/Positive
trains the original's sigmoid member; three or more classes a softmax member (categorical
cross-entropy, macro one-vs-rest validation AUC), its sidecar naming the classes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepcovidxr.config.hyperparams import Hyperparameters
from deepcovidxr.config.training_stages import TrainConfig
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.layout import Member, Split
from deepcovidxr.contract.run_paths import PretrainPaths, RunPaths, TunerPaths
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.training.phase_state import (
    PhaseState,
    forget_phase,
    load_phase_state,
    progress_callback,
    read_history,
    restore_phase_state,
)
from deepcovidxr.training.repeats import best_of_repeats
from deepcovidxr.training.schedule import (
    EpochRule,
    RunRecord,
    Schedule,
    compile_member,
    finish_member,
    finished_member,
    read_record,
    resolved_hyperparameters,
    schedule_callback,
    set_precision,
)

log = logging.getLogger(__name__)


def distribution_strategy():
    """MirroredStrategy over all visible GPUs when there are several, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def phase_callbacks(
    phase: str,
    paths: RunPaths,
    member: Member,
    info: dict,
    rule: EpochRule,
    classes: tuple[str, ...] | None = None,
    progress=None,
) -> list:
    """Fresh instances for every phase (``rule`` too, unless restored from the phase's resume
    state). The schedule's rule (checkpoint, plateau, stopping) runs first so the epoch's history
    row sees its learning rate; ``progress`` (:func:`progress_callback`) then writes the history
    and the resume state (without it, Keras' CSV log writes the history)."""
    import keras

    paths.plots(phase).mkdir(parents=True, exist_ok=True)
    return [
        schedule_callback(rule, paths.checkpoint(phase), member, {**info, "phase": phase}, classes),
        progress if progress is not None else keras.callbacks.CSVLogger(str(paths.history(phase))),
        keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard / phase), write_graph=False, profile_batch=0),
    ]


def train_member(config: TrainConfig) -> Path:
    """Run both phases for one member (``--repeats`` times when asked); return the final ``_up_``
    file."""
    paths = RunPaths(config.output, config.member)
    record = RunRecord.for_member(config)
    if finished_member(paths, record, config.overwrite):
        return paths.final
    if config.repeats > 1:
        return best_of_repeats(config, paths, record, _train_once)
    return _train_once(config, paths, record)


@dataclass(frozen=True)
class _Run:
    """What every phase of one training run shares."""

    config: TrainConfig
    paths: RunPaths
    record: RunRecord
    hp: Hyperparameters
    schedule: Schedule
    classes: tuple[str, ...]
    strategy: Any
    info: dict


def _train_once(config: TrainConfig, paths: RunPaths, record: RunRecord) -> Path:
    import keras

    from deepcovidxr.data.tfdata import make_dataset
    from deepcovidxr.reports.plots import plot_training_curves

    member = config.member
    hp = resolved_hyperparameters(config)
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.precision)
    classes, train_files, val_files = training_splits(config.path, config.size, paths.unreadable)
    schedule = Schedule.for_member(config, hp, train_files.labels, classes)
    strategy = distribution_strategy()
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    train_ds = schedule.weigh(training_dataset(config, train_files, global_batch))
    val_ds = make_dataset(val_files, config.size, global_batch, training=False, cache=config.cache)
    info = _run_info(config, hp, policy, strategy.num_replicas_in_sync, classes, train_files, val_files)
    run_config = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "member": member.short_name,
        **info,
        "classes": list(classes),
        "class_weight": schedule.class_weight,
        "schedule": schedule.as_dict(),
        "started": time.strftime("%FT%T"),
    }
    write_json(paths.config, run_config)
    log.info(
        "training %s on %s; validation %s; %s; global batch %d",
        member.short_name,
        train_files.describe(),
        val_files.describe(),
        policy,
        global_batch,
    )
    if "initial" not in schedule.phases:
        log.info("random initial weights: skipping the frozen-backbone phase")

    run = _Run(config, paths, record, hp, schedule, classes, strategy, info)
    histories: dict[str, dict] = {}
    best_epochs: dict[str, int] = {}
    retrained = config.overwrite  # once a phase trains, the later phases' records are from before
    for phase in schedule.phases:
        if not retrained and _phase_done(run, phase):
            histories[phase] = read_history(paths.history(phase))
            best_epochs[phase] = int(read_record(paths.phase_record(phase)).get("best_epoch", 0))
            continue
        # an earlier phase trained in this run: whatever this phase left before started elsewhere
        state = None if retrained else load_phase_state(paths.resume_state(phase), record.key)
        retrained = True
        histories[phase], best_epochs[phase] = _train_phase(run, phase, state, train_ds, val_ds)
    _write_log(paths.log_csv, histories)
    plot_training_curves(paths.curves, histories, title=member.short_name)
    write_json(
        paths.config,
        {
            **run_config,
            "finished": time.strftime("%FT%T"),
            "final": paths.final.name,
            "best": _best_epoch(histories["final"], best_epochs["final"]),
            "history": {p: {k: [float(v) for v in vs] for k, vs in h.items()} for p, h in histories.items()},
        },
    )
    finish_member(paths, record, paths.checkpoint("final"))
    log.info("wrote %s", paths.final)
    return paths.final


def _run_info(config: TrainConfig, hp: Hyperparameters, policy: str, replicas: int, classes, train_files, val_files):
    """What the run config and every checkpoint's sidecar record of the run."""
    return {
        "hyperparameters": hp.as_dict(),
        "policy": policy,
        "replicas": replicas,
        "global_batch": config.batch_size * replicas,
        "train_images": len(train_files),
        "train_positives": train_files.positives,
        "validation_images": len(val_files),
        "validation_positives": val_files.positives,
        "initial_weights": str(config.weights),
        "warmup_epochs": config.warmup,
        "seed": config.seed,
        **class_counts(classes, train_files, val_files),
    }


def _phase_done(run: _Run, phase: str) -> bool:
    """Whether an earlier run of these settings and data finished ``phase`` (its checkpoint is
    there and its record matches); its leftover resume state goes."""
    paths = run.paths
    what = f"{run.config.member.short_name} phase {phase}"
    if not (paths.checkpoint(phase).is_file() and run.record.matches(paths.phase_record(phase), what)):
        return False
    log.info("%s already done (%s); going on", what, paths.phase_record(phase).name)
    paths.resume_state(phase).unlink(missing_ok=True)
    return True


def _phase_model(run: _Run, phase: str, state: PhaseState | None):
    """The phase's compiled member: phase 1 from the initial weights with the backbone frozen,
    phase 2 from phase 1's checkpoint (none after random initial weights) with everything
    trainable; a resumed phase gets its weights, optimizer slots and learning rate back."""
    from deepcovidxr.networks.members import build_member, head_for, set_backbone_trainable

    config, schedule = run.config, run.schedule
    if phase == "initial":
        weights = config.weights
    else:
        weights = run.paths.checkpoint("initial") if "initial" in schedule.phases else None
    outputs, activation = head_for(run.classes)
    with run.strategy.scope():
        model = build_member(
            config.member.backbone,
            config.member.size,
            dropout=run.hp.dropout_rate,
            weights=weights,
            outputs=outputs,
            activation=activation,
        )
        set_backbone_trainable(model, phase != "initial")
        compile_member(model, schedule.learning_rate, schedule.momentum, schedule.optimizer, run.classes)
        if state is not None:
            restore_phase_state(model, state)
    return model


def _train_phase(run: _Run, phase: str, state: PhaseState | None, train_ds, val_ds) -> tuple[dict, int]:
    """Train ``phase`` (on from ``state`` when it resumes one) and write its completion record;
    the phase's history and best epoch."""
    paths, schedule, member = run.paths, run.schedule, run.config.member
    if state is None:
        forget_phase(paths, phase)
    model = _phase_model(run, phase, state)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log.info("phase %s: %d trainable parameters, up to %d epochs", phase, trainable, schedule.epochs)
    rule = EpochRule(**state.rule) if state is not None else schedule.rule(phase)
    start = state.epochs_done if state is not None else 0
    progress = progress_callback(
        paths.resume_state(phase), paths.history(phase), run.record.key, rule, state.history if state else {}
    )
    if state is not None:
        log.info("resuming phase %s at epoch %d (%s)", phase, start + 1, paths.resume_state(phase).name)
    if start < schedule.epochs and not (state is not None and state.stopped):
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=schedule.epochs,
            initial_epoch=start,
            callbacks=phase_callbacks(phase, paths, member, run.info, rule, run.classes, progress),
            verbose=2,
        )
    if not paths.checkpoint(phase).is_file() or not np.isfinite(rule.best_score):
        # every epoch's validation loss was NaN or infinite: the run diverged
        raise UsageError(
            f"{member.short_name} phase {phase}: no epoch had a finite validation loss (training diverged); "
            "try a lower --learning-rate"
        )
    run.record.write(
        paths.phase_record(phase), phase=phase, best_epoch=rule.best_epoch, finished=time.strftime("%FT%T")
    )
    paths.resume_state(phase).unlink(missing_ok=True)
    return progress.history, rule.best_epoch


def training_dataset(config: TrainConfig, files, batch: int, repeat: bool = False):
    """The member's shuffled, augmented training batches (before the schedule's class weights):
    the one recipe of both training loops."""
    from deepcovidxr.data.tfdata import make_dataset

    return make_dataset(
        files,
        config.size,
        batch,
        training=True,
        seed=config.seed,
        oversample=config.oversample,
        cache=config.cache,
        repeat=repeat,
    )


def training_splits(view_dir: Path, size: int, unreadable: Path | None = None):
    """(classes, Train files, Validation files) of a view folder: the class folders must agree
    between the splits and every class needs images in Train and in Validation (a
    :class:`UsageError` naming what is missing otherwise). Files that cannot be read at ``size``
    are left out, each logged, and listed in ``unreadable`` (``RunPaths.unreadable``; removed
    when there are none), which makes the stage's exit code 1 once training is done."""
    from deepcovidxr.contract import classes as class_names
    from deepcovidxr.contract.file_report import write_unreadable
    from deepcovidxr.data.tfdata import list_split

    classes = class_names.discover(view_dir)
    bad: list[tuple[str, str, str]] = []
    splits = []
    for split in (Split.TRAIN, Split.VALIDATION):
        files, failed = list_split(view_dir, split, classes).readable(size, desc=f"check {split.value}")
        for path, reason in failed:
            log.error("%s: %s", path, reason)
            bad.append((split.value, Path(path).relative_to(Path(view_dir) / split.value).as_posix(), reason))
        splits.append(files)
    if unreadable is not None:
        write_unreadable(unreadable, bad)
    train_files, val_files = splits
    # Either task: a class without images in Train or Validation cannot be learnt or validated.
    empty = [
        f"{split}/{name}"
        for split, files in (("Train", train_files), ("Validation", val_files))
        for name in files.missing_classes()
    ]
    if empty:
        raise UsageError(f"{view_dir}: every class needs images in Train and Validation; none in {', '.join(empty)}")
    return classes, train_files, val_files


def class_counts(classes: tuple[str, ...], train_files, val_files) -> dict:
    """What the run config and the member's sidecar record of the task: the classes, and for
    three or more the images per class of Train and Validation."""
    from deepcovidxr.scoring.task import task_for

    return task_for(classes).class_counts(train_files.counts, val_files.counts)


def _best_epoch(history: dict, epoch: int) -> dict:
    """The kept epoch's validation numbers (``epoch`` counts from 1)."""

    def at(key: str) -> float:
        values = history.get(key, [])
        return float(values[epoch - 1]) if 0 < epoch <= len(values) else float("nan")

    return {"epoch": epoch, "val_auc": at("val_auc"), "val_loss": at("val_loss")}


def _write_log(path: Path, histories: dict[str, dict]) -> None:
    import csv
    import io

    keys = sorted({k for h in histories.values() for k in h})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["phase", "epoch", *keys])
    for phase, history in histories.items():
        epochs = max((len(values) for values in history.values()), default=0)
        for epoch in range(epochs):
            row = [values[epoch] if epoch < len(values) else "" for values in (history.get(k, []) for k in keys)]
            writer.writerow([phase, epoch + 1, *row])
    from deepcovidxr.contract.atomic import write_text

    write_text(path, out.getvalue())


def member_weights(weights: str | None, member: Member) -> str | None:
    """A folder of NIH checkpoints resolves per member; anything else applies to all."""
    if weights and Path(weights).is_dir():
        candidate = PretrainPaths(Path(weights), member.backbone, member.size).checkpoint
        if not candidate.is_file():
            raise MissingInputError(f"no {candidate.name} in {weights} for {member.short_name}")
        return str(candidate)
    return weights


def member_hyperparameters(path: Path | None, member: Member) -> Path | None:
    """A tuner output folder resolves to that member's tuned values (or the defaults, with a
    warning, when the member was not tuned); a file applies to all."""
    if path is None or not Path(path).is_dir():
        return path
    candidate = TunerPaths(Path(path), member).hyperparameters
    if candidate.is_file():
        return candidate
    log.warning("no tuned hyperparameters for %s under %s; using the defaults", member.short_name, path)
    return None
