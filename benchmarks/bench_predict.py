"""predict.py with all 24 members at production sizes (random weights) on real chest X-rays.

Reports, in one run:
- the compute floor: for each member, its standalone forward time per image at the same batch
  size on already-prepared inputs, summed over the 24 members;
- end-to-end images/s of predict.py (decode, crop, views, member building, forward passes, CSV)
  in a fresh process, and its ratio to the floor (target >= 0.8);
- the time until the first member is ready and until all 24 have run;
- peak resident memory of predict.py at 32 and at 128 images (target: flat, <= 6 GB).

Example:
    python benchmarks/bench_predict.py --images 32 128
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _make_members(folder: Path) -> None:
    import keras

    from deepcovidxr.layout import ensemble_members
    from deepcovidxr.models import build_member, save_member

    for member in ensemble_members():
        save_member(build_member(member.backbone, member.size), folder / member.legacy_filename, member)
        keras.backend.clear_session()


def _floor(folder: Path, count: int, batch: int) -> float:
    """Seconds per image summed over members: forward passes only, inputs ready in memory."""
    import keras

    from deepcovidxr.layout import ensemble_members
    from deepcovidxr.models import load_member
    from deepcovidxr.predictor import member_scores

    rng = np.random.default_rng(0)
    total = 0.0
    for member in ensemble_members():
        model = load_member(folder / member.legacy_filename, member)
        images = rng.integers(0, 255, (count, member.size, member.size), dtype=np.uint8)
        member_scores(model, images[:batch], batch)  # trace
        start = time.perf_counter()
        member_scores(model, images, batch)
        total += (time.perf_counter() - start) / count
        del model
        keras.backend.clear_session()
    return total


def _predict(weights: Path, images: Path, output: Path, batch: int) -> tuple[float, int, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "predict.py"),
            "-w",
            str(weights),
            "-i",
            str(images),
            "-o",
            str(output),
            "--batch-size",
            str(batch),
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-3000:])
    info = json.loads((output / "predictions_info.json").read_text())
    return wall, int(info["peak_rss_mb"] * 1024), info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cxr")
    p.add_argument("--images", type=int, nargs="+", default=[32, 128], help="folder sizes to predict")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sources = sorted(f for f in args.data.rglob("*") if f.suffix.lower() in {".png", ".jpg", ".jpeg"})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        _make_members(tmp / "weights")
        print(f"24 random-weight members written in {time.perf_counter() - t0:.0f} s")
        floor = _floor(tmp / "weights", 32, args.batch_size)
        print(
            f"compute floor: {floor * 1000:.0f} ms per image over 24 members = {1 / floor:.2f} images/s "
            f"(batch {args.batch_size}, {os.cpu_count()} cores)"
        )
        print(
            f"{'images':>7}{'wall s':>9}{'img/s':>8}{'of floor':>10}"
            f"{'first member s':>16}{'all 24 s':>10}{'peak RSS GB':>13}"
        )
        for count in args.images:
            folder = tmp / f"in{count}"
            folder.mkdir()
            for index in range(count):
                source = sources[index % len(sources)]
                shutil.copy(source, folder / f"{index:04d}_{source.name}")
            wall, peak_kb, info = _predict(tmp / "weights", folder, tmp / f"out{count}", args.batch_size)
            timings = info["timings"]
            rate = count / wall
            print(
                f"{count:>7}{wall:>9.1f}{rate:>8.2f}{rate * floor:>10.2f}"
                f"{timings.get('first_member_ready_s', 0):>16.1f}"
                f"{timings.get('all_members_s', 0):>10.1f}{peak_kb / 1024**2:>13.2f}"
            )
    print("targets: end-to-end >= 0.8 of the floor; peak RSS flat across folder sizes and <= 6 GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
