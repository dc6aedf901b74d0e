"""Grad-CAM pointing against input size and backbone: does the heatmap peak fall inside the opacity?

For each backbone (default ResNet-50) and size, trains a crop-view member from random weights with
train.py (as a user would, in a subprocess) on 400 cropped phantoms (240 training images,
opacities boosted by 40 grey levels as in the tests), then measures on the 80 held-out positives
(Validation + Test) where the Grad-CAM peak falls in the 256 px phantom: inside an opacity, in the
lower zone of an affected lung, the chance level of "inside" for a peak anywhere in the crop box,
and the grid ceiling (the fraction of positives with a cell centre of the map inside an opacity at
all). The default suite runs the ResNet-50 128 px case; this script adds the production size and
the other backbones, which a CPU test cannot afford.

Examples (the first about 20 minutes on 2 CPU cores):
    python benchmarks/bench_gradcam_pointing.py --sizes 128 224
    python benchmarks/bench_gradcam_pointing.py --sizes 128 --backbones DenseNet-121 Xception
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
    p.add_argument("--backbones", nargs="+", default=["ResNet-50"], help="backbones (table names) to compare")
    p.add_argument("--count", type=int, default=400, help="phantoms (60/20/20 split)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--boost", type=float, default=40.0, help="grey levels added inside the opacities")
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep the trees and members here (members found there are reused)"
    )
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from deepcovidxr.contract.backbones import get
    from deepcovidxr.contract.layout import DataTree
    from tools.phantom_tasks import gradcam_pointing, write_view_tree

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pointing_"))
    columns = "size  map    train_s  best_val_auc  detected  inside  grid_ceiling  chance  lower_zone  median_dist_px"
    print(f"{'backbone':<20} {columns}")
    results = []
    for backbone, size in [(get(name), size) for name in args.backbones for size in args.sizes]:
        view = DataTree(workdir / "data").view_dir(size, "crop")
        if not view.is_dir():
            write_view_tree(workdir / "data", args.count, size, opacity_boost=args.boost, view="crop")
        output = workdir / f"members_{backbone.prefix}_{size}"
        member_file = output / f"{backbone.prefix}_{size}_up_crop.h5"
        seconds = float("nan")  # a member already in --workdir is measured again, not retrained
        if not member_file.is_file():
            started = time.perf_counter()
            command = [sys.executable, str(REPO / "train.py"), "-m", backbone.name, "-s", str(size), "-p", str(view)]
            command += ["-o", str(output), "-w", "none", "--optimizer", "adam", "--epochs", str(args.epochs)]
            command += ["--batch-size", "32", "--seed", "0"]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
        config = json.loads(member_file.with_name(f"{member_file.stem}_config.json").read_text(encoding="utf-8"))
        best_auc = max(config["history"]["final"]["val_auc"])
        m = gradcam_pointing(member_file, view, backbone.gradcam_layer)
        results.append(
            {"backbone": backbone.name, "size": size, "train_seconds": round(seconds, 1), "best_val_auc": best_auc, **m}
        )
        cells = f"{m['map_side']}x{m['map_side']}"
        print(
            f"{backbone.name:<20} {size:<5} {cells:<6} {seconds:7.0f}  {best_auc:12.3f}  {m['detected']:8.2f}"
            f"  {m['inside']:6.2f}  {m['grid_ceiling']:12.2f}"
            f"  {m['chance']:6.3f}  {m['lower_zone']:10.2f}  {m['median_distance_px']:14.1f}",
            flush=True,
        )
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
