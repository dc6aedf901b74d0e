"""keras-tuner Bayesian search of dropout, learning rate and momentum for one member.

First a warm-up fits the head on the frozen backbone (as train.py's phase 1); every trial then
starts from that warm-up checkpoint with a freshly built model (no backbone object shared
between trials, the original's bug), the sampled dropout, and SGD with Nesterov momentum (as in
train.py; the original's trials dropped Nesterov). The learning rate is sampled log-uniformly
over [1e-5, 1e-1] (the original sampled it linearly, so 99 % of draws fell in the top decade).
Objective: validation AUC. The session is cleared before each trial so memory stays flat.

Outputs, as the original: ``<out>/tuner/initial_cps/<stem>.h5`` (warm-up),
``<out>/tuner/<stem>/`` (keras-tuner's project, which makes a rerun resume), and
``<out>/tuner/best_models_and_params/<stem>/model_params/hyperparameters.{json,pickle}``.
"""

from __future__ import annotations

import csv
import gc
import io
import logging
from pathlib import Path

from deepcovidxr.config import hyperparams
from deepcovidxr.config.training_stages import TuneConfig
from deepcovidxr.contract.atomic import write_json, write_text
from deepcovidxr.contract.layout import TENSORBOARD, Member, Split
from deepcovidxr.contract.run_paths import TunerPaths

log = logging.getLogger(__name__)

SEARCH_SPACE = {
    "dropout_rate": (0.0, 0.5, "linear", 0.3),
    "learning_rate": (1e-5, 1e-1, "log", 1e-2),
    "momentum": (0.0, 0.9, "linear", 0.5),
}


def _write_hparams_experiment(logs: Path) -> None:
    """The HParams dashboard's experiment at the log root: the searched ranges and validation AUC
    (the TensorBoard callback's ``epoch_auc`` in each trial's ``validation`` run) as the metric."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp_api

    hparams = [
        hp_api.HParam(name, hp_api.RealInterval(float(low), float(high)))
        for name, (low, high, _, _) in SEARCH_SPACE.items()
    ]
    metric = hp_api.Metric("epoch_auc", group="validation", display_name="validation AUC")
    logs.mkdir(parents=True, exist_ok=True)
    with tf.summary.create_file_writer(str(logs)).as_default():
        hp_api.hparams_config(hparams=hparams, metrics=[metric])


def _write_trials(tuner, destination: Path) -> None:
    """One row per finished trial: its hyperparameters and its best validation AUC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", *hyperparams.KEYS, "val_auc"])
    for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
        score = trial.score if trial.score is not None else ""
        writer.writerow([trial.trial_id, *(trial.hyperparameters.values.get(k, "") for k in hyperparams.KEYS), score])
    write_text(destination, out.getvalue())


def tune(config: TuneConfig) -> Path:
    """The search for one member (see the module docstring): the warm-up (kept and reused), the
    Bayesian trials (keras-tuner's project resumes them), the best values saved with the trials
    table and the search's summary. Returns the best hyperparameters' JSON file."""
    import keras

    from deepcovidxr.contract.classes import discover
    from deepcovidxr.contract.layout import infer_crop
    from deepcovidxr.data.tfdata import list_split, make_dataset

    member = Member(config.model, config.size, infer_crop(config.path, config.crop))
    paths = TunerPaths(Path(config.output), member)
    keras.utils.set_random_seed(config.seed)
    # the tree's classes: a binary member (sigmoid) or one softmax unit per class, as train.py
    classes = discover(config.path)
    train_files = list_split(config.path, Split.TRAIN, classes)
    val_files = list_split(config.path, Split.VALIDATION, classes)
    data = (
        make_dataset(train_files, config.size, config.batch_size, training=True, seed=config.seed, cache=config.cache),
        make_dataset(val_files, config.size, config.batch_size, training=False, cache=config.cache),
    )
    if paths.warmup.is_file() and not config.overwrite:
        log.info("warm-up checkpoint %s exists; reusing it", paths.warmup)
    else:
        _warm_up(config, member, paths.warmup, data, classes)
    tuner = _search(config, member, paths, data, classes)
    best = tuner.get_best_hyperparameters(1)[0].values
    chosen = hyperparams.Hyperparameters(**{k: float(best[k]) for k in hyperparams.KEYS})
    json_path, _ = hyperparams.save(chosen, paths.params_dir)
    _write_trials(tuner, paths.trials)
    summary = {"member": member.short_name, "max_trials": config.max_trials, "epochs_per_trial": config.epochs}
    summary |= {"search_space": SEARCH_SPACE, "best": chosen.as_dict(), "seed": config.seed}
    write_json(paths.search, summary)
    log.info("best hyperparameters for %s: %s (%s)", member.short_name, chosen.as_dict(), json_path)
    return json_path


def _fit_options(data: tuple, epochs: int) -> dict:
    """What the warm-up's ``fit`` and the search's trials share: Validation, epochs, a line an epoch."""
    return {"validation_data": data[1], "epochs": epochs, "verbose": 2}


def _head(classes: tuple[str, ...]) -> dict:
    from deepcovidxr.networks.members import head_for

    return dict(zip(("outputs", "activation"), head_for(classes), strict=True))


def _warm_up(config: TuneConfig, member: Member, warmup: Path, data: tuple, classes: tuple[str, ...]) -> None:
    """The frozen-backbone warm-up every trial starts from, saved at its best validation AUC."""
    import keras

    from deepcovidxr.networks.members import build_member, set_backbone_trainable
    from deepcovidxr.training.schedule import PLATEAU_PATIENCE, best_checkpoint, compile_member

    defaults = hyperparams.Hyperparameters()
    model = build_member(
        member.backbone, member.size, dropout=defaults.dropout_rate, weights=config.weights, **_head(classes)
    )
    set_backbone_trainable(model, False)
    compile_member(model, defaults.learning_rate, defaults.momentum, classes=classes)
    model.fit(
        data[0],
        **_fit_options(data, config.warmup_epochs),
        callbacks=[
            best_checkpoint(warmup, member, {"tuner": "warm-up, frozen backbone"}, classes),
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=5, min_delta=1e-3),
            keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.1, patience=PLATEAU_PATIENCE),
        ],
    )


def _search(config: TuneConfig, member: Member, paths: TunerPaths, data: tuple, classes: tuple[str, ...]):
    """keras-tuner's Bayesian search over SEARCH_SPACE from the warm-up; returns the tuner."""
    import keras
    import keras_tuner as kt

    from deepcovidxr.networks.members import build_member, set_backbone_trainable
    from deepcovidxr.training.schedule import compile_member

    head = _head(classes)

    class MemberHyperModel(kt.HyperModel):
        def build(self, hp):
            keras.backend.clear_session()  # drop the previous trial's graph and memory
            gc.collect()
            values = {
                name: hp.Float(name, low, high, sampling=sampling, default=default)
                for name, (low, high, sampling, default) in SEARCH_SPACE.items()
            }
            model = build_member(
                member.backbone, member.size, dropout=values["dropout_rate"], weights=paths.warmup, **head
            )
            set_backbone_trainable(model, True)
            compile_member(model, values["learning_rate"], values["momentum"], classes=classes)
            return model

    tuner = kt.BayesianOptimization(
        MemberHyperModel(),
        objective=kt.Objective("val_auc", direction="max"),
        max_trials=config.max_trials,
        seed=config.seed,
        directory=str(paths.root),
        project_name=paths.project,
        overwrite=config.overwrite,
    )
    logs = paths.root / TENSORBOARD / paths.project
    _write_hparams_experiment(logs)
    tuner.search(
        data[0],
        **_fit_options(data, config.epochs),
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=10, min_delta=1e-3),
            # keras-tuner gives each trial its own log dir under this one (<trial>/execution0) and
            # adds TensorBoard's hparams callback there: the trial's values beside its curves
            keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False, profile_batch=0),
        ],
    )
    return tuner
