"""tuner.py: keras-tuner Bayesian search of dropout, learning rate and momentum for one member
after a frozen warm-up; trials in the HParams dashboard.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from deepcovidxr.config import hyperparams
from deepcovidxr.config.stages import TuneConfig
from deepcovidxr.contract.atomic import write_json
from deepcovidxr.contract.layout import TENSORBOARD, Member, Split, TunerPaths
from deepcovidxr.training.tuning import SEARCH_SPACE, _write_hparams_experiment, _write_trials

log = logging.getLogger(__name__)


def run(config: TuneConfig) -> Path:
    import keras
    import keras_tuner as kt

    from deepcovidxr.contract.classes import discover
    from deepcovidxr.contract.layout import infer_crop
    from deepcovidxr.data.tfdata import list_split, make_dataset
    from deepcovidxr.networks.members import build_member, head_for, set_backbone_trainable
    from deepcovidxr.training.schedule import PLATEAU_PATIENCE, best_checkpoint, compile_member

    member = Member(config.model, config.size, infer_crop(config.path, config.crop))
    paths = TunerPaths(Path(config.output), member)
    stem, root, warmup, params_dir = paths.project, paths.root, paths.warmup, paths.params_dir
    keras.utils.set_random_seed(config.seed)
    # the tree's classes: a binary member (sigmoid) or one softmax unit per class, as train.py
    classes = discover(config.path)
    train_files = list_split(config.path, Split.TRAIN, classes)
    val_files = list_split(config.path, Split.VALIDATION, classes)
    head = dict(zip(("outputs", "activation"), head_for(classes), strict=True))
    train_ds = make_dataset(
        train_files, config.size, config.batch_size, training=True, seed=config.seed, cache=config.cache
    )
    val_ds = make_dataset(val_files, config.size, config.batch_size, training=False, cache=config.cache)

    if warmup.is_file() and not config.overwrite:
        log.info("warm-up checkpoint %s exists; reusing it", warmup)
    else:
        defaults = hyperparams.Hyperparameters()
        model = build_member(
            member.backbone, member.size, dropout=defaults.dropout_rate, weights=config.weights, **head
        )
        set_backbone_trainable(model, False)
        compile_member(model, defaults.learning_rate, defaults.momentum, classes=classes)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.warmup_epochs,
            verbose=2,
            callbacks=[
                best_checkpoint(warmup, member, {"tuner": "warm-up, frozen backbone"}, classes),
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=5, min_delta=1e-3),
                keras.callbacks.ReduceLROnPlateau(monitor="val_auc", mode="max", factor=0.1, patience=PLATEAU_PATIENCE),
            ],
        )
        del model

    class MemberHyperModel(kt.HyperModel):
        def build(self, hp):
            keras.backend.clear_session()  # drop the previous trial's graph and memory
            gc.collect()
            values = {
                name: hp.Float(name, low, high, sampling=sampling, default=default)
                for name, (low, high, sampling, default) in SEARCH_SPACE.items()
            }
            model = build_member(member.backbone, member.size, dropout=values["dropout_rate"], weights=warmup, **head)
            set_backbone_trainable(model, True)
            compile_member(model, values["learning_rate"], values["momentum"], classes=classes)
            return model

    tuner = kt.BayesianOptimization(
        MemberHyperModel(),
        objective=kt.Objective("val_auc", direction="max"),
        max_trials=config.max_trials,
        seed=config.seed,
        directory=str(root),
        project_name=stem,
        overwrite=config.overwrite,
    )
    logs = root / TENSORBOARD / stem
    _write_hparams_experiment(logs)
    tuner.search(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        verbose=2,
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=10, min_delta=1e-3),
            # keras-tuner gives each trial its own log dir under this one (<trial>/execution0) and
            # adds TensorBoard's hparams callback there: the trial's values beside its curves
            keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=False, profile_batch=0),
        ],
    )
    best = tuner.get_best_hyperparameters(1)[0].values
    chosen = hyperparams.Hyperparameters(**{k: float(best[k]) for k in hyperparams.KEYS})
    json_path, _ = hyperparams.save(chosen, params_dir)
    _write_trials(tuner, paths.trials)
    write_json(
        paths.search,
        {
            "member": member.short_name,
            "max_trials": config.max_trials,
            "epochs_per_trial": config.epochs,
            "search_space": SEARCH_SPACE,
            "best": chosen.as_dict(),
            "seed": config.seed,
        },
    )
    log.info("best hyperparameters for %s: %s (%s)", member.short_name, chosen.as_dict(), json_path)
    return json_path
