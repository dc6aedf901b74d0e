"""Train one ensemble member: phase 1 fits the head on a frozen backbone, phase 2 fine-tunes all.

Each phase gets fresh callbacks (the original reused its learning-rate callback across phases):
best-validation-AUC checkpoint, early stopping (patience 5, then 10), learning rate x0.1 after 3
flat epochs. SGD with Nesterov momentum in both phases. The final member is written directly as
``<output>/<Prefix>_<size>_up_<crop>.h5`` with its curves, CSV log, TensorBoard logs and the run's
config.

Reruns (issue 19): a phase is done only when its completion record (``RunPaths.phase_record``,
written when the phase ends) holds this run's settings and data fingerprint
(``schedule.RunRecord``); a checkpoint alone proves nothing (it is written at the first improving
epoch). An unfinished phase resumes at its last epoch from ``RunPaths.resume_state`` (weights,
optimizer slots, learning rate, the ``EpochRule``'s counters and the history so far, saved every
epoch); a state, record or checkpoint of other settings or data is ignored with a warning and the
phase redone. A finished member is skipped only when its record matches
(``schedule.finished_member``).

The classes are the tree's class folders (:func:`deepcovidxr.contract.classes.discover`): Negative/Positive
trains the original's sigmoid member; three or more classes a softmax member (categorical
cross-entropy, macro one-vs-rest validation AUC), its sidecar naming the classes.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.config.stages import TrainConfig
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.layout import Member, PretrainPaths, RunPaths, Split, TunerPaths
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.training.schedule import (
    EpochRule,
    RunRecord,
    Schedule,
    compile_member,
    finish_member,
    finished_member,
    learning_rate_of,
    read_record,
    resolved_hyperparameters,
    schedule_callback,
    set_learning_rate,
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
        return _best_of_repeats(config, paths, record)
    return _train_once(config, paths, record)


@dataclass
class PhaseState:
    """An unfinished phase as the last finished epoch left it."""

    epochs_done: int
    stopped: bool
    learning_rate: float
    rule: dict
    history: dict[str, list[float]]
    weights: list
    optimizer: list


def save_phase_state(path: Path, key: str, model, rule: EpochRule, history: dict, epochs_done: int, stopped: bool):
    """One ``.npz`` (atomic): the model's weights, the optimizer's variables, and as JSON the
    record key it belongs to, the epochs done, the learning rate, the rule's counters and the
    history."""
    meta = {
        "key": key,
        "epochs_done": epochs_done,
        "stopped": stopped,
        "learning_rate": learning_rate_of(model.optimizer),
        "rule": asdict(rule),
        "history": history,
    }
    weights = model.get_weights()
    slots = [np.asarray(v) for v in model.optimizer.variables]
    arrays = {f"w{i}": w for i, w in enumerate(weights)} | {f"o{i}": v for i, v in enumerate(slots)}
    meta |= {"weights": len(weights), "optimizer": len(slots)}
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load_phase_state(path: Path, key: str) -> PhaseState | None:
    """The resume state at ``path`` when it belongs to the run of record ``key``; a state of
    another run (other settings or data) or an unreadable one is ignored with a warning."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            if meta.get("key") != key:
                log.warning("%s belongs to a run of other settings or data; ignored, the phase starts over", path)
                return None
            weights = [arrays[f"w{i}"] for i in range(meta["weights"])]
            slots = [arrays[f"o{i}"] for i in range(meta["optimizer"])]
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s is unreadable (%s); ignored, the phase starts over", path, error)
        return None
    return PhaseState(
        meta["epochs_done"], meta["stopped"], meta["learning_rate"], meta["rule"], meta["history"], weights, slots
    )


def restore_phase_state(model, state: PhaseState) -> None:
    """Weights, optimizer slots (built first: Keras builds them lazily) and learning rate of a
    compiled model."""
    model.set_weights(state.weights)
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    variables = list(optimizer.variables)
    shapes = [tuple(v.shape) for v in variables] == [tuple(s.shape) for s in state.optimizer]
    if shapes:
        for variable, value in zip(variables, state.optimizer, strict=True):
            variable.assign(value)
    else:  # the weights still resume; momentum builds up again
        log.warning("the saved optimizer state does not fit this optimizer; its slots start afresh")
    set_learning_rate(optimizer, state.learning_rate)


def progress_callback(path: Path, history_csv: Path, key: str, rule: EpochRule, history: dict):
    """After each epoch (and after the schedule's rule): the epoch's numbers appended to
    ``history`` and written as the phase's history CSV, then the resume state saved."""
    import keras

    class Progress(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.history = {k: list(v) for k, v in history.items()}

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            for name, value in (logs or {}).items():
                self.history.setdefault(name, []).append(float(value))
            _write_history(history_csv, self.history)
            save_phase_state(path, key, self.model, rule, self.history, epoch + 1, bool(self.model.stop_training))

    return Progress()


def _forget_phase(paths: RunPaths, phase: str) -> None:
    """Before a phase starts over: its checkpoint, record, resume state and history are from an
    unfinished or other run and must not pass for this one's (a stale checkpoint would be
    copied in as the member when no epoch of this run improves)."""
    from deepcovidxr.networks.members import sidecar

    checkpoint = paths.checkpoint(phase)
    if checkpoint.is_file():
        log.warning("%s is from an unfinished or other run; removed, phase %s starts over", checkpoint, phase)
    for path in (checkpoint, sidecar(checkpoint), paths.phase_record(phase), paths.resume_state(phase)):
        path.unlink(missing_ok=True)
    paths.history(phase).unlink(missing_ok=True)


def _train_once(config: TrainConfig, paths: RunPaths, record: RunRecord) -> Path:
    import keras

    from deepcovidxr.data.tfdata import make_dataset
    from deepcovidxr.networks.members import build_member, head_for, set_backbone_trainable
    from deepcovidxr.reports.montage import plot_training_curves

    member = config.member
    hp = resolved_hyperparameters(config)
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.mixed_precision)
    classes, train_files, val_files = training_splits(config.path, config.size, paths.unreadable)
    outputs, activation = head_for(classes)
    schedule = Schedule.for_member(config, hp, train_files.labels, classes)
    strategy = distribution_strategy()
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    train_ds = make_dataset(
        train_files,
        config.size,
        global_batch,
        training=True,
        seed=config.seed,
        oversample=config.oversample,
        cache=config.cache,
    )
    train_ds = schedule.weigh(train_ds)
    val_ds = make_dataset(val_files, config.size, global_batch, training=False, cache=config.cache)
    info = {
        "hyperparameters": hp.as_dict(),
        "policy": policy,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch": global_batch,
        "train_images": len(train_files),
        "train_positives": train_files.positives,
        "validation_images": len(val_files),
        "validation_positives": val_files.positives,
        "initial_weights": str(config.weights),
        "warmup_epochs": config.warmup,
        "seed": config.seed,
        **class_counts(classes, train_files, val_files),
    }
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

    histories: dict[str, dict] = {}
    best_epochs: dict[str, int] = {}
    retrained = config.overwrite  # once a phase trains, the later phases' records are from before
    for phase in schedule.phases:
        done = paths.checkpoint(phase)
        what = f"{member.short_name} phase {phase}"
        if not retrained and done.is_file() and record.matches(paths.phase_record(phase), what):
            log.info("%s already done (%s); going on", what, paths.phase_record(phase).name)
            histories[phase] = _read_history(paths.history(phase))
            best_epochs[phase] = int(read_record(paths.phase_record(phase)).get("best_epoch", 0))
            paths.resume_state(phase).unlink(missing_ok=True)
            continue
        # an earlier phase trained in this run: whatever this phase left before started elsewhere
        state = None if retrained else load_phase_state(paths.resume_state(phase), record.key)
        retrained = True
        if state is None:
            _forget_phase(paths, phase)
        with strategy.scope():
            if phase == "initial":
                model = build_member(
                    member.backbone,
                    member.size,
                    dropout=hp.dropout_rate,
                    weights=config.weights,
                    outputs=outputs,
                    activation=activation,
                )
                set_backbone_trainable(model, False)
            else:
                initial = paths.checkpoint("initial") if "initial" in schedule.phases else None
                model = build_member(
                    member.backbone,
                    member.size,
                    dropout=hp.dropout_rate,
                    weights=initial,
                    outputs=outputs,
                    activation=activation,
                )
                set_backbone_trainable(model, True)
            compile_member(model, schedule.learning_rate, schedule.momentum, schedule.optimizer, classes)
            if state is not None:
                restore_phase_state(model, state)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        log.info("phase %s: %d trainable parameters, up to %d epochs", phase, trainable, schedule.epochs)
        rule = EpochRule(**state.rule) if state is not None else schedule.rule(phase)
        start = state.epochs_done if state is not None else 0
        progress = progress_callback(
            paths.resume_state(phase), paths.history(phase), record.key, rule, state.history if state else {}
        )
        if state is not None:
            log.info("resuming phase %s at epoch %d (%s)", phase, start + 1, paths.resume_state(phase).name)
        if start < schedule.epochs and not (state is not None and state.stopped):
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=schedule.epochs,
                initial_epoch=start,
                callbacks=phase_callbacks(phase, paths, member, info, rule, classes, progress),
                verbose=2,
            )
        histories[phase] = progress.history
        best_epochs[phase] = rule.best_epoch
        if not done.is_file() or not np.isfinite(rule.best_score):
            # every epoch's validation loss was NaN or infinite: the run diverged
            raise UsageError(
                f"{member.short_name} phase {phase}: no epoch had a finite validation loss (training diverged); "
                "try a lower --learning-rate"
            )
        record.write(
            paths.phase_record(phase), phase=phase, best_epoch=rule.best_epoch, finished=time.strftime("%FT%T")
        )
        paths.resume_state(phase).unlink(missing_ok=True)
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
    if class_names.is_binary(classes):
        if train_files.positives in (0, len(train_files)) or val_files.positives in (0, len(val_files)):
            raise UsageError(f"{view_dir}: Train and Validation each need Positive and Negative images")
    else:
        empty = [
            f"{split}/{name}"
            for split, files in (("Train", train_files), ("Validation", val_files))
            for name in files.missing_classes()
        ]
        if empty:
            raise UsageError(
                f"{view_dir}: every class needs images in Train and Validation; none in {', '.join(empty)}"
            )
    return classes, train_files, val_files


def class_counts(classes: tuple[str, ...], train_files, val_files) -> dict:
    """What the run config and the member's sidecar record of the task: the classes, and for
    three or more the images per class of Train and Validation."""
    from deepcovidxr.contract import classes as class_names

    if class_names.is_binary(classes):
        return {}
    return {
        "train_counts": {name: int(n) for name, n in zip(classes, train_files.counts, strict=True)},
        "validation_counts": {name: int(n) for name, n in zip(classes, val_files.counts, strict=True)},
    }


def _best_epoch(history: dict, epoch: int) -> dict:
    """The kept epoch's validation numbers (``epoch`` counts from 1)."""

    def at(key: str) -> float:
        values = history.get(key, [])
        return float(values[epoch - 1]) if 0 < epoch <= len(values) else float("nan")

    return {"epoch": epoch, "val_auc": at("val_auc"), "val_loss": at("val_loss")}


REPEATS_COLUMNS = ("seed", "val_auc", "val_loss", "kept")


def repeat_order(val_auc: float, val_loss: float) -> tuple[float, float]:
    """Sort key of a run, best first: validation AUC descending, then validation loss ascending
    (an undefined number ranks last)."""
    auc = val_auc if np.isfinite(val_auc) else -np.inf
    loss = val_loss if np.isfinite(val_loss) else np.inf
    return (-auc, loss)


def _best_of_repeats(config: TrainConfig, paths: RunPaths, record: RunRecord) -> Path:
    """covid-cxr's best-of-N: seeds seed, seed+1, ...; the best run by :func:`repeat_order` is
    copied (atomically) to the final file; every run is listed in ``repeats.csv``."""
    import csv
    import dataclasses
    import gc
    import io
    import json

    import keras

    from deepcovidxr.contract.atomic import write_text

    runs = []
    for seed in range(config.seed, config.seed + config.repeats):
        run = paths.repeat(seed)
        log.info("%s: run %d of %d (seed %d)", config.member.short_name, len(runs) + 1, config.repeats, seed)
        own = record.with_settings(seed=seed, repeats=1)
        if not finished_member(run, own, config.overwrite):
            _train_once(dataclasses.replace(config, seed=seed, output=run.output, repeats=1), run, own)
        best = json.loads(run.config.read_text(encoding="utf-8"))["best"]
        runs.append({"seed": seed, "val_auc": float(best["val_auc"]), "val_loss": float(best["val_loss"]), "run": run})
        keras.backend.clear_session()
        gc.collect()
    kept = min(runs, key=lambda r: repeat_order(r["val_auc"], r["val_loss"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REPEATS_COLUMNS)
    for r in runs:
        writer.writerow([r["seed"], r["val_auc"], r["val_loss"], int(r is kept)])
    write_text(paths.repeats_folder / "repeats.csv", out.getvalue())
    best_run: RunPaths = kept["run"]
    for source, target in ((best_run.log_csv, paths.log_csv), (best_run.curves, paths.curves)):
        with atomic_path(target) as tmp:
            tmp.write_bytes(source.read_bytes())
    if best_run.unreadable.is_file():  # the stage's exit code reads the member's list
        write_text(paths.unreadable, best_run.unreadable.read_text(encoding="utf-8"))
    else:
        paths.unreadable.unlink(missing_ok=True)
    write_json(
        paths.config,
        {
            **json.loads(best_run.config.read_text(encoding="utf-8")),
            "repeats": [{k: v for k, v in r.items() if k != "run"} for r in runs],
            "kept_seed": kept["seed"],
        },
    )
    finish_member(paths, record, best_run.final, kept_seed=kept["seed"])
    log.info(
        "kept seed %d (val AUC %.4f, val loss %.4f): %s", kept["seed"], kept["val_auc"], kept["val_loss"], paths.final
    )
    return paths.final


def _read_history(path: Path) -> dict:
    import csv

    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    """One phase's history as Keras' CSV log wrote it: ``epoch`` (from 0), then the sorted keys."""
    import csv
    import io

    from deepcovidxr.contract.atomic import write_text

    keys = sorted(history)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch", *keys])
    for epoch in range(max((len(v) for v in history.values()), default=0)):
        writer.writerow([epoch, *(history[k][epoch] if epoch < len(history[k]) else "" for k in keys)])
    write_text(path, out.getvalue())


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
