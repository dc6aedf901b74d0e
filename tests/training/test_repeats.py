"""train.py --repeats N: N seeds, the best by validation AUC then loss kept, every run in a CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.support.helpers import make_phantom_tree, run_script


def test_best_of_two_seeds_is_kept_and_every_run_recorded(tmp_path: Path) -> None:
    # 64 px, not 32: at 32 px ResNet-50's last maps are 1x1, and TensorFlow's oneDNN kernels on an
    # AMX Xeon gave a NaN validation loss from the first epoch (finite with TF_ENABLE_ONEDNN_OPTS=0).
    view = make_phantom_tree(tmp_path / "tree", 16, 64, seed=4)
    output = tmp_path / "out"
    done = run_script(
        "train.py",
        *("-m", "ResNet-50", "-s", "64", "-p", view, "-o", output),
        *("--epochs", "2", "--batch-size", "4", "--seed", "7", "--repeats", "2"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    final = output / "ResNet50_64_up_uncrop.h5"
    assert done.stdout.strip().endswith(final.name)
    table = output / "repeats" / "ResNet50_64_up_uncrop" / "repeats.csv"
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["seed"] for r in rows] == ["7", "8"]
    assert set(rows[0]) == {"seed", "val_auc", "val_loss", "kept"}
    assert sorted(r["kept"] for r in rows) == ["0", "1"]
    # best by an ordered list: validation AUC (higher), then validation loss (lower)
    best = min(rows, key=lambda r: (-float(r["val_auc"]), float(r["val_loss"])))
    assert best["kept"] == "1"
    run = output / "repeats" / "ResNet50_64_up_uncrop" / f"seed_{best['seed']}" / final.name
    assert final.read_bytes() == run.read_bytes()
    config = json.loads((output / "ResNet50_64_up_uncrop_config.json").read_text(encoding="utf-8"))
    assert config["kept_seed"] == int(best["seed"]) and config["seed"] == int(best["seed"])
    # each run's row holds its best epoch: the highest validation AUC of its own history
    for r in rows:
        own = run.parent.with_name(f"seed_{r['seed']}") / "ResNet50_64_up_uncrop_config.json"
        history = json.loads(own.read_text(encoding="utf-8"))["history"]["final"]
        assert float(r["val_auc"]) == max(history["val_auc"])
    # a rerun finds the member finished and changes nothing
    mtime = final.stat().st_mtime_ns
    again = run_script(
        "train.py",
        *("-m", "ResNet-50", "-s", "64", "-p", view, "-o", output),
        *("--epochs", "2", "--batch-size", "4", "--seed", "7", "--repeats", "2"),
    )
    assert again.returncode == 0 and final.stat().st_mtime_ns == mtime
