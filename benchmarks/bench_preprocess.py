"""Crop + resize throughput on the real chest X-rays of ../shared/data/cxr at native resolution.

Runs the crop stage (decode, U-Net, box rules, write) and then the resize stage on its crops at
224 and 331, as a user would from the command line, and reports images/s for each and overall,
with the U-Net's share of the crop time. The U-Net is loaded before the clock starts (its load
time is printed separately). Target: >= 10 images/s for crop + one resize on a 2-core machine.

Example:
    python benchmarks/bench_preprocess.py --data ../shared/data/cxr
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--repeats", type=int, default=1, help="passes over the folder (fresh output each time)")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.WARNING)
    from deepcovidxr.config.data_stages import CropConfig, ResizeConfig
    from deepcovidxr.imaging.reader import iter_input_files
    from deepcovidxr.lungs.cropper import LungCropper
    from deepcovidxr.stages.crop import run as run_crop
    from deepcovidxr.stages.resize import run as run_resize

    images = [f for f in iter_input_files(args.data) if f.suffix.lower() in {".png", ".jpg", ".jpeg"}]
    started = time.perf_counter()
    cropper = LungCropper(batch_size=args.batch_size)
    cropper.probabilities(np.zeros((args.batch_size, 256, 256, 1), np.float32))  # trace once
    load_seconds = time.perf_counter() - started

    unet_seconds = 0.0
    forward = cropper.probabilities

    def timed_forward(inputs: np.ndarray) -> np.ndarray:
        nonlocal unet_seconds
        t0 = time.perf_counter()
        result = forward(inputs)
        unet_seconds += time.perf_counter() - t0
        return result

    cropper.probabilities = timed_forward  # type: ignore[method-assign]
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            unet_seconds = 0.0
            t0 = time.perf_counter()
            run_crop(
                CropConfig(
                    input=args.data,
                    output=tmp / "crop",
                    batch_size=args.batch_size,
                    workers=args.workers,
                    qc_montage=False,
                ),
                cropper,
            )
            t_crop = time.perf_counter() - t0
            t_unet = unet_seconds
            timings = {}
            for size in (224, 331):
                t0 = time.perf_counter()
                run_resize(ResizeConfig(input=tmp / "crop", output=tmp / f"r{size}", size=size, workers=args.workers))
                timings[size] = time.perf_counter() - t0
            rows.append((t_crop, t_unet, timings[224], timings[331]))
    t_crop, t_unet, t224, t331 = (float(np.median(c)) for c in zip(*rows, strict=True))
    n = len(images)
    sizes = [f.stat().st_size for f in images]
    print(
        f"images: {n} from {args.data} ({sum(sizes) / 1e6:.1f} MB), {os.cpu_count()} cores, batch {args.batch_size}, "
        f"workers {args.workers}"
    )
    print(f"U-Net load + first trace: {load_seconds:.1f} s ({cropper.meta.get('architecture')} architecture)")
    print(f"{'step':<28}{'seconds':>10}{'images/s':>12}")
    print(f"{'crop stage':<28}{t_crop:>10.2f}{n / t_crop:>12.1f}")
    print(
        f"{'  of which U-Net forward':<28}{t_unet:>10.2f}{n / t_unet:>12.1f}"
        f"   ({100 * t_unet / t_crop:.0f} % of crop time)"
    )
    print(f"{'resize stage 224':<28}{t224:>10.2f}{n / t224:>12.1f}")
    print(f"{'resize stage 331':<28}{t331:>10.2f}{n / t331:>12.1f}")
    print(f"{'crop + resize 224':<28}{t_crop + t224:>10.2f}{n / (t_crop + t224):>12.1f}   (target >= 10)")
    print(f"{'crop + resize 224 + 331':<28}{t_crop + t224 + t331:>10.2f}{n / (t_crop + t224 + t331):>12.1f}")

    # the same crop stage with the U-Net's batch-norms left unfolded, for the ratio
    unfolded = LungCropper(batch_size=args.batch_size, fold=False)
    unfolded.probabilities(np.zeros((args.batch_size, 256, 256, 1), np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        config = CropConfig(
            input=args.data,
            output=Path(tmp) / "crop",
            batch_size=args.batch_size,
            workers=args.workers,
            qc_montage=False,
        )
        run_crop(config, unfolded)
        t_unfolded = time.perf_counter() - t0
    print(
        f"{'crop stage, BN unfolded':<28}{t_unfolded:>10.2f}{n / t_unfolded:>12.1f}"
        f"   (folding: {t_unfolded / t_crop:.2f}x faster)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
