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
import io
import logging
from pathlib import Path

from deepcovidxr.config import hyperparams
from deepcovidxr.contract.atomic import write_text

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
