"""Inference engines on this CPU: images/s of one member on Keras fp32, ONNX Runtime fp32/int8 and
OpenVINO fp32/bf16/int8 at two batch sizes, the one-off export (build) time of each engine, and
each engine's largest score difference from Keras fp32.

The member is a random-weight ResNet-50 (weights=None: speed does not depend on the weights) at
224 px; inputs and int8 calibration images are real chest X-rays from ../shared/data/cxr through
the project's preprocessing (random standardised noise when the folder is absent), calibration
and timed images disjoint.

Example (about 10 minutes on 2 CPU cores):
    python benchmarks/bench_engines.py --size 224 --batches 16 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DEEPCOVIDXR_SHARED_DATA", REPO.parent / "shared" / "data"))

CASES = (
    ("keras", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
)


def images(size: int, count: int, offset: int) -> np.ndarray:
    from deepcovidxr.imaging.preprocess import lanczos_resize, to_model_input
    from deepcovidxr.imaging.reader import read_gray

    files = sorted(p for p in (SHARED / "cxr").rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if len(files) < offset + count:
        logging.warning("%s: not enough images; timing on random standardised noise", SHARED / "cxr")
        return np.random.default_rng(offset).normal(size=(count, size, size, 3)).astype(np.float32)
    picked = files[offset :: max(1, (len(files) - offset) // count)][:count]
    return np.stack([to_model_input(lanczos_resize(read_gray(f), size)) for f in picked])


def throughput(runner, batch: np.ndarray, seconds: float) -> float:
    runner.predict(batch)  # warm-up: first-call allocations and kernel selection
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or done < 3 * len(batch):
        runner.predict(batch)
        done += len(batch)
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="ResNet-50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 1])
    p.add_argument("--seconds", type=float, default=10.0, help="timing window per case and batch size")
    p.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's choice)")
    p.add_argument("--cases", nargs="+", default=[f"{e}:{q}" for e, q in CASES], help="engine:precision")
    p.add_argument("--workdir", type=Path, default=None, help="member and engine cache here (reused)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("tf2onnx", "nncf", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import keras

    from deepcovidxr.contract.layout import CropMode, Member
    from deepcovidxr.networks.members import build_member, save_member
    from deepcovidxr.runtime import hardware, load

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-engines-"))
    member = Member(args.backbone, args.size, CropMode.UNCROP)
    path = workdir / member.legacy_filename
    if not path.is_file():
        keras.utils.set_random_seed(0)
        save_member(build_member(member.backbone, member.size, weights=None), path, member)
    calibration = images(args.size, args.calibration, offset=0)
    timed = images(args.size, max(args.batches), offset=args.calibration + 1)
    reference = None
    rows = []
    for case in args.cases:
        engine, precision = case.split(":")
        start = time.perf_counter()
        try:
            runner = load.open_member(member, path, engine, precision, calibration=calibration, threads=args.threads)
        except ValueError as error:  # UsageError: e.g. no bf16 on this CPU
            print(f"{case:18s} not available: {error}")
            continue
        opened = time.perf_counter() - start
        scores = runner.predict(timed)
        reference = scores if reference is None and case == "keras:fp32" else reference
        row = {
            "case": case,
            "open_seconds": round(opened, 2),
            "build_seconds": round(runner.stats.get("build_seconds", 0.0), 2),
            "max_abs_diff_vs_keras": None if reference is None else float(np.max(np.abs(scores - reference))),
        }
        for batch in args.batches:
            row[f"images_per_s_batch{batch}"] = round(throughput(runner, timed[:batch], args.seconds), 2)
        rows.append(row)
        rates = "  ".join(f"b{b}: {row[f'images_per_s_batch{b}']:7.2f} img/s" for b in args.batches)
        diff = row["max_abs_diff_vs_keras"]
        print(
            f"{case:18s} {rates}  open {opened:6.1f} s (build {row['build_seconds']:6.1f} s)  "
            f"max|diff| vs keras {'-' if diff is None else f'{diff:.1e}'}",
            flush=True,
        )
        del runner
    print(f"{args.backbone} {args.size} px, {os.cpu_count()} CPUs, bf16 capable: {hardware.cpu_supports_bf16()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
