"""An unfinished training phase on disk, so that a rerun goes on where a killed one stopped.

Every epoch (:func:`progress_callback`) the phase's history CSV is rewritten and its resume state
saved (``RunPaths.resume_state``: weights, optimizer slots, learning rate, the ``EpochRule``'s
counters and the history so far, keyed by the run's record); :func:`load_phase_state` gives it back
only to a run of the same settings and data, and :func:`forget_phase` clears what a phase that
starts over must not pass for its own.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepcovidxr.contract.atomic import atomic_path
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.training.schedule import EpochRule, learning_rate_of, set_learning_rate

log = logging.getLogger(__name__)


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
            write_history(history_csv, self.history)
            save_phase_state(path, key, self.model, rule, self.history, epoch + 1, bool(self.model.stop_training))

    return Progress()


def forget_phase(paths: RunPaths, phase: str) -> None:
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


def read_history(path: Path) -> dict:
    import csv

    if not path.is_file():
        return {}
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {}) if key != "epoch"}


def write_history(path: Path, history: dict[str, list[float]]) -> None:
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
