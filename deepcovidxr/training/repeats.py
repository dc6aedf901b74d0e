"""covid-cxr's best-of-N for one member (``--repeats N``): the member trained N times with seeds
seed, seed+1, ..., each run in its own folder (``RunPaths.repeat``), the best by validation AUC
then loss kept as the member, every run listed in ``repeats.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deepcovidxr.config.training_stages import TrainConfig
from deepcovidxr.contract.atomic import atomic_path, write_json
from deepcovidxr.contract.run_paths import RunPaths
from deepcovidxr.training.schedule import RunRecord, finish_member, finished_member

log = logging.getLogger(__name__)

TrainOnce = Callable[[TrainConfig, RunPaths, RunRecord], Path]

REPEATS_COLUMNS = ("seed", "val_auc", "val_loss", "kept")


def repeat_order(val_auc: float, val_loss: float) -> tuple[float, float]:
    """Sort key of a run, best first: validation AUC descending, then validation loss ascending
    (an undefined number ranks last)."""
    auc = val_auc if np.isfinite(val_auc) else -np.inf
    loss = val_loss if np.isfinite(val_loss) else np.inf
    return (-auc, loss)


def best_of_repeats(config: TrainConfig, paths: RunPaths, record: RunRecord, train_once: TrainOnce) -> Path:
    """covid-cxr's best-of-N: seeds seed, seed+1, ...; the best run by :func:`repeat_order` is
    copied (atomically) to the final file; every run is listed in ``repeats.csv``. ``train_once``
    trains one run (the trainer's single-run loop)."""
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
            train_once(dataclasses.replace(config, seed=seed, output=run.output, repeats=1), run, own)
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
