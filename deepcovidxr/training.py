"""Train one ensemble member: phase 1 fits the head on a frozen backbone, phase 2 fine-tunes all.

Each phase gets fresh callbacks (the original reused its learning-rate callback across phases):
best-validation-AUC checkpoint, early stopping (patience 5, then 10), learning rate x0.1 after 3
flat epochs. SGD with Nesterov momentum in both phases. The final member is written directly as
``<output>/<Prefix>_<size>_up_<crop>.h5`` with its curves, CSV log, TensorBoard logs and the run's
config. A finished member is skipped on a rerun; a finished phase 1 is not repeated.

The classes are the tree's class folders (:func:`deepcovidxr.classes.discover`): Negative/Positive
trains the original's sigmoid member; three or more classes a softmax member (categorical
cross-entropy, macro one-vs-rest validation AUC), its sidecar naming the classes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from deepcovidxr import hyperparams
from deepcovidxr.atomic import atomic_path, write_json
from deepcovidxr.configs import TrainConfig
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.layout import Member, PretrainPaths, RunPaths, Split, TunerPaths
from deepcovidxr.schedule import EpochRule, Schedule, compile_member, schedule_callback, set_precision

log = logging.getLogger(__name__)


def distribution_strategy():
    """MirroredStrategy over all visible GPUs when there are several, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def phase_callbacks(
    phase: str, paths: RunPaths, member: Member, info: dict, rule: EpochRule, classes: tuple[str, ...] | None = None
) -> list:
    """Fresh instances for every phase (``rule`` too): nothing (counters, best scores) carries
    over. The schedule's rule (checkpoint, plateau, stopping) runs first so the CSV log sees the
    epoch's learning rate."""
    import keras

    paths.plots(phase).mkdir(parents=True, exist_ok=True)
    return [
        schedule_callback(rule, paths.checkpoint(phase), member, {**info, "phase": phase}, classes),
        keras.callbacks.CSVLogger(str(paths.history(phase))),
        keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard / phase), write_graph=False, profile_batch=0),
    ]


def train_member(config: TrainConfig) -> Path:
    """Run both phases for one member (``--repeats`` times when asked); return the final ``_up_``
    file."""
    paths = RunPaths(config.output, config.member)
    if Schedule.finished_member(paths, config.overwrite):
        return paths.final
    if config.repeats > 1:
        return _best_of_repeats(config, paths)
    return _train_once(config, paths)


def _train_once(config: TrainConfig, paths: RunPaths) -> Path:
    import keras

    from deepcovidxr.data import make_dataset
    from deepcovidxr.models import build_member, head_for, set_backbone_trainable, sidecar
    from deepcovidxr.reports import plot_training_curves

    member = config.member
    hp = hyperparams.load(config.hyperparameters).with_overrides(
        learning_rate=config.learning_rate, momentum=config.momentum, dropout_rate=config.dropout
    )
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
    rule = None
    for phase in schedule.phases:
        done = paths.checkpoint(phase)
        with strategy.scope():
            if phase == "initial":
                if done.is_file() and not config.overwrite:
                    log.info("phase 1 already done (%s); going on to phase 2", done)
                    histories[phase] = _read_history(paths.history(phase))
                    continue
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
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        log.info("phase %s: %d trainable parameters, up to %d epochs", phase, trainable, schedule.epochs)
        rule = schedule.rule(phase)
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=schedule.epochs,
            callbacks=phase_callbacks(phase, paths, member, info, rule, classes),
            verbose=2,
        )
        histories[phase] = history.history
        if not done.is_file():
            # every epoch's validation loss was NaN or infinite: the run diverged
            raise UsageError(
                f"{member.short_name} phase {phase}: no epoch had a finite validation loss (training diverged); "
                "try a lower --learning-rate"
            )
    with atomic_path(sidecar(paths.final)) as tmp:
        tmp.write_bytes(sidecar(paths.checkpoint("final")).read_bytes())
    _write_log(paths.log_csv, histories)
    plot_training_curves(paths.curves, histories, title=member.short_name)
    write_json(
        paths.config,
        {
            **run_config,
            "finished": time.strftime("%FT%T"),
            "final": paths.final.name,
            "best": _best_epoch(histories["final"], rule.best_epoch),
            "history": {p: {k: [float(v) for v in vs] for k, vs in h.items()} for p, h in histories.items()},
        },
    )
    # the member file last: its existence is what marks the member finished
    with atomic_path(paths.final) as tmp:
        tmp.write_bytes(paths.checkpoint("final").read_bytes())
    log.info("wrote %s", paths.final)
    return paths.final


def training_splits(view_dir: Path, size: int, unreadable: Path | None = None):
    """(classes, Train files, Validation files) of a view folder: the class folders must agree
    between the splits and every class needs images in Train and in Validation (a
    :class:`UsageError` naming what is missing otherwise). Files that cannot be read at ``size``
    are left out, each logged, and listed in ``unreadable`` (``RunPaths.unreadable``; removed
    when there are none), which makes the stage's exit code 1 once training is done."""
    from deepcovidxr import classes as class_names
    from deepcovidxr.batch import write_unreadable
    from deepcovidxr.data import list_split

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
    from deepcovidxr import classes as class_names

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


def _best_of_repeats(config: TrainConfig, paths: RunPaths) -> Path:
    """covid-cxr's best-of-N: seeds seed, seed+1, ...; the best run by :func:`repeat_order` is
    copied (atomically) to the final file; every run is listed in ``repeats.csv``."""
    import csv
    import dataclasses
    import gc
    import io
    import json

    import keras

    from deepcovidxr.atomic import write_text
    from deepcovidxr.models import sidecar

    runs = []
    for seed in range(config.seed, config.seed + config.repeats):
        run = paths.repeat(seed)
        log.info("%s: run %d of %d (seed %d)", config.member.short_name, len(runs) + 1, config.repeats, seed)
        if run.final.is_file() and not config.overwrite:
            log.info("%s exists; keeping that run", run.final)
        else:
            _train_once(dataclasses.replace(config, seed=seed, output=run.output, repeats=1), run)
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
    with atomic_path(sidecar(paths.final)) as tmp:
        tmp.write_bytes(sidecar(best_run.final).read_bytes())
    with atomic_path(paths.final) as tmp:  # last: the member is finished once this exists
        tmp.write_bytes(best_run.final.read_bytes())
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
    from deepcovidxr.atomic import write_text

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
