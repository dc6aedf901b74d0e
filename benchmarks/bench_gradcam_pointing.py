"""Grad-CAM pointing against input size: does the heatmap peak fall inside the opacity?

For each size, trains a ResNet-50 crop-view member from random weights with train.py (as a user
would, in a subprocess) on 400 cropped phantoms (240 training images, opacities boosted by 40 grey
levels as in the tests), then measures on the 80 held-out positives (Validation + Test) where the
Grad-CAM peak falls in the 256 px phantom: inside an opacity, in the lower zone of an affected
lung, and the chance level of "inside" for a peak anywhere in the crop box. The default suite
runs the 128 px case; this script adds the production size, which a CPU test cannot afford.

Example (about 20 minutes on 2 CPU cores):
    python benchmarks/bench_gradcam_pointing.py --sizes 128 224
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224], help="member input sizes to compare")
    p.add_argument("--count", type=int, default=400, help="phantoms (60/20/20 split)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--boost", type=float, default=40.0, help="grey levels added inside the opacities")
    p.add_argument("--workdir", type=Path, default=None, help="keep the trees and members here")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from deepcovidxr.backbones import get
    from deepcovidxr.phantom_tasks import gradcam_pointing, write_view_tree

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pointing_"))
    print("size  map   train_s  best_val_auc  detected  inside  chance  lower_zone  median_dist_px")
    results = []
    for size in args.sizes:
        view = write_view_tree(workdir / "data", args.count, size, opacity_boost=args.boost, view="crop")
        output = workdir / f"members_{size}"
        started = time.perf_counter()
        command = [sys.executable, str(REPO / "train.py"), "-m", "ResNet-50", "-s", str(size), "-p", str(view)]
        command += ["-o", str(output), "-w", "none", "--optimizer", "adam", "--epochs", str(args.epochs)]
        command += ["--batch-size", "32", "--seed", "0"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        config = json.loads((output / f"ResNet50_{size}_up_crop_config.json").read_text())
        best_auc = max(config["history"]["final"]["val_auc"])
        m = gradcam_pointing(output / f"ResNet50_{size}_up_crop.h5", view, get("ResNet-50").gradcam_layer)
        results.append({"size": size, "train_seconds": round(seconds, 1), "best_val_auc": best_auc, **m})
        cells = size // 32
        print(
            f"{size:<5} {cells}x{cells:<3} {seconds:7.0f}  {best_auc:12.3f}  {m['detected']:8.2f}  {m['inside']:6.2f}"
            f"  {m['chance']:6.3f}  {m['lower_zone']:10.2f}  {m['median_distance_px']:14.1f}",
            flush=True,
        )
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
