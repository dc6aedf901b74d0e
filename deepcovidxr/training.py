"""Train one ensemble member: phase 1 fits the head on a frozen backbone, phase 2 fine-tunes all.

Each phase gets fresh callbacks (the original reused its learning-rate callback across phases):
best-validation-AUC checkpoint, early stopping (patience 5, then 10), learning rate x0.1 after 3
flat epochs. SGD with Nesterov momentum in both phases. The final member is written directly as
``<output>/<Prefix>_<size>_up_<crop>.h5`` with its curves, CSV log, TensorBoard logs and the run's
config. A finished member is skipped on a rerun; a finished phase 1 is not repeated.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepcovidxr import hyperparams
from deepcovidxr.atomic import atomic_path, write_json
from deepcovidxr.configs import TrainAllConfig, TrainConfig
from deepcovidxr.errors import MissingInputError, UsageError
from deepcovidxr.layout import Member, Split

log = logging.getLogger(__name__)

PHASES = ("initial", "final")  # the original's save_weights_initial/ and save_weights_final/
PATIENCE = {"initial": 5, "final": 10}
MIN_DELTA = 1e-3
PLATEAU_PATIENCE = 3


@dataclass(frozen=True)
class RunPaths:
    """Where one member's run writes (every name from here)."""

    output: Path
    member: Member

    @property
    def stem(self) -> str:
        return self.member.legacy_filename.removesuffix(".h5")

    @property
    def final(self) -> Path:
        return self.output / self.member.legacy_filename

    def checkpoint(self, phase: str) -> Path:
        return self.output / f"save_weights_{phase}" / self.member.legacy_filename

    def plots(self, phase: str) -> Path:
        return self.output / f"save_plots_{phase}" / self.stem

    @property
    def log_csv(self) -> Path:
        return self.output / f"{self.stem}_log.csv"

    @property
    def curves(self) -> Path:
        return self.output / f"{self.stem}_curves.png"

    @property
    def config(self) -> Path:
        return self.output / f"{self.stem}_config.json"

    @property
    def tensorboard(self) -> Path:
        return self.output / "tensorboard" / self.stem


def distribution_strategy():
    """MirroredStrategy over all visible GPUs when there are several, else the default."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def set_precision(enabled: bool) -> str:
    """mixed_float16 on GPU, mixed_bfloat16 on CPU, float32 when disabled."""
    import keras
    import tensorflow as tf

    policy = "float32"
    if enabled:
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_dtype_policy(policy)
    return policy


OPTIMIZERS = ("sgd", "adam")


def make_optimizer(name: str, learning_rate: float, momentum: float):
    """SGD with Nesterov momentum (the original's, the default) or Adam (momentum unused), which
    trains randomly initialised backbones far more readily on small data."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise UsageError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def compile_member(model, learning_rate: float, momentum: float, optimizer: str = "sgd") -> None:
    import keras

    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, momentum),
        loss="binary_crossentropy",
        metrics=[
            keras.metrics.BinaryAccuracy(name="acc"),
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


def best_checkpoint(path: Path, member: Member | None, info: dict):
    """A callback that keeps the best epoch's weights, written atomically as a member file.

    "Best" is the highest validation AUC; where the validation set holds a single class (tiny
    subsets), AUC is undefined and the lowest validation loss decides instead.
    """
    import keras

    from deepcovidxr.models import save_member

    class BestCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best = -np.inf
            self.best_epoch = 0

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            logs = logs or {}
            auc = float(logs.get("val_auc", np.nan))
            score = auc if np.isfinite(auc) else -float(logs.get("val_loss", np.inf))
            if np.isfinite(score) and score > self.best:
                self.best, self.best_epoch = score, epoch + 1
                save_member(self.model, path, member, {**info, "val_auc": auc, "epoch": epoch + 1})

    return BestCheckpoint()


def _plateau_after_warmup(warmup: int):
    """ReduceLROnPlateau that ignores the first ``warmup`` epochs (Keras has no such option)."""
    import keras

    class PlateauAfterWarmup(keras.callbacks.ReduceLROnPlateau):
        def on_epoch_end(self, epoch, logs=None):
            if epoch >= warmup:
                super().on_epoch_end(epoch, logs)
            elif logs is not None:  # keep the logged learning rate one value per epoch
                logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    return PlateauAfterWarmup(monitor="val_auc", mode="max", factor=0.1, patience=PLATEAU_PATIENCE)


def phase_callbacks(phase: str, paths: RunPaths, member: Member, info: dict, warmup: int = 0) -> list:
    """Fresh instances for every phase: nothing (counters, best scores) carries over. Early
    stopping and the learning-rate plateau rule start watching after ``warmup`` epochs."""
    import keras

    paths.plots(phase).mkdir(parents=True, exist_ok=True)
    return [
        best_checkpoint(paths.checkpoint(phase), member, {**info, "phase": phase}),
        keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=PATIENCE[phase], min_delta=MIN_DELTA, start_from_epoch=warmup
        ),
        _plateau_after_warmup(warmup),
        keras.callbacks.CSVLogger(str(paths.plots(phase) / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(paths.tensorboard / phase), write_graph=False, profile_batch=0),
    ]


def train_member(config: TrainConfig) -> Path:
    """Run both phases for one member; return the final ``_up_`` file."""
    import keras

    from deepcovidxr.data import class_weights, list_split, make_dataset
    from deepcovidxr.models import build_member, set_backbone_trainable
    from deepcovidxr.reports import plot_training_curves

    member = config.member
    paths = RunPaths(config.output, member)
    if paths.final.is_file() and not config.overwrite:
        log.info("%s exists; skipping (--overwrite retrains)", paths.final)
        return paths.final
    hp = hyperparams.load(config.hyperparameters).with_overrides(
        learning_rate=config.learning_rate, momentum=config.momentum, dropout_rate=config.dropout
    )
    keras.utils.set_random_seed(config.seed)
    policy = set_precision(config.mixed_precision)
    train_files, val_files = list_split(config.path, Split.TRAIN), list_split(config.path, Split.VALIDATION)
    if train_files.positives in (0, len(train_files)) or val_files.positives in (0, len(val_files)):
        raise UsageError(f"{config.path}: Train and Validation each need Positive and Negative images")
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
    val_ds = make_dataset(val_files, config.size, global_batch, training=False, cache=config.cache)
    weights = class_weights(train_files.labels) if config.class_weight else None
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
    }
    run_config = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "member": member.short_name,
        **info,
        "class_weight": weights,
        "started": time.strftime("%FT%T"),
    }
    write_json(paths.config, run_config)
    log.info(
        "training %s on %d images (%d positive); validation %d; %s; global batch %d",
        member.short_name,
        len(train_files),
        train_files.positives,
        len(val_files),
        policy,
        global_batch,
    )

    histories: dict[str, dict] = {}
    from_scratch = config.from_scratch
    for phase in PHASES:
        done = paths.checkpoint(phase)
        if phase == "initial" and from_scratch:
            # A head fitted on a frozen random backbone learns nothing and leaves phase 2 a
            # badly scaled head; from random weights the whole network trains from the start.
            log.info("random initial weights: skipping the frozen-backbone phase")
            continue
        with strategy.scope():
            if phase == "initial":
                if done.is_file() and not config.overwrite:
                    log.info("phase 1 already done (%s); going on to phase 2", done)
                    histories[phase] = _read_history(paths.plots(phase) / "history.csv")
                    continue
                model = build_member(member.backbone, member.size, dropout=hp.dropout_rate, weights=config.weights)
                set_backbone_trainable(model, False)
            else:
                initial = None if from_scratch else paths.checkpoint("initial")
                model = build_member(member.backbone, member.size, dropout=hp.dropout_rate, weights=initial)
                set_backbone_trainable(model, True)
            compile_member(model, hp.learning_rate, hp.momentum, config.optimizer)
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        log.info("phase %s: %d trainable parameters, up to %d epochs", phase, trainable, config.epochs)
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            class_weight=weights,
            callbacks=phase_callbacks(phase, paths, member, info, config.warmup),
            verbose=2,
        )
        histories[phase] = history.history
        if not done.is_file():
            raise RuntimeError(f"phase {phase} never produced a finite validation AUC; no checkpoint written")
    with atomic_path(paths.final) as tmp:
        tmp.write_bytes(paths.checkpoint("final").read_bytes())
    from deepcovidxr.models import sidecar

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
            "history": {p: {k: [float(v) for v in vs] for k, vs in h.items()} for p, h in histories.items()},
        },
    )
    log.info("wrote %s", paths.final)
    return paths.final


def _read_history(path: Path) -> dict:
    import csv

    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open(newline="")))
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


def train(config: TrainConfig) -> Path:
    """The train.py entry point: Keras fit on one host (all its GPUs), or the multi-worker loop."""
    if config.multi_worker:
        from deepcovidxr.distributed import train_member_multiworker

        return train_member_multiworker(config)
    return train_member(config)


def member_weights(weights: str | None, member: Member) -> str | None:
    """A folder of NIH checkpoints resolves per member; anything else applies to all."""
    if weights and Path(weights).is_dir():
        from deepcovidxr.pretraining import checkpoint_name

        candidate = Path(weights) / checkpoint_name(member.backbone, member.size)
        if not candidate.is_file():
            raise MissingInputError(f"no {candidate.name} in {weights} for {member.short_name}")
        return str(candidate)
    return weights


def member_hyperparameters(path: Path | None, member: Member) -> Path | None:
    """A tuner output folder resolves to that member's tuned values (or the defaults, with a
    warning, when the member was not tuned); a file applies to all."""
    if path is None or not Path(path).is_dir():
        return path
    stem = member.legacy_filename.removesuffix(".h5")
    candidate = Path(path) / "tuner" / "best_models_and_params" / stem / "model_params" / "hyperparameters.json"
    if candidate.is_file():
        return candidate
    log.warning("no tuned hyperparameters for %s under %s; using the defaults", member.short_name, path)
    return None


def train_all(config: TrainAllConfig) -> Path:
    """Train the chosen members one after another; finished ones are skipped, so a rerun resumes."""
    import gc

    import keras

    from deepcovidxr.layout import DataTree, ensemble_members

    members = [Member.parse(m) for m in config.members] if config.members else list(ensemble_members())
    tree = DataTree(Path(config.data))
    missing = [m.short_name for m in members if not tree.view_dir(m.size, m.crop).is_dir()]
    if missing:
        raise MissingInputError(f"{config.data}: no data folder for {', '.join(missing)}")
    failures = []
    for number, member in enumerate(members, start=1):
        log.info("member %d of %d: %s", number, len(members), member.short_name)
        try:
            train_member(
                TrainConfig(
                    model=member.backbone,
                    size=member.size,
                    path=tree.view_dir(member.size, member.crop),
                    output=config.output,
                    crop=member.crop,
                    weights=member_weights(config.weights, member),
                    hyperparameters=member_hyperparameters(config.hyperparameters, member),
                    **(config.common or {}),
                )
            )
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            log.error("%s failed: %s", member.short_name, error)
            failures.append(member.short_name)
        keras.backend.clear_session()
        gc.collect()
    if failures:
        raise RuntimeError(f"{len(failures)} member(s) failed: {', '.join(failures)}")
    return Path(config.output)
